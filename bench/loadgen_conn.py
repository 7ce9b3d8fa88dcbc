"""The load generator's HTTP/1.1 side: requests, the response decoder, and keep-alive
connections as asyncio ``Protocol``s that stamp every read (see ``loadgen.py``)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

now = time.perf_counter
# A content delta's text, in any dialect: ``"content":"tok7 "``, ``"text":"tok7 "`` or
# ``"delta":"tok7 "``.
_TOKEN = re.compile(rb'"tok(\d+) ')
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max in milliseconds of values in seconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 4)

    return {
        "n": len(values),
        "p50": ms(percentile(values, 0.50)),
        "p90": ms(percentile(values, 0.90)),
        "p99": ms(percentile(values, 0.99)),
        "max": ms(max(values) if values else None),
    }


def build_request(
    host: str, port: int, path: str, body: dict[str, Any], key: str, dialect: str = "chat"
) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    if dialect == "messages":  # what the anthropic SDKs send on every call
        auth += "anthropic-version: 2023-06-01\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"{auth}content-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def chat_body(
    stream: bool, n: int = 64, gap_ms: int = 20, prefill_ms: int = 0, model: str = "bench"
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"bench:n={n},gap={gap_ms},prefill={prefill_ms}"}],
        "stream": stream,
    }


def messages_body(
    stream: bool, n: int = 64, gap_ms: int = 20, prefill_ms: int = 0, model: str = "bench"
) -> dict[str, Any]:
    """The Anthropic Messages request of :func:`chat_body`'s shape."""
    return {
        "model": model,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": f"bench:n={n},gap={gap_ms},prefill={prefill_ms}"}],
        "stream": stream,
    }


def responses_body(
    stream: bool, n: int = 64, gap_ms: int = 20, prefill_ms: int = 0, model: str = "bench"
) -> dict[str, Any]:
    """The OpenAI Responses request of :func:`chat_body`'s shape (``store`` left to its
    default, on, as the SDKs leave it)."""
    return {
        "model": model,
        "input": f"bench:n={n},gap={gap_ms},prefill={prefill_ms}",
        "stream": stream,
    }


BODIES = {"chat": chat_body, "messages": messages_body, "responses": responses_body}
# Named events that carry one content delta; any other named event never counts as one
# (Responses' ``.done`` events and ``response.completed`` repeat the whole text).
_DELTA_EVENTS = (b"event: content_block_delta\n", b"event: response.output_text.delta\n")
_HEARTBEATS = (b":", b"event: ping\n", b"event: keepalive\n")
_ENDS = (b"event: message_stop\n", b"event: response.completed\n")
_FAILURES = (b"event: error\n", b"event: response.failed\n")


class ResponseDecoder:
    """Incremental HTTP/1.1 response decoder: ``feed`` returns body bytes; ``done`` once the
    whole response is in. Raises ``ValueError`` on a framing it does not understand."""

    __slots__ = ("_buf", "_chunked", "_remaining", "_state", "close", "done", "status")

    def __init__(self) -> None:
        self._buf = b""
        self._state = "head"
        self._chunked = False
        self._remaining = 0
        self.status = 0
        self.done = False
        self.close = False  # the server said ``connection: close``

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        while buf:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self._buf = buf
                    break
                match = _STATUS.match(buf)
                head = buf[:end].lower()
                buf = buf[end + 4 :]
                if not match:
                    raise ValueError(f"bad status line: {head[:80]!r}")
                self.status = int(match.group(1))
                self.close = b"\r\nconnection: close" in head
                if b"transfer-encoding: chunked" in head:
                    self._state = "size"
                else:
                    cl = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                    if cl is None:
                        raise ValueError("response without length")
                    self._remaining = int(cl.group(1))
                    self._state = "fixed"
                    if self._remaining == 0:
                        self._finish(buf)
                        break
            elif state == "fixed":
                take = buf[: self._remaining]
                buf = buf[len(take) :]
                out.append(take)
                self._remaining -= len(take)
                if self._remaining == 0:
                    self._finish(buf)
                    break
            elif state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    self._buf = buf
                    break
                size = int(buf[:end].split(b";", 1)[0], 16)
                buf = buf[end + 2 :]
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            elif state == "data":
                take = buf[: self._remaining]
                buf = buf[len(take) :]
                out.append(take)
                self._remaining -= len(take)
                if self._remaining == 0:
                    self._state = "crlf"
            elif state == "crlf":
                if len(buf) < 2:
                    self._buf = buf
                    break
                buf = buf[2:]
                self._state = "size"
            else:  # trailer: we never ask for trailers; expect the final CRLF
                end = buf.find(b"\r\n")
                if end < 0:
                    self._buf = buf
                    break
                line, buf = buf[:end], buf[end + 2 :]
                if not line:
                    self._finish(buf)
                    break
        return b"".join(out) if len(out) != 1 else out[0]

    def _finish(self, rest: bytes) -> None:
        if rest:
            raise ValueError("bytes after the response (pipelining is not used)")
        self.done = True
        self._state = "head"


class StreamRecord:
    """What one streamed response looked like to the client."""

    __slots__ = (
        "coalesced",
        "complete",
        "ended",
        "errors",
        "events",
        "first_event",
        "heartbeats",
        "order_ok",
        "sent",
        "status",
        "tokens",
    )

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.status = 0
        self.first_event: float | None = None  # the first data event
        self.tokens: list[float] = []  # arrival time of each content delta, in order
        self.heartbeats: list[float] = []
        self.events: list[float] = []  # every event (data or comment), for silence checks
        self.coalesced = 0
        self.order_ok = True
        self.complete = False
        self.ended: float | None = None  # the read with the terminal event (a whole stream's)
        self.errors: list[str] = []


class PoolConn(asyncio.Protocol):
    """What a :class:`Pool` opens: a protocol that reports its close to the pool, and that
    the pool may hand a ``reopen`` (an HTTP :class:`Conn` or ``loadgen_ws.WSConn``). Each
    sets ``_transport`` once connected, ``_ended`` once its work is done, and ``_error``
    to why it failed."""

    reopen: Callable[[], None] | None = None
    _transport: asyncio.Transport | None
    _error: str | None
    _ended: bool

    def _fail(self, reason: str) -> None:
        self._error = reason
        if self._transport is not None:
            self._transport.abort()

    def _note_loss(self, exc: Exception | None) -> None:
        """Why the connection was lost (in ``connection_lost``), unless its work was done
        or it failed already."""
        if not self._ended and self._error is None:
            self._error = f"connection lost: {exc!r}" if exc else "connection closed by peer"


class Conn(PoolConn):
    """One keep-alive connection running a closed loop of requests.

    ``next_request()`` returns the bytes of the next request, or ``None`` to stop.
    For unary requests ``on_unary(latency, status)`` is called; for streams every event is
    recorded in a :class:`StreamRecord` handed to ``on_stream``.
    """

    def __init__(
        self,
        next_request: Callable[[], tuple[bytes, bool] | None],
        on_unary: Callable[[float, int], None],
        on_stream: Callable[[StreamRecord], None],
        on_close: Callable[[Conn, str | None], None],
    ) -> None:
        self._next = next_request
        self._on_unary = on_unary
        self._on_stream = on_stream
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._decoder = ResponseDecoder()
        self._stream = False
        self._sent = 0.0
        self._record: StreamRecord | None = None
        self._sse = b""
        self._error: str | None = None
        self._ended = False
        self.reopen: Callable[[], None] | None = None  # set by the Pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send_next()

    def _send_next(self) -> None:
        assert self._transport is not None
        item = self._next()
        if item is None:
            self._ended = True
            self._transport.close()
            return
        request, self._stream = item
        self._decoder = ResponseDecoder()
        self._sse = b""
        self._sent = now()
        self._record = StreamRecord(self._sent) if self._stream else None
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        t = now()
        try:
            body = self._decoder.feed(data)
        except ValueError as exc:
            self._fail(str(exc))
            return
        if self._stream and body:
            self._events(body, t)
        if self._decoder.done:
            if self._stream:
                record = self._record
                assert record is not None
                record.status = self._decoder.status
                self._on_stream(record)
            else:
                self._on_unary(t - self._sent, self._decoder.status)
            if self._decoder.close:
                # e.g. hypercorn after keep_alive_max_requests (1,000): carry on with a new
                # connection, as HTTP clients do.
                self._ended = True
                self._record = None
                if self._transport is not None:
                    self._transport.close()
                if self.reopen is not None:
                    self.reopen()
                return
            self._send_next()

    def _events(self, body: bytes, t: float) -> None:
        record = self._record
        assert record is not None
        buf = self._sse + body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._sse = parts.pop()
        tokens_here = 0
        for event in parts:
            if not event:
                continue
            record.events.append(t)
            # Heartbeats: SSE comments, Anthropic's ``event: ping``, Responses' keepalive.
            if event.startswith(_HEARTBEATS):
                record.heartbeats.append(t)
                continue
            if record.first_event is None:
                record.first_event = t
            named = event.startswith(b"event: ")
            match = _TOKEN.search(event) if not named or event.startswith(_DELTA_EVENTS) else None
            if match is not None:
                if int(match.group(1)) != len(record.tokens):
                    record.order_ok = False
                record.tokens.append(t)
                tokens_here += 1
            elif named:
                if event.startswith(_ENDS):
                    record.complete = True
                    record.ended = t
                elif event.startswith(_FAILURES):
                    record.errors.append(event[:200].decode(errors="replace"))
            elif b"[DONE]" in event:
                record.complete = True
                record.ended = t
        if tokens_here > 1:
            record.coalesced += tokens_here - 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._note_loss(exc)
        if self._record is not None and not self._ended:
            self._record.errors.append(self._error or "lost")
            self._on_stream(self._record)
            self._record = None
        self._on_close(self, None if self._ended else self._error)


# Builds one connection, given the pool's close callback.
Make = Callable[[Callable[[PoolConn, str | None], None]], PoolConn]


class Pool:
    """Opens connections (at most ``opening`` at once) and waits for all to close."""

    def __init__(self, host: str, port: int, opening: int = 64) -> None:
        self.host, self.port = host, port
        self.errors: dict[str, int] = {}
        self.reconnects = 0
        self._open = 0
        self._all_closed = asyncio.Event()
        self._gate = asyncio.Semaphore(opening)
        self._connecting: set[asyncio.Future[bool]] = set()

    def _closed(self, conn: PoolConn, error: str | None) -> None:
        if error is not None:
            key = error[:120]
            self.errors[key] = self.errors.get(key, 0) + 1
        self._open -= 1
        if self._open == 0:
            self._all_closed.set()

    async def open(self, make: Make) -> bool:
        self._open += 1
        self._all_closed.clear()
        return await self._connect(make)

    def _reopen(self, make: Make) -> None:
        self._open += 1  # now, before the old connection's close is counted
        self.reconnects += 1
        task = asyncio.ensure_future(self._connect(make))
        self._connecting.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, make: Make) -> bool:
        loop = asyncio.get_running_loop()

        def build() -> PoolConn:
            conn = make(self._closed)
            conn.reopen = lambda: self._reopen(make)
            return conn

        async with self._gate:
            try:
                await loop.create_connection(build, self.host, self.port)
            except OSError as exc:
                self._open -= 1
                key = f"connect: {exc!r}"[:120]
                self.errors[key] = self.errors.get(key, 0) + 1
                if self._open == 0:
                    self._all_closed.set()
                return False
        return True

    async def wait_closed(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self._all_closed.wait(), within)
        except TimeoutError:
            return False
        return True
