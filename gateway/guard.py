"""The outermost ASGI layer: what every HTTP request must satisfy before, and while, any
endpoint reads it — the relayed ones and Quart's alike.

- **Framing.** A request that gives both ``Content-Length`` and ``Transfer-Encoding`` is
  refused with 400 before the app sees it (RFC 9112 §6.1). h11 frames such a request by
  its ``Transfer-Encoding`` and would read whatever follows the chunked body as the next
  request on the connection — a request that a proxy in front, framing by
  ``Content-Length``, never saw (CL.TE / TE.CL smuggling).
- **Body timeouts.** While the app waits for more of the request body, the client must
  send something at least every ``idle`` seconds and the whole body within ``total``
  seconds of the head. Otherwise the guard answers 408 itself (if the app has not started
  an answer) and the app's ``receive()`` returns ``http.disconnect``, as if the client had
  gone; whatever the app sends after that is dropped.

- **Absolute-form targets.** A request line may name the whole URL (``POST
  http://host/v1/messages``, RFC 9112 §3.2.2: what a client configured with the gateway as
  its proxy sends); hypercorn puts all of it in the scope's ``path``. The guard puts the
  URL's path there, for every endpoint to route as usual.

Both answers carry ``Connection: close``, so hypercorn closes the connection after them and
the bytes after a refused request are never parsed as one.
Neither timer runs while the app is not waiting on the body (a request without one, or
after its last byte), so a long answer is never cut by them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast
from urllib.parse import unquote, urlsplit

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from .app_queue import receive_now
from .dialects import dialect_of_request
from .errors import AmbiguousFraming, GatewayError, RequestTimeout
from .inbound import endpoint_label, request_ids
from .telemetry import Telemetry

__all__ = ["BODY_TIMED_OUT", "BodyTimeouts", "RequestGuard"]

_DISCONNECT: ASGIReceiveEvent = {"type": "http.disconnect"}
BODY_TIMED_OUT = "gateway.body_timed_out"
"""The scope's extension the guard sets when it times a body out: the ``http.disconnect``
the app then receives is no client gone, and the request's answer and line are the guard's."""
_Scope = TypeVar("_Scope", HTTPScope, WebsocketScope)


@dataclass(frozen=True, slots=True)
class BodyTimeouts:
    """``idle``: most seconds the client may send nothing while the body is awaited;
    ``total``: most seconds from the head to the body's last byte."""

    idle: float
    total: float


class RequestGuard:
    """ASGI middleware in front of ``app`` (see the module docstring). Answers it gives
    itself are counted and access-logged through ``telemetry``."""

    def __init__(self, app: ASGIFramework, timeouts: BodyTimeouts, telemetry: Telemetry) -> None:
        self.app = app
        self.timeouts = timeouts
        self.telemetry = telemetry

    def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> Awaitable[None]:
        """The app's own call, guarded — returned, not awaited here: no frame of the
        guard's is held for as long as the request lasts (minutes, for a stream)."""
        if scope["type"] == "websocket":
            if scope["path"][:1] != "/":
                scope = _origin_form(scope)
            return self.app(scope, receive, send)
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        if scope["path"][:1] != "/":
            scope = _origin_form(scope)
        if _both_lengths(scope):
            return self._refuse_ambiguous(scope, receive, send)
        exchange = _GuardedExchange(scope, receive, send, self.timeouts, self.telemetry)
        return self.app(scope, exchange.receive, exchange.send)

    async def _refuse_ambiguous(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        started = trio.current_time()
        if await _drain(receive):
            error = AmbiguousFraming(
                "The request gives both Content-Length and Transfer-Encoding; send one"
            )
            await _answer(scope, send, error, self.telemetry, started)


def _origin_form(scope: _Scope) -> _Scope:
    """``scope`` with the path of an absolute-form target (``http://host/path``) as its
    ``path`` and ``raw_path``; any other target as it was."""
    split = urlsplit(scope["raw_path"])  # (the path is decoded: %3F there would be a "?")
    if split.scheme.lower() not in (b"http", b"https", b"ws", b"wss") or not split.netloc:
        return scope
    raw = split.path or b"/"
    path = unquote(raw.decode("ascii", "replace"))  # as hypercorn decodes a path
    return cast(_Scope, {**scope, "path": path, "raw_path": raw})


def _both_lengths(scope: HTTPScope) -> bool:
    """Whether the request gives both ``Content-Length`` and ``Transfer-Encoding``. (A
    function of its own: the header names' set is gone before the app runs, rather than
    kept in the guard's frame for as long as the request lasts.)"""
    names = {name.lower() for name, _ in scope["headers"]}
    return b"content-length" in names and b"transfer-encoding" in names


# What is read and dropped of a refused body before the answer goes out, at most.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0


async def _drain(receive: ASGIReceiveCallable) -> bool:
    """Read and drop the request body (as h11 frames it: by ``Transfer-Encoding``), up to
    :data:`_DRAIN_BYTES` within :data:`_DRAIN_SECONDS`; False if the client left.

    Why read what will be refused: the answer's ``Connection: close`` makes h11 expect
    nothing more from the client, so if it parses the body's end *while* the answer is
    being written, the bytes after it are a protocol error and hypercorn closes the
    connection mid-answer. With the body read first, those bytes wait unparsed until the
    whole answer is out and the connection closes."""
    drained = 0
    with trio.move_on_after(_DRAIN_SECONDS):
        while drained <= _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return False
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
    return True


class _GuardedExchange:
    """One request's ``receive`` and ``send`` with the body timers between them and the
    app. ASGI apps call ``receive`` from one task at a time; so does this."""

    __slots__ = (
        "_receive",
        "_send",
        "answer_started",
        "body_read",
        "scope",
        "started",
        "telemetry",
        "timed_out",
        "timeouts",
    )

    def __init__(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        timeouts: BodyTimeouts,
        telemetry: Telemetry,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.timeouts = timeouts
        self.telemetry = telemetry
        self.started = trio.current_time()
        self.body_read = False
        self.answer_started = False
        self.timed_out = False

    def receive(self) -> Awaitable[ASGIReceiveEvent]:
        # Not a coroutine function: once the body is read, the server's own receive is
        # awaited directly, so no frame of the guard's stays in a task blocked in it (under
        # another server, the relay's disconnect watcher blocks there for the whole response).
        if self.body_read and not self.timed_out:
            return self._receive()
        return self._receive_body()

    async def _receive_body(self) -> ASGIReceiveEvent:
        if self.timed_out:
            return _DISCONNECT
        message = receive_now(self._receive)  # a part already there: no timer, no wait
        if message is not None:
            return self._received(message)
        # The idle clock starts with each wait, not at the last byte: time the app spent
        # elsewhere between two reads is not the client's.
        deadline = min(trio.current_time() + self.timeouts.idle, self.started + self.timeouts.total)
        with trio.move_on_at(deadline):
            # A memory channel's: cancelling loses nothing.
            return self._received(await self._receive())
        await self._time_out()
        return _DISCONNECT

    def _received(self, message: ASGIReceiveEvent) -> ASGIReceiveEvent:
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_read = True
        return message

    async def send(self, message: ASGISendEvent) -> None:
        if self.timed_out:
            return  # the guard answered (or gave up on) this request; the app is too late
        if message["type"] == "http.response.start":
            self.answer_started = True
        await self._send(message)

    async def _time_out(self) -> None:
        self.timed_out = True  # first: from here on the app's own sends are dropped
        # The app hears a disconnect: this tells it the guard answered (and logged) instead.
        extensions = self.scope.get("extensions")
        if extensions is not None:
            extensions[BODY_TIMED_OUT] = {}
        if self.answer_started:
            return  # too late for a 408; ending the answer with the body unread closes it
        elapsed = trio.current_time() - self.started
        error = RequestTimeout(
            f"The request body did not arrive in time ({elapsed:.1f} s; the gateway waits "
            f"{self.timeouts.idle:g} s for each part and {self.timeouts.total:g} s in all)"
        )
        await _answer(self.scope, self._send, error, self.telemetry, self.started)


async def _answer(
    scope: HTTPScope,
    send: ASGISendCallable,
    error: GatewayError,
    telemetry: Telemetry,
    started: float,
) -> None:
    """Send ``error`` as a whole answer in the client's dialect, with the request's ids, and
    count and log it like every answer the gateway gives itself."""
    headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
    request_id, traceparent = request_ids(
        headers.get("x-request-id", b"").decode("latin-1"),
        headers.get("traceparent", b"").decode("latin-1"),
    )
    dialect = dialect_of_request(scope["path"], "anthropic-version" in headers)
    body = dialect.error_json(error)
    status = dialect.status(error)
    head = [
        *dialect.error_head(error, body, time.time()),
        (b"x-request-id", request_id.encode()),
        (b"traceparent", traceparent.encode()),
        *dialect.id_headers(request_id),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    telemetry.on_answered(
        route="",
        endpoint=endpoint_label(scope["path"]),
        status=status,
        fields={
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "model": None,
            "duration_ms": round((trio.current_time() - started) * 1000, 3),
        },
    )
