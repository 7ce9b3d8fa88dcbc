"""The relay: one upstream exchange copied to one client, with a heartbeat beside it.

For every proxied request the handler runs :func:`relay` in the request's own task. It opens
one nursery holding the heartbeat task; the relay itself runs in the nursery's body. Both
write through one :class:`ResponseWriter`, whose lock makes every write whole: the relay
writes only complete SSE events (the framer holds partial ones back), so a heartbeat always
lands between two events.

Cancellation: the connection handler cancels this task when the client disconnects; leaving
the backend's ``open_response`` context then closes the upstream request. Shutdown aborts
an exchange through its :class:`~gateway.inflight.InFlight` entry instead, and the client
is told why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import trio

from .abc import Backend, Timeouts, UpstreamRequest, UpstreamResponse
from .config import KeepaliveSettings
from .errors import (
    GatewayError,
    UpstreamProtocolError,
    UpstreamTimeout,
    error_event,
    error_json,
)
from .inflight import InFlight, InFlightTable
from .sse import SSEFramer
from .timers import HeartbeatClock, UpstreamClock

log = logging.getLogger("gateway.relay")

# An upstream that sends this much without ending an event is not speaking SSE.
MAX_EVENT_BYTES = 4 * 1024 * 1024

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Exchange:
    """Everything the relay needs for one request, decided by the handler."""

    request: UpstreamRequest
    backend: Backend
    route: str
    keepalive: KeepaliveSettings
    timeouts: Timeouts
    inflight: InFlightTable
    extra_headers: Headers = ()


class ClientGone(Exception):
    """The ASGI server refused a write: the client is gone."""


class ResponseWriter:
    """The single writer of one HTTP response. Every method writes whole pieces under one
    lock, so the relay and the heartbeat never interleave inside a write."""

    __slots__ = ("_lock", "_send", "_started_event", "clock", "finished", "gone", "started")

    def __init__(self, send: object, clock: HeartbeatClock | None) -> None:
        self._send = send
        self._lock = trio.Lock()
        self.started = False
        self._started_event = trio.Event()
        self.clock = clock
        self.finished = False
        self.gone = False

    async def _asgi(self, message: dict[str, object]) -> None:
        try:
            await self._send(message)  # type: ignore[operator]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.gone = True
            raise ClientGone from exc
        if self.clock is not None:
            self.clock.note_write(trio.current_time())

    async def start(self, status: int, headers: Headers) -> None:
        async with self._lock:
            await self._asgi(
                {"type": "http.response.start", "status": status, "headers": list(headers)}
            )
            self.started = True
            self._started_event.set()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        async with self._lock:
            await self._asgi({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        async with self._lock:
            self.finished = True
            await self._asgi({"type": "http.response.body", "body": b"", "more_body": False})

    async def wait_started(self) -> None:
        await self._started_event.wait()

    async def write_if_silent(self, data: bytes) -> bool:
        """Write ``data`` only if the client heard nothing for the clock's interval."""
        assert self.clock is not None
        async with self._lock:
            if self.finished or not self.clock.is_due(trio.current_time()):
                return False
            await self._asgi({"type": "http.response.body", "body": data, "more_body": True})
            return True


def heartbeat_bytes(policy: KeepaliveSettings, stream: bool) -> bytes:
    if not stream:
        return b" "  # legal JSON whitespace ahead of the body
    return (f": {policy.comment}\n\n" if policy.comment else ":\n\n").encode()


async def _heartbeat(writer: ResponseWriter, data: bytes, entry: InFlight) -> None:
    """Write ``data`` whenever the client heard nothing for the interval. A failed write
    means the client is gone: the upstream exchange is cancelled at once."""
    clock = writer.clock
    assert clock is not None
    await writer.wait_started()
    while True:
        await trio.sleep_until(clock.due_at)
        try:
            written = await writer.write_if_silent(data)
        except ClientGone:
            entry.scope.cancel()
            return
        if written:
            entry.heartbeats += 1


def _sse_headers(extra: Headers) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        *extra,
    ]


def _json_headers(extra: Headers, content_type: str = "application/json") -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type.encode("latin-1")), *extra]


def _timeout_error(clock: UpstreamClock) -> UpstreamTimeout:
    name = clock.expired()
    return UpstreamTimeout(
        f"upstream timed out: no {'byte' if name != 'total' else 'completion'} within the "
        f"{name} limit of {clock.limit(name):g} s"
    )


async def relay(send: object, exchange: Exchange) -> None:
    """Serve one proxied request on ``send`` (an ASGI send callable).

    Never raises for upstream or client trouble: the client gets a status, an error body
    or an error event. Cancellation (the client went away) propagates and closes the
    upstream request on its way out.
    """
    now = trio.current_time()
    policy = exchange.keepalive
    stream = exchange.request.stream
    keepalive_on = policy.interval > 0 and (stream or policy.non_stream == "whitespace")
    writer = ResponseWriter(send, HeartbeatClock(policy.interval, now) if keepalive_on else None)
    entry = InFlight(
        request_id=exchange.request.request_id,
        route=exchange.route,
        backend=exchange.backend.id,
        stream=stream,
        started_at=now,
    )
    exchange.inflight.add(entry)
    try:
        async with trio.open_nursery() as nursery:
            if keepalive_on:
                nursery.start_soon(_heartbeat, writer, heartbeat_bytes(policy, stream), entry)
            error = await _exchange(exchange, writer, entry, early=keepalive_on)
            nursery.cancel_scope.cancel()
        entry.phase = "finishing"
        if writer.gone:
            raise ClientGone
        if error is not None:
            await _report(writer, error, exchange)
        await writer.end()
    except ClientGone:
        log.info("client gone during %s (request %s)", entry.phase, entry.request_id)
    finally:
        exchange.inflight.discard(entry)


async def _exchange(
    exchange: Exchange, writer: ResponseWriter, entry: InFlight, *, early: bool
) -> GatewayError | None:
    """Run the upstream exchange; return the error to report, if any."""
    stream = exchange.request.stream
    try:
        with entry.scope:
            if early and (not stream or exchange.keepalive.early_headers):
                extra = exchange.extra_headers
                await writer.start(200, _sse_headers(extra) if stream else _json_headers(extra))
            if stream:
                await _relay_stream(exchange, writer, entry)
            else:
                await _relay_unary(exchange, writer, entry)
    except Exception as exc:
        if writer.gone:
            return None  # nobody to tell
        return _as_gateway_error(exc, entry)
    return entry.abort_error


def _as_gateway_error(exc: Exception, entry: InFlight) -> GatewayError:
    """Map what an exchange raised to what the client is told. Backends that run their own
    nurseries may raise a group; a group of gateway errors reports its first."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(GatewayError)
        if matched is not None and rest is None:
            first = next(_leaves(matched))
            assert isinstance(first, GatewayError)
            return first
    log.error("relay failed (request %s)", entry.request_id, exc_info=exc)
    return GatewayError("internal error in the gateway")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _report(writer: ResponseWriter, error: GatewayError, exchange: Exchange) -> None:
    if writer.started:
        if exchange.request.stream:
            await writer.write(error_event(error))
        else:
            await writer.write(error_json(error))
        return
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await writer.start(error.status, _json_headers([*exchange.extra_headers, *headers]))
    await writer.write(error_json(error))


async def _relay_stream(exchange: Exchange, writer: ResponseWriter, entry: InFlight) -> None:
    clock = UpstreamClock(exchange.timeouts, trio.current_time())
    framer = SSEFramer()
    saw_done = False
    with trio.CancelScope(deadline=clock.deadline) as timer:
        async with exchange.backend.open_response(exchange.request) as response:
            _check_content_type(response, "text/event-stream")
            entry.phase = "prefill"
            if not writer.started:
                await writer.start(200, _sse_headers(exchange.extra_headers))
            async for chunk in response.body:
                clock.note_bytes(trio.current_time())
                timer.deadline = clock.deadline
                events = framer.feed(chunk)
                if events:
                    if entry.phase == "prefill" and any(e.is_data for e in events):
                        entry.phase = "streaming"
                    saw_done = saw_done or any(e.is_done for e in events)
                    await writer.write(b"".join(e.raw for e in events))
                if framer.pending_bytes > MAX_EVENT_BYTES:
                    raise UpstreamProtocolError(
                        f"upstream sent {framer.pending_bytes} bytes without ending an SSE event"
                    )
    if timer.cancelled_caught:
        raise _timeout_error(clock)
    if framer.pending:
        raise UpstreamProtocolError("upstream closed the stream in the middle of an event")
    if not saw_done:
        raise UpstreamProtocolError("upstream closed the stream before [DONE]")


async def _relay_unary(exchange: Exchange, writer: ResponseWriter, entry: InFlight) -> None:
    clock = UpstreamClock(exchange.timeouts, trio.current_time())
    parts: list[bytes] = []
    with trio.CancelScope(deadline=clock.deadline) as timer:
        async with exchange.backend.open_response(exchange.request) as response:
            entry.phase = "prefill"
            async for chunk in response.body:
                clock.note_bytes(trio.current_time())
                timer.deadline = clock.deadline
                parts.append(chunk)
            status, content_type = response.status, response.content_type
    if timer.cancelled_caught:
        raise _timeout_error(clock)
    if not writer.started:
        await writer.start(status, _json_headers(exchange.extra_headers, content_type))
    await writer.write(b"".join(parts))


def _check_content_type(response: UpstreamResponse, expected: str) -> None:
    if not response.content_type.lower().startswith(expected):
        raise UpstreamProtocolError(
            f"upstream answered a streaming request with {response.content_type!r}, "
            f"not {expected}"
        )
