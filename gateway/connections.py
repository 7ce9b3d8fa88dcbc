"""Client connections: hypercorn's HTTP protocol on the gateway's own trio listeners, with
the gateway's connection timers and close handling.

hypercorn's trio ``TCPServer`` runs one connection: a reader task feeding the h11
protocol, and an idle task that closes the connection after ``keep_alive_timeout`` with no
request in progress. Used as it is, it lets a client hold connections open long after it
should (issue 17); :class:`GatewayConnection` changes exactly that:

- **One timer for two waits.** hypercorn's idle timer bounds both the wait between
  requests and a request head that is still arriving, so a client dribbling a head holds
  its connection for the whole keep-alive time. Here the wait between requests ends with
  the next request's first byte (or at once, if it came before the last answer ended),
  and from there its head has ``header`` seconds to arrive; a new connection's first head
  has them from the accept.
- **Closed clients held.** When the client closes an idle connection the reader stops,
  but the connection's task still waits for the idle timer: the socket sits in CLOSE_WAIT
  for up to the keep-alive time. Here the idle timer is part of reading, and ends with it.
- **Closing cancelled by the app.** The protocol closes a ``Connection: close``
  connection, or arms the idle timer of a kept-alive one, from inside the app's last
  ``send``. quart-trio cancels its request's tasks as soon as ``receive()`` returns
  ``http.disconnect`` — which hypercorn delivers from inside that very send — so the close
  (or the timer) was cancelled half done and the connection stayed open, without a
  timer, until the client left. Here the close runs shielded from the caller's
  cancellation, and arming the timer is an assignment that cannot be cut short.
- **No timer task.** hypercorn's idle timer is a lock, a started task and a cancelled one
  for every request: five passes through trio's scheduler. Here it is the deadline of the
  scope the reader runs in, which a request moves (:class:`_IdleTimer`); at shutdown the
  idle connections are closed at once.
- **Writes.** hypercorn takes the connection's send lock with trio's ``acquire``, a pass
  through the scheduler even when the lock is free, and writes h11's empty end of a
  ``content-length`` body (another pass). Here the lock is taken at once when free and
  nothing is written for nothing: a streamed event costs one scheduler pass, not two.
  Reads wait on the socket itself, without trio's stream and socket wrappers.
- **A reader left parked.** A reader holding the bytes after a request waits to be let
  parse them; when the connection closes instead, it waited forever. Here closing the
  connection cancels its reader.
- **No nursery of its own.** What the protocol spawns for a connection (its apps; h2's
  and WebSocket's helpers) runs in the server's nursery, and the connection waits for it
  before it ends (:class:`~gateway.app_queue.ConnectionTasks`): a nursery, its cancel
  scope and their sets are ≈ 1 KiB that every open connection held. hypercorn's ASGI
  wrapper is not used either: its frame, awaiting the app, was held by every request
  for as long as it lasted; here the app's call is handed to hypercorn as it is.

:func:`serve_connections` is hypercorn's trio ``serve`` for what the gateway uses (plain
TCP binds, ASGI, lifespan) with these connections. It relies on ``TCPServer``'s internals
(``run``, ``_read_data``, ``_initiate_server_close``, ``_close``, ``idle_task``,
``send_lock``, ``ProtocolWrapper``'s arguments), which is why hypercorn is pinned to a
minor version; ``tests/e2e/test_http_*.py`` fail if they change.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed as ClosedEvent
from hypercorn.events import Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ConnectionState,
    LifespanState,
    Scope,
)
from hypercorn.utils import parse_socket_addr, repr_socket_addr

from . import http_stream, ws_stream
from .accept_share import ACCEPT_PAUSE, ConnectionShares
from .app_queue import ConnectionTasks
from .locks import acquire

__all__ = [
    "CannotListen",
    "ConnectionTimers",
    "GatewayConnection",
    "bind_sockets",
    "serve_connections",
]

log = logging.getLogger("gateway.server")

_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True, slots=True)
class ConnectionTimers:
    """``keep_alive``: seconds an idle connection waits for its next request's first byte;
    ``header``: seconds a request head may take from its first byte (from the accept, for a
    connection's first request)."""

    keep_alive: float
    header: float


class GatewayConnection(TCPServer):
    """One client connection (see the module docstring for what differs from hypercorn's)."""

    def __init__(
        self, timers: ConnectionTimers, raw: socket.socket, tasks: trio.Nursery, *args: Any
    ) -> None:
        super().__init__(*args)
        self.timers = timers
        self._tasks = tasks  # where its apps run (ConnectionTasks)
        self._raw = raw  # the stream's own socket, for writes that need not wait
        self._reading = trio.CancelScope()
        self._idle = _IdleTimer(self, self._reading)
        self._writing: trio.CancelScope | None = None  # the write waiting for the client
        self._abandoned = False
        # hypercorn's idle task (a lock, a task slot) is not used here: not kept either.
        self.idle_task = self._idle  # type: ignore[assignment]

    async def run(self) -> None:
        """hypercorn's, for a plain TCP connection, with what its protocol spawns in the
        server's nursery (:class:`~gateway.app_queue.ConnectionTasks`)."""
        sock = self._raw
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with ConnectionTasks(self._tasks) as tasks:
                self._task_group = tasks
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    tasks,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                await self.protocol.initiate()
                self._idle.arm()
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
        elif isinstance(event, Updated):
            # Plain assignments: nothing a caller's cancellation could leave half done.
            if event.idle:
                self._idle.arm()
            else:
                self._idle.disarm()
        else:
            await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        """hypercorn's write, without its passes through the scheduler when nothing has to
        wait: the send lock is taken at once when it is free, what the socket takes at
        once is written there and then, and an empty write (h11's end of a body with a
        ``content-length``) is not made. Only a rest the socket's buffer cannot take yet
        is waited for, as ``send_all`` does."""
        if not data:
            return
        await acquire(self.send_lock)
        try:
            if self._abandoned:
                raise trio.ClosedResourceError("the connection was given up")
            sent = self._write_now(data)
            if sent < len(data):
                # As hypercorn: a write is never cut in half, whoever is cancelled — unless
                # the connection is given up (:meth:`abandon`): then it is cut and closed.
                with trio.CancelScope(shield=True), trio.CancelScope() as self._writing:
                    await self.stream.send_all(memoryview(data)[sent:])
                self._writing = None
                if self._abandoned:
                    raise trio.ClosedResourceError("the connection was given up")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(ClosedEvent())
        finally:
            self.send_lock.release()

    def _write_now(self, data: bytes) -> int:
        """How much of ``data`` the socket took without waiting (none if its buffer is
        full). Raises ``trio.BrokenResourceError`` when the connection is closed or broken."""
        try:
            return self._raw.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # EPIPE, ECONNRESET; EBADF once the socket is closed
            raise trio.BrokenResourceError(f"client connection: {exc}") from exc

    async def _read_data(self) -> None:
        with self._reading:  # its deadline is the idle timer's
            while True:
                try:
                    data = await self._receive()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if data:
                    self._idle.head_begun()
                await self.protocol.handle(RawData(data))
                if not data:
                    break
                del data  # not held while the next bytes are awaited
        if self._reading.cancelled_caught and self._raw.fileno() != -1:
            # Idle for its time, or idle at shutdown (not closed already by _close).
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()
        await self.protocol.handle(ClosedEvent())

    async def _receive(self) -> bytes:
        """The client's next bytes (``b""`` at its end), waited for on the socket itself,
        not through trio's stream and socket wrappers (their frames are held by every idle
        connection). A read that found bytes without waiting still passes through the
        scheduler, as trio's does: a client that never stops sending cannot keep the
        other connections waiting."""
        raw = self._raw
        waited = False
        while True:
            try:
                data = raw.recv(MAX_RECV)
            except BlockingIOError:
                pass  # waited for below: inside this clause the error would be held
            except OSError as exc:
                if raw.fileno() == -1:  # closed by this side
                    raise trio.ClosedResourceError from exc
                raise trio.BrokenResourceError(f"client connection: {exc}") from exc
            else:
                if not waited:
                    await trio.lowlevel.checkpoint()
                return data
            await trio.lowlevel.wait_readable(raw)
            waited = True

    def abandon(self) -> None:
        """At the drain's deadline: cut the write that waits for a client that reads
        nothing (a shielded write would hold the connection, and the drain, for as long as
        the client keeps its socket open — a ping flood fills it from the reader itself);
        the connection then closes, and no later write is tried."""
        self._abandoned = True
        if self._writing is not None:
            self._writing.cancel()

    def close_if_idle(self) -> None:
        """At shutdown: close now if no request is in progress (else after its answer,
        as the protocol does once the server is terminated)."""
        self._idle.shut_down()

    async def _close(self) -> None:
        """Close the socket (whoever asks, cancelled or not; twice is harmless) and stop
        the reader. No ``send_eof`` first, as hypercorn does: it is the same FIN, and its
        checkpoint let the app's concurrent ``send_all`` fail with ``BusyResourceError``."""
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        self._reading.cancel()


class _IdleTimer:
    """hypercorn's idle task (a lock, a started task and a cancelled one for every
    request) as the deadline of the scope the connection's reader runs in: no task of its
    own, and arming and disarming it are assignments.

    Armed (no request in progress), the wait is ``header`` for a connection's first head
    or a next head that began already, else ``keep_alive``; the next request's first byte
    cuts it to ``header`` from then. When it runs out, or the gateway shuts down while it
    is armed, the reader stops and closes the connection."""

    __slots__ = ("_connection", "_heads_awaited", "_reading", "armed")

    def __init__(self, connection: GatewayConnection, reading: trio.CancelScope) -> None:
        self._connection = connection
        self._reading = reading
        self._heads_awaited = 0
        self.armed = False

    def arm(self) -> None:
        timers = self._connection.timers
        first = self._heads_awaited == 0
        self._heads_awaited += 1
        wait = timers.header if first or self._next_head_begun() else timers.keep_alive
        self.armed = True
        if self._connection.context.terminated.is_set():
            self._reading.deadline = -math.inf  # idle at shutdown: close
        else:
            self._reading.deadline = trio.current_time() + wait

    def disarm(self) -> None:
        self.armed = False
        self._reading.deadline = math.inf

    def head_begun(self) -> None:
        """Bytes arrived: if they begin the next request, its head now has ``header`` s."""
        if self.armed:
            header = trio.current_time() + self._connection.timers.header
            self._reading.deadline = min(self._reading.deadline, header)

    def shut_down(self) -> None:
        if self.armed:
            self._reading.deadline = -math.inf

    def _next_head_begun(self) -> bool:
        """Whether bytes of the next request arrived before this wait began (pipelined, or
        sent while the last answer was being finished): h11 holds them unparsed."""
        h11_connection = getattr(self._connection.protocol.protocol, "connection", None)
        return isinstance(h11_connection, h11.Connection) and bool(h11_connection.trailing_data[0])


async def _accept(
    listener: socket.socket,
    handler: Callable[[trio.SocketStream, socket.socket], Awaitable[None]],
    nursery: trio.Nursery,
    shares: ConnectionShares | None,
) -> None:
    """Accept connections on ``listener`` and serve each in ``nursery`` (trio's
    ``serve_listeners``, with :mod:`gateway.accept_share`'s spreading when ``shares`` are
    given: a worker ahead of another in open connections leaves it the next one for a
    moment)."""
    while True:
        await trio.lowlevel.wait_readable(listener)
        if shares is not None and shares.ahead():
            await trio.sleep(ACCEPT_PAUSE)
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            continue  # another worker took it
        except OSError as error:  # as serve_listeners: out of descriptors or memory
            if error.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            log.error("accept failed (%s); pausing 0.1 s", error)
            await trio.sleep(0.1)
            continue
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        if shares is None:
            nursery.start_soon(handler, stream, sock)
        else:
            nursery.start_soon(_counted, handler, stream, sock, shares)


async def _counted(
    handler: Callable[[trio.SocketStream, socket.socket], Awaitable[None]],
    stream: trio.SocketStream,
    raw: socket.socket,
    shares: ConnectionShares,
) -> None:
    shares.opened()
    try:
        await handler(stream, raw)
    finally:
        shares.closed()


class _AppCall:
    """hypercorn's ASGI app wrapper without its frame: the app's call is returned for
    hypercorn to await, not awaited in a frame of the wrapper's that every request holds
    for as long as it lasts. (Sync apps are not served: the gateway's app is ASGI.)"""

    __slots__ = ("app",)

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: object,
        call_soon: object,
    ) -> Coroutine[Any, Any, None]:
        # hypercorn's type says coroutine; every ASGI app here is an async function's.
        return cast("Coroutine[Any, Any, None]", self.app(scope, receive, send))


class CannotListen(Exception):
    """The address to listen on cannot be bound (it is in use, or not this machine's);
    the message names it."""


def bind_sockets(config: HypercornConfig) -> list[socket.socket]:
    """Sockets bound to ``config.bind``, not listening yet. Raises :class:`CannotListen`
    (hypercorn's :class:`OSError`, with the address it was for)."""
    try:
        return config.create_sockets().insecure_sockets
    except OSError as error:
        where = ", ".join(config.bind)
        raise CannotListen(f"cannot listen on {where}: {error.strerror or error}") from None


async def _abandon_at(deadline: float, live: set[GatewayConnection]) -> None:
    """At the drain's deadline, give up the connections still held (their tasks are
    cancelled then too; a write waiting for its client is not, unless given up)."""
    await trio.sleep_until(deadline)
    for server in list(live):
        server.abandon()


async def serve_connections(
    app: ASGIFramework,
    config: HypercornConfig,
    timers: ConnectionTimers,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    sockets: list[socket.socket] | None = None,
    shares: ConnectionShares | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``config.bind`` (or on ``sockets``, listening already: a worker's
    share of its parent's, with ``shares`` of the connections) until
    ``shutdown_trigger()`` returns; reports the bound addresses (``http://host:port``)
    through ``task_status``. Raises :class:`CannotListen` if ``config.bind`` cannot be
    bound.

    On shutdown: stop accepting, close idle connections, give requests in progress
    ``config.graceful_timeout`` seconds, then cancel them; then the app's lifespan ends.
    """
    http_stream.install()  # the client's disconnect told at once (gateway.http_stream)
    ws_stream.install()  # WebSocket ping frames for the app (gateway.ws_stream)
    asgi = _AppCall(app)
    state: LifespanState = {}
    lifespan = Lifespan(asgi, config, state)
    context = WorkerContext(None)

    live: set[GatewayConnection] = set()

    async def connection(stream: trio.SocketStream, raw: socket.socket) -> None:
        server = GatewayConnection(
            timers, raw, connections, asgi, config, context, ConnectionState(state.copy()), stream
        )
        live.add(server)
        try:
            await server.run()
        finally:
            live.discard(server)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners: list[socket.socket] = []
            binds: list[str] = []
            if sockets is None:
                sockets = bind_sockets(config)
            for sock in sockets:
                sock.listen(config.backlog)
                sock.setblocking(False)
                listeners.append(sock)
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            log.info("listening on %s", ", ".join(binds))
            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(_accept, listener, connection, connections, shares)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                # Refuse new connections at once (a worker's copy of a shared socket would
                # otherwise queue them until the process exits).
                for listener in listeners:
                    trio.lowlevel.notify_closing(listener)
                    listener.close()
                # Idle connections close now, busy ones after their answer; all by the deadline.
                await context.terminated.set()
                for server in list(live):
                    server.close_if_idle()
                deadline = trio.current_time() + config.graceful_timeout
                connections.cancel_scope.deadline = deadline
                lifespan_nursery.start_soon(_abandon_at, deadline, live)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
