"""gateway.app_queue: each request's messages for its app, in order, bounded, in a queue
far smaller than the memory channel hypercorn would make."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from trio.testing import MockClock

from gateway.app_queue import AppQueue, ConnectionTasks, receive_now


def part(body: bytes, more: bool = True) -> Any:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_connection_waits_for_its_apps_and_helpers(autojump_clock: MockClock) -> None:
    """Its apps run in the server's nursery; leaving the connection's tasks waits for each
    to end — an app once its last send (hypercorn's ``send(None)``) is over — as leaving
    a nursery of its own would."""
    events: list[tuple[str, float]] = []
    start = trio.current_time()

    def note(what: str) -> None:
        events.append((what, trio.current_time() - start))

    async def send(message: Any) -> None:
        if message is None:
            await trio.sleep(1)  # hypercorn ending the stream: still part of the app
            note("last send")

    async def app(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        await trio.sleep(2)
        note("app")

    async def helper(seconds: float) -> None:
        await trio.sleep(seconds)
        note("helper")

    async with trio.open_nursery() as server:
        async with ConnectionTasks(server) as tasks:
            await tasks.spawn_app(app, Config(), {"type": "http"}, send)
            tasks.spawn(helper, 5)
        note("connection")
        async with ConnectionTasks(server):  # nothing spawned: leaves at once
            pass
        note("empty")
    assert events == [("app", 2), ("last send", 3), ("helper", 5), ("connection", 5), ("empty", 5)]


async def test_a_connection_leaving_with_an_error_does_not_wait(autojump_clock: MockClock) -> None:
    async def app(*_: Any) -> None:
        await trio.sleep(10)

    async def send(message: Any) -> None:
        pass

    async with trio.open_nursery() as server:
        with pytest.raises(OSError):
            async with ConnectionTasks(server) as tasks:
                await tasks.spawn_app(app, Config(), {"type": "http"}, send)
                raise OSError("connection reset")
        assert trio.current_time() == 0  # the app runs on, to be told of the close
        server.cancel_scope.cancel()


async def test_messages_come_out_in_order_and_sends_with_room_do_not_wait() -> None:
    queue = AppQueue(3)
    with trio.testing.assert_no_checkpoints():
        await queue.send(part(b"a"))
        queue.send_nowait(part(b"b"))
        await queue.send(part(b"", more=False))
    with pytest.raises(trio.WouldBlock):
        queue.send_nowait({"type": "http.disconnect"})
    assert [receive_now(queue.receive), await queue.receive()] == [part(b"a"), part(b"b")]
    assert queue.receive_nowait() == part(b"", more=False)
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()
    assert receive_now(queue.receive) is None  # empty: the caller awaits receive()


async def test_receive_is_a_checkpoint_even_with_a_message_there() -> None:
    queue = AppQueue(1)
    queue.send_nowait(part(b"a"))
    with trio.testing.assert_checkpoints():
        await queue.receive()


async def test_a_full_queue_holds_the_sender_until_the_app_takes_one() -> None:
    queue = AppQueue(1)
    sent: list[bytes] = []

    async def reader() -> None:  # the connection's reader: its sends wait for room
        for body in (b"a", b"b", b"c"):
            await queue.send(part(body))
            sent.append(body)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a"] and len(queue) == 1  # b waits
        assert (await queue.receive())["body"] == b"a"
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a", b"b"]
        assert [(await queue.receive())["body"] for _ in range(2)] == [b"b", b"c"]
    assert sent == [b"a", b"b", b"c"]


async def test_a_waiting_app_is_woken_by_the_next_message_and_can_be_cancelled() -> None:
    queue = AppQueue(2)
    got: list[Any] = []

    async def app() -> None:
        got.append(await queue.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        queue.send_nowait({"type": "http.disconnect"})
    assert got == [{"type": "http.disconnect"}]

    with trio.move_on_after(0.01) as scope:  # cancelled while parked: nothing is lost
        await queue.receive()
    assert scope.cancelled_caught
    queue.send_nowait(part(b"x"))
    assert await queue.receive() == part(b"x")


async def test_another_servers_receive_is_awaited_instead() -> None:
    async def receive() -> Any:
        return {"type": "http.disconnect"}

    assert receive_now(receive) is None


def test_a_queue_nobody_waited_on_is_a_fraction_of_a_memory_channel() -> None:
    def size(make: Any) -> float:
        tracemalloc.start()
        try:
            kept = [make() for _ in range(200)]
            total = sum(s.size for s in tracemalloc.take_snapshot().statistics("filename"))
        finally:
            tracemalloc.stop()
        assert len(kept) == 200
        return total / 200

    queue = size(lambda: AppQueue(10))
    channel = size(lambda: trio.open_memory_channel[Any](10))
    assert queue * 5 < channel, (queue, channel)


async def test_a_served_app_reads_its_body_from_an_app_queue() -> None:
    """Through the gateway's own server: the app's receive is an AppQueue's, and a body
    sent in pieces slower than the app reads arrives whole and in order."""
    from functools import partial

    from hypercorn.config import Config as HypercornConfig

    from gateway.connections import ConnectionTimers, serve_connections

    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(getattr(receive, "__self__", None))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        length = str(len(body)).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        await send({"type": "http.response.body", "body": body})

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve_connections,
                app,
                config,
                ConnectionTimers(keep_alive=5, header=5),
                shutdown_trigger=stop.wait,
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        parts = [b"a" * 10, b"b" * 20_000, b"c" * 5]
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in parts:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
            await trio.testing.wait_all_tasks_blocked()  # each piece read on its own
        await stream.send_all(b"0\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while not answer.endswith(b"c" * 5):
                answer += await stream.receive_some(65536)
        await stream.aclose()
        stop.set()
    assert answer.split(b"\r\n\r\n", 1)[1].endswith(b"".join(parts))
    assert [type(queue) for queue in seen] == [AppQueue]
