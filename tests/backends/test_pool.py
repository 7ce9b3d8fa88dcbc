"""The relays' connection pool against a scripted HTTP/1.1 server on loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trustme

from backends._pool import ConnectionPool
from gateway.abc import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from gateway.testing.http11 import IncomingRequest, read_request

Answer = Callable[[trio.SocketStream, h11.Connection, IncomingRequest], Awaitable[bool]]


@dataclass
class Server:
    port: int = 0
    accepted: int = 0
    active: int = 0
    max_active: int = 0
    requests: list[IncomingRequest] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)  # a connection saw EOF


async def ok(
    stream: trio.SocketStream,
    conn: h11.Connection,
    request: IncomingRequest,
    extra: list[tuple[str, str]] | None = None,
) -> bool:
    body = b'{"ok":true}'
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *(extra or []),
    ]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    return True


@asynccontextmanager
async def serve(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server()

    async def handle(stream: trio.SocketStream) -> None:
        server.accepted += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await read_request(stream, conn)) is not None:
                server.requests.append(request)
                server.active += 1
                server.max_active = max(server.max_active, server.active)
                try:
                    keep = await answer(stream, conn, request)
                finally:
                    server.active -= 1
                if not keep or conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass  # includes a TLS peer that went away without its goodbye
        finally:
            with contextlib.suppress(trio.BrokenResourceError):  # a TLS peer already gone
                await stream.aclose()  # closed for good before anyone hears so
            server.closed.set()

    async with trio.open_nursery() as nursery:
        if tls is None:
            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        else:
            listeners = await nursery.start(
                partial(
                    trio.serve_ssl_over_tcp, handle, 0, tls, host="127.0.0.1", https_compatible=True
                )
            )
            listeners = [listener.transport_listener for listener in listeners]
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


def pool_to(
    port: int,
    *,
    scheme: str = "http",
    connect_timeout: float = 5.0,
    max_connections: int = 10,
    max_keepalive_connections: int = 10,
    keepalive_expiry: float = 4.0,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionPool:
    return ConnectionPool(
        f"{scheme}://127.0.0.1:{port}/v1",
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        connect_timeout=connect_timeout,
        keepalive_expiry=keepalive_expiry,
        ssl_context=ssl_context,
    )


def pool_for(server: Server, **kwargs: Any) -> ConnectionPool:
    return pool_to(server.port, **kwargs)


async def closed_at_once(pool: ConnectionPool, server: Server) -> None:
    """The pool dropped its connection and the upstream sees it closed within a second."""
    assert (pool.open, pool.idle) == (0, 0)
    with trio.fail_after(1):
        await server.closed.wait()


async def fetch(pool: ConnectionPool, path: str = "/chat/completions") -> tuple[int, bytes]:
    async with pool.open_response(b"POST", path, [(b"x-test", b"1")], b"{}") as response:
        return response.status, b"".join([chunk async for chunk in response.body])


async def test_keep_alive_reuses_one_connection_and_sends_the_head() -> None:
    async with serve(ok) as server:
        pool = pool_for(server)
        for _ in range(3):
            assert await fetch(pool) == (200, b'{"ok":true}')
        assert server.accepted == 1
        assert (pool.open, pool.idle) == (1, 1)
        head = server.requests[0].head
        assert head.target == b"/v1/chat/completions"
        assert dict(head.headers)[b"host"] == f"127.0.0.1:{server.port}".encode()
        assert dict(head.headers)[b"content-length"] == b"2"
        assert server.requests[0].body == b"{}"
        pool.close()
        assert (pool.open, pool.idle) == (0, 0)


async def test_an_idle_connection_the_upstream_closed_is_not_reused() -> None:
    async def answer_once(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        await ok(stream, conn, request)
        return False  # close after every response, without saying so

    async with serve(answer_once) as server:
        pool = pool_for(server)
        assert (await fetch(pool))[0] == 200
        await server.closed.wait()
        assert (await fetch(pool))[0] == 200
        assert server.accepted == 2
        pool.close()


async def test_connection_close_and_expiry_are_honoured() -> None:
    async def closing(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        return await ok(stream, conn, request, [("connection", "close")])

    async with serve(closing) as server:
        pool = pool_for(server)
        await fetch(pool)
        assert (pool.open, pool.idle) == (0, 0)
    async with serve(ok) as server:
        pool = pool_for(server, keepalive_expiry=0.0)
        await fetch(pool)
        await fetch(pool)
        assert server.accepted == 2
        pool.close()


async def test_max_connections_queues_and_max_keepalive_bounds_idle() -> None:
    release = trio.Event()

    async def slow(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        await release.wait()
        return await ok(stream, conn, request)

    async with serve(slow) as server:
        pool = pool_for(server, max_connections=2, max_keepalive_connections=1)
        results: list[int] = []

        async def one() -> None:
            results.append((await fetch(pool))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert server.max_active == 2
            release.set()
        assert results == [200] * 5
        assert server.max_active == 2
        assert (pool.open, pool.idle) == (1, 1)
        pool.close()


async def test_a_response_left_early_closes_its_connection() -> None:
    async def endless(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        await stream.send_all(
            conn.send(
                h11.Response(status_code=200, headers=[("content-type", "text/event-stream")])
            )
        )
        while True:
            await stream.send_all(conn.send(h11.Data(data=b"data: x\n\n")))
            await trio.sleep(0.01)

    async with serve(endless) as server:
        pool = pool_for(server)
        async with pool.open_response(b"POST", "/x", [], b"{}") as response:
            assert await response.body.__anext__() == b"data: x\n\n"
        await closed_at_once(pool, server)


async def test_a_response_finished_after_close_closes_its_connection() -> None:
    """The pool's owner may close it while a relay still reads a response (a backend
    stopping under a stream that is about to end): that connection must not go back on a
    stack nobody will close again."""
    async with serve(ok) as server:
        pool = pool_for(server)
        async with pool.open_response(b"POST", "/x", [], b"{}") as response:
            pool.close()
            assert b"".join([chunk async for chunk in response.body]) == b'{"ok":true}'
        await closed_at_once(pool, server)


async def test_cancelled_while_waiting_for_the_head_closes_the_connection() -> None:
    async def silent(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        assert await stream.receive_some() == b""  # nothing until the client hangs up
        return False

    async with serve(silent) as server:
        pool = pool_for(server)
        with trio.move_on_after(0.05):
            await fetch(pool)
        await closed_at_once(pool, server)


async def test_failures_raise_the_pools_errors() -> None:
    async def garbage(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        await stream.send_all(b"NOT HTTP\r\n\r\n")
        return False

    async def cut(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        await stream.send_all(
            conn.send(h11.Response(status_code=200, headers=[("content-length", "100")]))
        )
        await stream.send_all(b"only part")
        return False

    for answer in (garbage, cut):
        async with serve(answer) as server:
            pool = pool_for(server)
            with pytest.raises(UpstreamProtocolError):
                await fetch(pool)
            assert pool.open == 0

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    pool = pool_to(port)
    with pytest.raises(UpstreamConnectError):
        async with pool.open_response(b"POST", "/", [], b""):
            pass
    assert pool.open == 0


async def test_connect_timeout() -> None:
    # A listening socket whose backlog is full never completes another handshake.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        pool = pool_to(port, connect_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            async with pool.open_response(b"POST", "/", [], b""):
                pass
        assert pool.open == 0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_https_reuses_verified_connections_and_notices_a_closed_one() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    answered = 0

    async def answer(
        stream: trio.SocketStream, conn: h11.Connection, request: IncomingRequest
    ) -> bool:
        nonlocal answered
        await ok(stream, conn, request)
        answered += 1
        return answered != 3  # the upstream closes its connection after the third answer

    async with serve(answer, tls=server_context) as server:
        pool = pool_for(server, scheme="https", ssl_context=client_context)
        assert await fetch(pool) == (200, b'{"ok":true}')
        assert await fetch(pool) == (200, b'{"ok":true}')
        assert server.accepted == 1
        await fetch(pool)
        await server.closed.wait()
        assert await fetch(pool) == (200, b'{"ok":true}')
        assert server.accepted == 2
        pool.close()
        assert pool.open == 0

        untrusting = pool_for(server, scheme="https", ssl_context=ssl.create_default_context())
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(untrusting)
        assert untrusting.open == 0


async def test_an_answer_sent_before_the_body_was_read_is_still_read() -> None:
    """An upstream (or a proxy in front of it) that refuses a large body with 413 as soon as
    it sees the head, and closes: the client gets that 413, not a broken write."""
    async with trio.open_nursery() as nursery:

        async def refuse(stream: trio.SocketStream) -> None:
            conn = h11.Connection(h11.SERVER)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                assert isinstance(event, h11.Request)
                break
            body = b'{"error":"too large"}'
            await stream.send_all(
                conn.send(
                    h11.Response(
                        status_code=413,
                        headers=[("content-length", str(len(body))), ("connection", "close")],
                    )
                )
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            await trio.aclose_forcefully(stream)

        listeners = await nursery.start(partial(trio.serve_tcp, refuse, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        pool = pool_to(port)
        big = b"x" * (32 * 1024 * 1024)  # far more than the socket buffers hold
        async with pool.open_response(b"POST", "/", [], big) as response:
            assert response.status == 413
            assert b"".join([chunk async for chunk in response.body]) == b'{"error":"too large"}'
        assert pool.open == 0
        nursery.cancel_scope.cancel()


async def test_reading_a_body_already_there_lets_other_tasks_run_between_reads() -> None:
    """The pool reads from the socket itself; a read that found bytes without waiting
    still passes through trio's scheduler, so an upstream faster than the relay cannot
    keep every other task (heartbeats, other streams) waiting until its body ends: the
    reading task is scheduled again at least once per read (each piece of the body but the
    first, which came with the head)."""
    size = 256 * 1024  # four of the pool's reads; all the sockets hold, before reading

    async def big(stream: trio.SocketStream, conn: h11.Connection, _: IncomingRequest) -> bool:
        head = h11.Response(status_code=200, headers=[("content-length", str(size))])
        await stream.send_all(
            conn.send(head) + conn.send(h11.Data(data=b"x" * size)) + conn.send(h11.EndOfMessage())
        )
        return True

    class Steps(trio.abc.Instrument):
        def __init__(self, task: trio.lowlevel.Task) -> None:
            self.task, self.steps = task, 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.steps += task is self.task

    async with serve(big) as server:
        pool = pool_for(server)
        async with pool.open_response(b"POST", "/x", [], b"{}") as response:
            # The server wrote all it could (loopback delivers within the send): the
            # body, or as much as the sockets' buffers take, waits to be read.
            await trio.testing.wait_all_tasks_blocked()
            steps = Steps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                pieces = [piece async for piece in response.body]
            finally:
                trio.lowlevel.remove_instrument(steps)
        pool.close()
    assert sum(map(len, pieces)) == size
    assert len(pieces) >= 3
    assert steps.steps >= len(pieces) - 1, (steps.steps, len(pieces))
