"""The relays' HTTP/1.1 client: llhttp (:mod:`backends._http1`) on trio streams, one pool
of connections per backend.

Why not httpx on this path (httpx still does the health probes): the upstream request is
the relay's hot path, and ``bench/client_cost.py`` (one small POST at a time on loopback)
measures httpx at several times the CPU of this pool, with httpcore alone in between
(:mod:`backends._http1` says why not h11 either). httpcore's pool also scans every
connection it holds on each request and each release (encode/httpcore#1035, still open):
O(n) work per request at thousands of concurrent streams, where this pool does O(1).

Idle connections wait on a stack: the most recently used is reused first (the one least
likely to have been closed by the upstream meanwhile); one idle longer than
``keepalive_expiry``, or that the upstream closed (its socket is readable while idle), is
dropped instead. The 4 s default stays under the 5 s idle timeouts of uvicorn (vLLM) and
cpp-httplib (llama-server), so a request is not sent on a connection the upstream is
closing at that moment; a POST is never retried. A new connection is opened only when no
idle one is left, so at most ``max_connections`` are ever open; beyond that requests wait
for a slot. A connection goes back on the stack only after its response was read to the
end; a response left early (an error, a cancelled relay) closes its connection at once, so
the upstream sees the request end.
"""

from __future__ import annotations

import math
import os
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from gateway.abc import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout

from ._http1 import END, Head, HTTPError, ResponseParser, request_head

# One read from the upstream socket.
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Response:
    """An upstream response whose head has arrived; ``body`` yields the body's bytes."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: Body

    def header(self, name: bytes) -> str:
        """The value of header ``name`` (lower case), or ``""``."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return ""


class _Connection:
    __slots__ = ("idle_since", "name", "parser", "plain", "sent", "stream")

    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self.stream = stream
        # The socket itself when nothing is layered on it (not TLS): read and written
        # directly, without trio's wrappers.
        self.plain: trio.socket.SocketType | None = getattr(stream, "socket", None)
        self.name = name
        self.parser = ResponseParser()
        self.sent = False  # the last request went out whole
        self.idle_since = 0.0

    def reusable(self) -> bool:
        """True when both sides finished the last exchange and may start another."""
        return self.sent and self.parser.reusable

    def closed_by_peer(self) -> bool:
        """An idle connection with something to read has been closed (or spoken on out of
        turn) by the upstream: either way it cannot carry a request."""
        socket = self.plain
        if socket is None:  # TLS: look at the transport under it
            socket = getattr(getattr(self.stream, "transport_stream", None), "socket", None)
        return socket is not None and socket.is_readable()

    def write_now(self, data: bytes) -> int:
        """How much of ``data`` the socket took without waiting: a request is written
        there and then, with no pass through trio's scheduler, when the socket's buffer
        has room (always, but for large bodies). None of it on TLS (the caller sends it
        all); raises ``OSError`` when the connection is broken."""
        if self.plain is None:
            return 0
        try:
            return os.write(self.plain.fileno(), data)
        except BlockingIOError:
            return 0

    async def next_event(self) -> Head | bytes | object:
        """The response's :class:`~backends._http1.Head`, then its body's pieces, then
        :data:`~backends._http1.END`.

        On a plain socket the upstream's bytes are waited for on the socket itself, here:
        trio's stream and socket wrappers, or a helper of its own, would each add frames
        that every relay waiting on a silent upstream (a long prefill) holds. A read that
        found bytes without waiting still passes through the scheduler, as trio's does, so
        a fast upstream starves no one."""
        parser, socket = self.parser, self.plain
        waited = False
        while True:
            event = parser.next_event()
            if event is not None:
                return event
            try:
                if socket is None:  # TLS
                    data = bytes(await self.stream.receive_some(_READ_SIZE))
                else:
                    try:
                        data = os.read(socket.fileno(), _READ_SIZE)
                    except BlockingIOError:
                        # Waited for outside this clause, which would hold the error.
                        data = None
                    if data is None:
                        await trio.lowlevel.wait_readable(socket)
                        waited = True
                        continue
                    if not waited:
                        await trio.lowlevel.checkpoint()
                    waited = False
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamProtocolError(
                    f"{self.name}: upstream connection lost: {_reason(exc)}"
                ) from exc
            try:
                if data:
                    parser.feed(data)
                    data = None  # not held while the next bytes are awaited
                else:
                    parser.eof()
            except HTTPError as exc:
                raise UpstreamProtocolError(
                    f"{self.name}: upstream broke the HTTP exchange: {exc}"
                ) from exc


class ConnectionPool:
    """Connections to one origin (``scheme://host:port``), reused across requests."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "upstream",
        max_connections: int,
        max_keepalive_connections: int,
        connect_timeout: float | None,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name  # how error messages name the upstream ("backend X")
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode()
        self.base_path = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_keepalive = max_keepalive_connections
        self._ssl_context = ssl_context
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False
        self.open = 0

    def close(self) -> None:
        """Close the idle connections (the pool's owner has stopped relaying). A response
        still open then closes its connection when it is left, however it ended."""
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())

    @property
    def idle(self) -> int:
        return len(self._idle)

    def open_response(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _OpenResponse:
        """Send one request on a pooled connection and yield its response once the head is
        in (an async context manager). Leaving the block hands the connection back when the
        body was read to the end, and closes it otherwise. Raises
        :class:`~gateway.abc.UpstreamError` subclasses: ``UpstreamConnectError``,
        ``UpstreamTimeout`` (connect only), and ``UpstreamProtocolError`` for a broken
        exchange, here or while the body is read."""
        return _OpenResponse(self, method, path, headers, body)

    def _checkout(self) -> _Connection | None:
        now = trio.current_time()
        while self._idle:
            connection = self._idle.pop()
            if (
                now - connection.idle_since < self.keepalive_expiry
                and not connection.closed_by_peer()
            ):
                return connection
            self._discard(connection)
        return None

    def _checkin(self, connection: _Connection) -> None:
        # After close() nobody would ever take it off the stack, or close it.
        if not self._closed and connection.reusable() and len(self._idle) < self.max_keepalive:
            connection.parser.start_next()
            connection.idle_since = trio.current_time()
            self._idle.append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        self.open -= 1
        connection.parser.close()
        # Closing a plain socket is immediate; a TLS stream skips its goodbye.
        stream = connection.stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()
        elif isinstance(stream, trio.SSLStream):
            transport = stream.transport_stream
            if isinstance(transport, trio.SocketStream):
                transport.socket.close()

    async def _connect(self) -> _Connection:
        try:
            with trio.fail_after(
                math.inf if self.connect_timeout is None else self.connect_timeout
            ):
                if self.scheme == "https":
                    tls = await trio.open_ssl_over_tcp_stream(
                        self.host,
                        self.port,
                        ssl_context=self._ssl_context or ssl.create_default_context(),
                        https_compatible=True,
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:  # a refused certificate, a timeout: no fd left behind
                        await trio.aclose_forcefully(tls)
                        raise
                    stream: trio.abc.Stream = tls
                else:
                    stream = await trio.open_tcp_stream(self.host, self.port)
        except trio.TooSlowError as exc:
            raise UpstreamTimeout(
                f"{self.name}: connect to {self.host}:{self.port} timed out after "
                f"{self.connect_timeout:g} s"
            ) from exc
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise UpstreamConnectError(
                f"{self.name}: cannot connect to {self.host}:{self.port}: {_reason(exc)}"
            ) from exc
        self.open += 1
        return _Connection(stream, self.name)

    async def _exchange(
        self,
        connection: _Connection,
        method: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Response:
        try:
            head = request_head(
                method, (self.base_path + path).encode(), self.host_header, len(body), headers
            )
        except HTTPError as exc:
            raise UpstreamProtocolError(f"{self.name}: {exc}") from None
        data = head + body
        connection.sent = False
        send_failed: BaseException | None = None
        try:
            sent = connection.write_now(data)
            if sent < len(data):
                await connection.stream.send_all(memoryview(data)[sent:])
            connection.sent = True
        except (trio.BrokenResourceError, OSError) as exc:
            # An upstream may answer and stop reading before the body is all in (a 413 for
            # a large prompt, say): its answer is still worth reading.
            send_failed = exc
        try:
            event = await connection.next_event()
            assert isinstance(event, Head)  # the parser's first event is always the head
            return Response(event.status, event.headers, Body(connection))
        except UpstreamProtocolError:
            if send_failed is None:
                raise
            raise UpstreamProtocolError(
                f"{self.name}: upstream connection lost while sending: {_reason(send_failed)}"
            ) from send_failed


class _OpenResponse:
    """:meth:`ConnectionPool.open_response`'s context manager. A class rather than an
    ``@asynccontextmanager``: one lives as long as its response, which for a stream in a
    long prefill is minutes, and a generator-based one also keeps a suspended generator
    frame, an instance dict and trio's weak reference to the generator (≈ 0.7 KiB per
    open stream, measured with tracemalloc)."""

    __slots__ = (
        "_body",
        "_connection",
        "_method",
        "_path",
        "_pool",
        "_request_headers",
        "_response",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        method: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self._pool = pool
        self._method = method
        self._path = path
        self._request_headers = headers
        self._body = body
        self._connection: _Connection | None = None
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        pool = self._pool
        slots = pool._slots
        try:  # gateway.locks.acquire, written out: backends import only the plugin API
            slots.acquire_nowait()
        except trio.WouldBlock:
            await slots.acquire()
        try:
            connection = pool._checkout() or await pool._connect()
            try:
                response = await pool._exchange(
                    connection, self._method, self._path, self._request_headers, self._body
                )
            except BaseException:
                pool._checkin(connection)
                raise
        except BaseException:
            slots.release()
            raise
        self._connection, self._response = connection, response
        del self._request_headers, self._body  # sent: nothing to keep them for
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        connection, response = self._connection, self._response
        assert connection is not None and response is not None
        self._connection = self._response = None
        try:
            try:
                await response.body.aclose()  # never inside an await: no checkpoint
            finally:
                self._pool._checkin(connection)
        finally:
            self._pool._slots.release()


class Body:
    """A response's body pieces. An iterator class, not an async generator: a relay
    waiting on a silent upstream would hold the generator's frame, and trio's registry
    entry for finalizing it, for as long as it waits."""

    __slots__ = ("_connection", "_done")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._done = False

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        event = await self._connection.next_event()
        if event is END:
            self._done = True
            raise StopAsyncIteration
        assert isinstance(event, bytes)
        return event

    async def aclose(self) -> None:
        """Stop: the rest is not read (the connection is not reused unless it was)."""
        self._done = True


def _reason(exc: BaseException) -> str:
    """What went wrong, for a message: trio's stream errors keep the cause (a TLS
    verification failure, a reset) in ``__cause__`` and say nothing themselves."""
    return str(exc) or str(exc.__cause__ or "") or type(exc).__name__
