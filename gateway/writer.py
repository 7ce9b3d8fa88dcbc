"""The client side of one response: a single writer, and the heartbeat task beside it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from . import alarm
from .dialects.base import StreamPipe
from .inflight import InFlight
from .locks import acquire
from .timers import HeartbeatClock

Headers = Sequence[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The ASGI server refused a write: the client is gone."""


class ResponseWriter:
    """The single writer of one HTTP response. Every method writes whole pieces under one
    lock, so the relay and the heartbeat never interleave inside a write. ``clock``, when
    there is one, learns of every write, so heartbeats fill only real silence.

    The lock is taken without a trip through the scheduler when nobody holds it (the usual
    case: heartbeats are rare); the ASGI send itself is the checkpoint.
    """

    __slots__ = (
        "_last",
        "_lock",
        "_send",
        "_started_event",
        "bytes_sent",
        "clock",
        "data_sent",
        "finished",
        "gone",
        "pipe",
        "started",
        "status",
    )

    def __init__(self, send: object, clock: HeartbeatClock | None) -> None:
        self._send = send
        self._lock = trio.Lock()
        # Made only for a waiter (a heartbeat without early headers): most responses
        # never need one, and it would last as long as the response.
        self._started_event: trio.Event | None = None
        self._last: bytes | None = None  # what end() sends; set, no heartbeat goes before it
        self.clock = clock
        self.started = False
        self.data_sent = False  # an upstream data event reached the client: no failover now
        self.finished = False
        self.gone = False
        self.pipe: StreamPipe | None = None
        """The stream of the attempt being relayed, once its upstream answered."""
        self.status: int | None = None
        self.bytes_sent = 0

    async def _asgi(self, message: dict[str, object]) -> None:
        body = message.get("body")
        if isinstance(body, bytes):
            self.bytes_sent += len(body)
        try:
            await self._send(message)  # type: ignore[operator]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.gone = True
            raise ClientGone from exc
        if self.clock is not None:
            self.clock.note_write(trio.current_time())

    async def _start_locked(self, status: int, headers: Headers) -> None:
        await self._asgi(
            {"type": "http.response.start", "status": status, "headers": list(headers)}
        )
        self.status = status
        self.started = True
        if self._started_event is not None:
            self._started_event.set()

    async def start(self, status: int, headers: Headers) -> bool:
        """Send the status and headers unless they are out already (the heartbeat may have
        committed them a moment ago). Returns whether this call sent them."""
        await acquire(self._lock)
        try:
            if self.started:
                return False
            await self._start_locked(status, headers)
            return True
        finally:
            self._lock.release()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        await acquire(self._lock)
        try:
            await self._asgi({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self._lock.release()

    @property
    def ending(self) -> bool:
        """The response's end is decided (:meth:`write_last`) or sent: nothing is to be
        kept alive any more."""
        return self.finished or self._last is not None

    def write_last(self, data: bytes) -> None:
        """Keep ``data`` to go out with :meth:`end`: a whole body is then one message (and,
        with a ``content-length`` header, no chunked encoding)."""
        self._last = data

    async def end(self) -> None:
        """Send what :meth:`write_last` kept and end the response; once only (a later call
        does nothing), and no write of any kind follows it."""
        await acquire(self._lock)
        try:
            if self.finished:
                return
            self.finished = True
            last = self._last or b""
            await self._asgi({"type": "http.response.body", "body": last, "more_body": False})
        finally:
            self._lock.release()

    async def wait_started(self) -> None:
        if self._started_event is None:
            self._started_event = trio.Event()
            if self.started:
                self._started_event.set()
        await self._started_event.wait()

    async def write_if_silent(
        self, data: Callable[[], bytes], commit: Callable[[], Headers] | None = None
    ) -> bool:
        """Write ``data()`` only if the client heard nothing for the clock's interval. When
        headers are not out yet and ``commit`` is given, send ``200`` with its headers first.
        ``data`` is called under the lock, right before the write: a heartbeat that numbers
        itself in the stream (Responses' ``keepalive`` events) gets its place there."""
        assert self.clock is not None
        await acquire(self._lock)
        try:
            if self.ending or not self.clock.is_due(trio.current_time()):
                return False
            if not self.started:
                if commit is None:
                    return False
                await self._start_locked(200, commit())
            await self._asgi({"type": "http.response.body", "body": data(), "more_body": True})
            return True
        finally:
            self._lock.release()


async def heartbeat(
    writer: ResponseWriter,
    data: Callable[[], bytes],
    entry: InFlight,
    commit: Callable[[], Headers] | None,
) -> None:
    """Write ``data()`` whenever the client heard nothing for the interval.

    With ``commit`` (early headers), the first heartbeat also commits ``200`` and the
    headers ``commit()`` returns — so a failure, or a whole failover, that is over before
    the first heartbeat is due still gets a real status. Without it, heartbeats start once
    the relay sent the upstream's headers. A failed write means the client is gone: the
    upstream exchange is cancelled at once. Returns once the response's end is decided (the
    relay may still be storing the answer, or reading the rest of an upstream body, then).
    """
    clock = writer.clock
    assert clock is not None
    if commit is None:
        await writer.wait_started()
    while not writer.ending:  # after the end there is nothing to keep alive
        await alarm.sleep_until(clock.due_at)
        try:
            written = await writer.write_if_silent(data, commit)
        except ClientGone:
            entry.scope.cancel()
            return
        if written:
            entry.heartbeat()


def sse_headers(extra: Headers) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        *extra,
    ]


def json_headers(
    extra: Headers, content_type: str = "application/json"
) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type.encode("latin-1")), *extra]
