"""Slow HTTP/1.1 clients on a served gateway (issue 17 item 4), with raw sockets: the
timing and the end of the connection are what is under test.

- A request body that stalls or trickles gets a 408 and the connection closes; a head that
  trickles is cut after ``header_timeout``, while an idle keep-alive connection waits its
  own, longer ``keep_alive_timeout``.
- Slow bodies are answered, and their sockets and fds released.

Timeouts are configured in fractions of a second, so nothing waits real tens of seconds.
"""

from __future__ import annotations

import json

import trio

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.e2e.raw_http import (
    CHAT,
    CHAT_BODY,
    chat_request,
    closed_by_server,
    connect,
    linux_only,
    open_fds,
    read_answer,
    server_sockets,
)

# -- 4. slow request bodies and heads ------------------------------------------------------


async def test_silent_body_gets_408_and_the_connection_closes(
    start_gateway, fake: FakeOpenAI, caplog
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 30})
    stream = await connect(gw)
    async with stream:
        head = chat_request(body=b"")
        await stream.send_all(head.replace(b"content-length: 0", b"content-length: 100000"))
        await stream.send_all(b'{"model": "m"')  # a few bytes, then nothing
        start = trio.current_time()
        buffered = bytearray()
        answer = await read_answer(stream, buffered)
        waited = trio.current_time() - start
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        assert answer.error()["code"] == "request_timeout"
        assert buffered + await closed_by_server(stream, within=2) == b""
    assert 0.4 <= waited < 3
    assert fake.requests == []
    # One request, one line: the guard's 408 (it was followed by a 499 "client_gone").
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["status"], line["outcome"]) for line in lines] == [(408, "rejected")]


async def test_trickling_body_gets_408_at_the_total_timeout(start_gateway) -> None:
    """One byte every 0.1 s never trips the 0.5 s idle timer; the 1.5 s total does."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 1.5})
    stream = await connect(gw)
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(chat_request(body=b"").replace(b"length: 0", b"length: 100000"))
        start = trio.current_time()
        nursery.start_soon(trickle_bytes, stream, 0.1)
        answer = await read_answer(stream)
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert answer.status == 408 and answer.error()["code"] == "request_timeout"
    assert 1.4 <= waited < 4


async def test_body_in_slow_pieces_within_the_timeouts_is_served(
    start_gateway, fake: FakeOpenAI
) -> None:
    """Each piece restarts the idle timer: four 0.25 s gaps pass a 0.5 s idle timeout."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 10})
    stream = await connect(gw)
    async with stream:
        request = chat_request()
        split = len(request) - len(CHAT_BODY)
        await stream.send_all(request[:split])
        for i in range(0, len(CHAT_BODY), len(CHAT_BODY) // 4 + 1):
            await trio.sleep(0.25)  # the client's pace
            await stream.send_all(CHAT_BODY[i : i + len(CHAT_BODY) // 4 + 1])
        answer = await read_answer(stream)
    assert answer.status == 200, answer.body
    assert len(fake.requests) == 1


async def test_body_timeouts_never_cut_a_long_answer(start_gateway) -> None:
    """The timers run only while the body is awaited: a 1.5 s stream outlives a 0.5 s
    total body timeout."""
    gw = await start_gateway(server={"body_idle_timeout": 0.3, "body_timeout": 0.5})
    body = {**CHAT, "stream": True, "fake": {"tokens": 6, "pace": 0.25}}
    async with gw.client() as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = await resp.aread()
    assert resp.status_code == 200
    assert raw.endswith(b"data: [DONE]\n\n")


@linux_only
async def test_slow_bodies_are_answered_and_released(start_gateway, fake: FakeOpenAI) -> None:
    """20 connections promising 100,000 bytes and sending a few (issue 17's slowloris):
    every one gets its 408, and the gateway's sockets and fds return to their baseline."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 1})
    port = int(gw.url.rsplit(":", 1)[1])
    fds_before = open_fds()
    answers: list[int] = []

    async def slow_client(trickle: bool) -> None:
        stream = await connect(gw)
        async with stream:
            head = chat_request(body=b"").replace(b"length: 0", b"length: 100000")
            await stream.send_all(head + b"{")
            async with trio.open_nursery() as nursery:
                if trickle:
                    nursery.start_soon(trickle_bytes, stream, 0.2)
                answers.append((await read_answer(stream)).status)
                await closed_by_server(stream, within=2)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(slow_client, i % 2 == 0)
    assert answers == [408] * 20
    assert fake.requests == []
    await wait_until(lambda: server_sockets(port) == 0, within=2)
    await wait_until(lambda: open_fds() <= fds_before, within=2)


async def trickle_bytes(stream: trio.SocketStream, pace: float) -> None:
    """Send a space every ``pace`` seconds (the attacker's pace) until the server closes."""
    try:
        while True:
            await stream.send_all(b" ")
            await trio.sleep(pace)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_silent_new_connection_is_closed_after_the_header_timeout(start_gateway) -> None:
    gw = await start_gateway(server={"header_timeout": 0.5, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream:
        start = trio.current_time()
        assert await closed_by_server(stream, within=3) == b""
        assert trio.current_time() - start >= 0.4


async def test_trickling_head_is_cut_after_the_header_timeout(start_gateway) -> None:
    """A head sent a byte at a time is cut ``header_timeout`` after its first byte, even on
    a connection whose keep-alive time is far longer."""
    gw = await start_gateway(server={"header_timeout": 0.5, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream, trio.open_nursery() as nursery:
        start = trio.current_time()

        async def trickle() -> None:
            try:
                for byte in chat_request():
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)  # the attacker's pace
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(trickle)
        assert await closed_by_server(stream, within=3) == b""
        nursery.cancel_scope.cancel()
    assert 0.4 <= trio.current_time() - start < 3


async def test_idle_keep_alive_outlives_the_header_timeout(start_gateway) -> None:
    """Between requests the connection waits ``keep_alive_timeout``, not the (shorter)
    head timeout; once the next head starts, that head has ``header_timeout``."""
    gw = await start_gateway(server={"header_timeout": 0.3, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert (await read_answer(stream)).status == 200
        await trio.sleep(0.8)  # idle for longer than a head may take
        await stream.send_all(chat_request())
        assert (await read_answer(stream)).status == 200
        await stream.send_all(b"GET /healthz HTTP/1.1\r\n")  # a head that stops halfway
        start = trio.current_time()
        assert await closed_by_server(stream, within=3) == b""
    assert 0.2 <= trio.current_time() - start < 3
