"""OpenAI Responses over WebSocket: ``GET /v1/responses`` upgraded, as Codex and the
official SDKs' ``responses.connect()`` speak it.

One socket, many turns. The client sends ``{"type": "response.create", ...}`` text frames
carrying a Responses request's fields (no ``stream``); each is one request through the
same path as ``POST /v1/responses`` with ``stream: true`` — authorized, limited, routed,
planned, admitted and relayed on its own (:meth:`gateway.proxy.ProxyApp.prepare`), with
the same events, one JSON text frame each. Turns run one at a time, in arrival order; an
error is an ``error`` event (``{"type": "error", "status", "error": {...}}``) and the
socket stays open for the next turn. A turn may continue the last response of any of the
socket's lanes (``stream_id``) by its id without the store, ``store: false`` included.

The socket's nursery holds three tasks for its lifetime:

- the **reader**: every message from the client — turns to the queue, pongs to the
  :class:`~gateway.timers.PingClock`, a close (or a ping left unanswered) ends the socket;
- the **pinger**: a ping frame whenever the client heard nothing for the interval (the
  running turn's keepalive policy's; between turns the last one's) — queued, connecting,
  prefill, gaps alike — and no pong within two intervals counts as a disconnect;
- the **turns**, in the nursery's body: each relayed by :func:`gateway.relay.relay`,
  whose HTTP response :class:`~gateway.ws_turns.TurnSend` sends as frames (whole SSE events in, their
  ``data`` out). When the socket ends, the running turn's relay sees its client gone and
  closes the upstream.

Ends: the client closes; no pong (1011); idle with no turn for ``websocket_idle_timeout``
(1000); shutdown — no new turns, the running one finishes within the grace period, queued
ones get an error each, then 1001.

Handshakes the gateway does not take are refused before the upgrade, with an OpenAI error
body: an unknown key 401, a draining gateway 503, any other path (or ``[server]
websockets = false``) 426, which coding agents read as "use HTTP".
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import cast

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    WebsocketScope,
)

from .client_request import ClientRequest, Prepare, SocketTurn, headers_of
from .dialects.responses import RESPONSES_SOCKET, socket_error
from .errors import (
    GatewayError,
    Overloaded,
    ShuttingDown,
    UpgradeRequired,
    error_head,
    error_json,
)
from .inbound import endpoint_label, request_ids
from .inflight import InFlight
from .keepalive import KeepaliveSettings
from .locks import acquire
from .responses.conversation import SocketResponses
from .service import Gateway
from .teams import Identity
from .telemetry import write_access_log
from .timers import PingClock
from .ws_stream import PING, PING_EXTENSION, PONG
from .ws_turns import TurnSend, create_body, stream_id_of

log = logging.getLogger("gateway.websocket")

RESPONSES_PATH = "/v1/responses"
# Turns a client may send ahead of the one running; more are refused with an error event.
MAX_QUEUED = 16
# Pings between turns, before the socket's first turn has named a route.
FIRST_INTERVAL = KeepaliveSettings().interval


class ResponsesSockets:
    """The gateway's WebSocket endpoint: hands each handshake to a :class:`_Socket`, or
    refuses it."""

    def __init__(self, gateway: Gateway, prepare: Prepare) -> None:
        self.gateway = gateway
        self.prepare = prepare

    async def __call__(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        started = trio.current_time()
        if (await receive())["type"] != "websocket.connect":
            return  # gone before the handshake was handed over
        path = scope["path"]
        headers = headers_of(scope)
        identity: Identity | None = None
        try:
            if path != RESPONSES_PATH or not self.gateway.config.server.websockets:
                raise UpgradeRequired(
                    f"The gateway does not serve WebSocket connections (GET {path}); "
                    "send the request over plain HTTP",
                    http_version=scope["http_version"],
                )
            teams = self.gateway.auth
            if teams is not None:
                identity = teams.authenticate(headers)
            if self.gateway.draining:
                raise ShuttingDown("the gateway is shutting down")
        except GatewayError as error:
            await self._deny(scope, headers, send, error, started)
            return
        socket = _Socket(self, scope, receive, send, headers, identity)
        await socket.run()

    async def _deny(
        self,
        scope: WebsocketScope,
        headers: dict[str, str],
        send: ASGISendCallable,
        error: GatewayError,
        started: float,
    ) -> None:
        """Answer the handshake with ``error``'s status and OpenAI error body, through
        ASGI's WebSocket Denial Response extension (hypercorn has it). Without that
        extension an app can only close, which servers answer with ``403``."""
        request_id, traceparent = request_ids(
            headers.get("x-request-id", ""), headers.get("traceparent", "")
        )
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1000, "reason": None})
            status = 403
        else:
            body = error_json(error)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": error.status,
                    "headers": [
                        *error_head(error, body),
                        (b"x-request-id", request_id.encode()),
                        (b"traceparent", traceparent.encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
            status = error.status
        path = scope["path"]
        self.gateway.telemetry.on_answered(
            route="",
            endpoint=endpoint_label(path),
            status=status,
            fields={
                "request_id": request_id,
                "method": "GET",
                "path": path,
                "model": None,
                "duration_ms": round((trio.current_time() - started) * 1000, 3),
            },
        )


class _Socket:
    """One accepted WebSocket (see the module docstring)."""

    def __init__(
        self,
        endpoint: ResponsesSockets,
        scope: WebsocketScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        headers: dict[str, str],
        identity: Identity | None,
    ) -> None:
        self.endpoint = endpoint
        self.gateway = endpoint.gateway
        self.path = scope["path"]
        self.headers = headers
        self.identity = identity
        self.id = "ws_" + uuid.uuid4().hex
        self.started = trio.current_time()
        self.responses = SocketResponses()
        self.clock = PingClock(FIRST_INTERVAL, self.started)
        self.pings = PING_EXTENSION in (scope.get("extensions") or {})
        self.gone = False  # the client closed, or stopped answering pings
        self.turns = 0
        self.close_code, self.close_reason = 1000, ""
        self._receive = receive
        self._send = send
        self._lock = trio.Lock()
        self._queue_in, self._queue = trio.open_memory_channel[str | None](math.inf)
        self._entry: InFlight | None = None  # the running turn's
        self._ping_wait = trio.CancelScope()
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        await self._send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read)
                    nursery.start_soon(self._ping)
                    nursery.start_soon(self._stop_on_drain)
                    await self._serve_turns()
                    nursery.cancel_scope.cancel()
            if not self.gone:
                with trio.CancelScope(shield=True):
                    await self._send(
                        {
                            "type": "websocket.close",
                            "code": self.close_code,
                            "reason": self.close_reason,
                        }
                    )
        finally:
            write_access_log(
                {
                    "connection": self.id,
                    "method": "GET",
                    "path": self.path,
                    "status": 101,
                    "turns": self.turns,
                    "close": "client" if self.gone else self.close_code,
                    "reason": self.close_reason or None,
                    "duration_ms": round((trio.current_time() - self.started) * 1000, 3),
                    **Identity.log_fields_of(self.identity),
                }
            )

    # -- the turns --------------------------------------------------------------------

    async def _serve_turns(self) -> None:
        idle = self.gateway.config.server.websocket_idle_timeout
        while True:
            with trio.move_on_after(idle) as wait:  # the wait between turns, not the turns
                text = await self._queue.receive()
            if wait.cancelled_caught:
                self._close(1000, f"idle for {idle:g} s")
                return
            if text is None:  # shutdown
                await self._refuse_the_rest()
                self._close(1001, "server shutting down")
                return
            await self._turn(text)

    async def _refuse_the_rest(self) -> None:
        """Shutdown: every turn that arrived and did not start gets its error event (the
        gateway is draining, so each is refused), so that none goes unanswered."""
        while True:
            try:
                text = self._queue.receive_nowait()
            except trio.WouldBlock:
                return
            if text is not None:
                await self._turn(text)

    async def _turn(self, text: str) -> None:
        request = ClientRequest("responses", "GET", self.path, self.headers, RESPONSES_SOCKET)
        self.turns += 1
        try:
            # The key again, each turn: one a config reload removed is refused from then on.
            teams = self.gateway.auth
            request.identity = teams.authenticate(self.headers) if teams is not None else None
            body, envelope = create_body(text)
            if self.gateway.draining:
                raise ShuttingDown("the gateway is shutting down")
            lane = self.responses.lane(envelope.stream_id)
            turn = SocketTurn(self.id, lane, self._begin, envelope.generate)
            serve = await self.endpoint.prepare(request, body, turn)
        except GatewayError as error:
            await self._answer_error(request, error, stream_id_of(text))
            return
        except Exception:
            log.exception("unhandled error on a WebSocket turn (%s)", self.id)
            internal = GatewayError("internal error in the gateway")
            await self._answer_error(request, internal, stream_id_of(text))
            return
        try:
            send = TurnSend(self.send_frame, envelope.stream_id)
            # No receive: the socket's end cancels the turn (_lose), closing its upstream.
            await serve(cast(ASGISendCallable, send), None)
        finally:
            self._entry = None

    def _begin(self, entry: InFlight, interval: float) -> None:
        self._entry = entry
        self.clock.interval = interval
        self._ping_wait.deadline = self.clock.next_at()

    async def _answer_error(
        self, request: ClientRequest, error: GatewayError, stream_id: str | None = None
    ) -> None:
        event = socket_error(error)
        if stream_id is not None:
            event["stream_id"] = stream_id
        try:
            await self.send_frame(json.dumps(event))
        except trio.BrokenResourceError:
            return
        finally:
            self.gateway.telemetry.on_answered(
                route=request.route,
                endpoint=request.endpoint,
                status=error.status,
                fields={
                    "request_id": request.request_id,
                    "connection": self.id,
                    "method": request.method,
                    "path": request.path,
                    "model": request.model,
                    "duration_ms": round((trio.current_time() - request.started) * 1000, 3),
                    **Identity.log_fields_of(self.identity),
                },
            )

    # -- the client side --------------------------------------------------------------

    async def send_frame(self, text: str) -> None:
        """Send one text frame; raises :class:`trio.BrokenResourceError` once the client
        is gone (hypercorn drops writes to a closed socket without a word)."""
        await self._locked_send({"type": "websocket.send", "text": text})

    async def _locked_send(self, message: dict[str, object]) -> None:
        await acquire(self._lock)
        try:
            if self.gone:
                raise trio.BrokenResourceError("the client is gone")
            await self._send(message)  # type: ignore[arg-type]
            self.clock.note_write(trio.current_time())
        finally:
            self._lock.release()

    async def _read(self) -> None:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if not isinstance(text, str):
                    data = message.get("bytes")
                    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
                if self._queue.statistics().current_buffer_used >= MAX_QUEUED:
                    error = Overloaded(
                        f"More than {MAX_QUEUED} turns are waiting on this socket; "
                        "wait for a response before sending more"
                    )
                    request = ClientRequest("responses", "GET", self.path, self.headers)
                    await self._answer_error(request, error, stream_id_of(text))
                    continue
                self._queue_in.send_nowait(text)
            elif kind == PONG:
                self.clock.note_pong()
                self._ping_wait.deadline = self.clock.next_at()
            elif kind == "websocket.disconnect":
                self._lose()
                return

    async def _ping(self) -> None:
        if not self.pings:
            return  # not served by the gateway's own connections: no ping frames to send
        while True:
            with trio.CancelScope(deadline=self.clock.next_at()) as wait:
                self._ping_wait = wait
                await trio.sleep_forever()
            now = trio.current_time()
            if now >= self.clock.gone_at:
                log.info("WebSocket %s answered no ping for %g s", self.id, 2 * self.clock.interval)
                self._lose(1011, "keepalive ping timeout")
                return
            if now >= self.clock.due_at:
                try:
                    await self._locked_send({"type": PING, "data": b""})
                except trio.BrokenResourceError:
                    return
                self.clock.note_ping(now)
                if self._entry is not None:
                    self._entry.heartbeat()

    async def _stop_on_drain(self) -> None:
        await self.gateway.drain_started.wait()
        self._queue_in.send_nowait(None)

    def _lose(self, code: int | None = None, reason: str = "") -> None:
        """The client is gone: every task ends, the running turn's relay among them, and
        leaving its backend's context closes the upstream. With a ``code`` (a ping
        unanswered), the socket is still closed with it, in case the client is only slow."""
        if code is None:
            self.gone = True
        else:
            self._close(code, reason)
        self._scope.cancel()

    def _close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
