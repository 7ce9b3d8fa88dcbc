"""The signature: a heartbeat beside every stream, and bytes relayed exactly."""

from __future__ import annotations

import gc
import random

import httpx
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI, chat_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HEARTBEAT = b": keepalive\n\n"


def split_heartbeats(raw: bytes) -> tuple[bytes, int]:
    """The client's bytes minus heartbeat events, and how many there were. Fails if a
    heartbeat was not a whole event of its own (written inside an upstream event)."""
    upstream = bytearray()
    beats = 0
    for event in SSEFramer().feed(raw):
        if "keepalive" in event.comments:
            assert event.raw == HEARTBEAT, f"heartbeat inside an event: {event.raw!r}"
            beats += 1
        else:
            upstream += event.raw
    return bytes(upstream), beats


async def stream_with_read_timeout(url: str, script: dict, read_timeout: float) -> bytes:
    timeout = httpx.Timeout(10.0, read=read_timeout)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as r,
    ):
        return b"".join([chunk async for chunk in r.aiter_raw()])


async def test_keepalive_proof_silent_prefill(start_gateway, fake: FakeOpenAI) -> None:
    """A client with a 2 s read timeout survives a 10 s silent prefill with interval 1 s,
    and times out without keepalive. Both run at once on real sockets and a real clock."""
    on = await start_gateway(keepalive={"interval": 1})
    off = await start_gateway(keepalive={"interval": 0})
    script = {"prefill": 10, "tokens": 5}
    results: dict[str, object] = {}

    async def run(name: str, url: str) -> None:
        try:
            results[name] = await stream_with_read_timeout(url, script, 2.0)
        except httpx.ReadTimeout as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "on", on.url)
        nursery.start_soon(run, "off", off.url)

    assert isinstance(results["off"], httpx.ReadTimeout)
    raw = results["on"]
    assert isinstance(raw, bytes)
    upstream, beats = split_heartbeats(raw)
    assert upstream == b"".join(chat_events(5, model="upstream-m"))
    assert 8 <= beats <= 11  # one per second of silence
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_heartbeats_in_mid_stream_gap_and_upstream_comments_pass(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2, "comment": "keepalive"})
    raw = await stream_with_read_timeout(
        gw.url, {"tokens": 6, "gap_at": 3, "gap": 1.2, "comment_every": 2}, 0.6
    )
    upstream, beats = split_heartbeats(raw)
    assert beats >= 4
    assert upstream.count(b": upstream-ping\n\n") == 5  # upstream comments relayed as-is
    assert upstream.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("comment,expected", [("", b":\n\n"), ("ping", b": ping\n\n")])
async def test_heartbeat_bytes_follow_policy(start_gateway, comment, expected) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2, "comment": comment})
    raw = await stream_with_read_timeout(gw.url, {"prefill": 0.5, "tokens": 1}, 5)
    assert raw.startswith(expected * 2)


async def test_early_headers_off_waits_for_upstream_headers(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1, "early_headers": False})
    async with gw.client() as client:
        t0 = trio.current_time()
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "fake": {"headers_delay": 0.5}}
        ) as resp:
            headers_after = trio.current_time() - t0
            raw = await resp.aread()
    assert headers_after >= 0.5
    assert split_heartbeats(raw)[0].endswith(b"data: [DONE]\n\n")


async def test_early_headers_on_commits_at_once(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2})
    async with gw.client() as client:
        t0 = trio.current_time()
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "fake": {"headers_delay": 1.0}}
        ) as resp:
            headers_after = trio.current_time() - t0
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            raw = await resp.aread()
    assert headers_after < 0.5
    assert split_heartbeats(raw)[1] >= 3


def random_script(rng: random.Random, index: int) -> tuple[dict, bytes]:
    """Chat events with random line endings, cut at random points, paced at random."""
    events = chat_events(rng.randint(1, 30), model="upstream-m", text=f"s{index}-")
    if rng.random() < 0.3:
        events = [e.replace(b"\n", b"\r\n") for e in events]
    events.insert(rng.randint(0, len(events) - 1), b": upstream comment\n\n")
    body = b"".join(events)
    cuts = sorted(rng.sample(range(1, len(body)), k=min(len(body) - 1, rng.randint(1, 25))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    paces = [rng.choice([0, 0, 0.001, 0.01, 0.03]) for _ in pieces]
    script = {"chunks": [p.decode("latin-1") for p in pieces], "paces": paces}
    return script, body


async def test_byte_exact_relay_200_concurrent_streams(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.02})
    rng = random.Random(20261125)
    scripts = [random_script(rng, i) for i in range(200)]
    received: dict[int, bytes] = {}
    limits = httpx.Limits(max_connections=200)

    async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            script, _ = scripts[i]
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": script}
            ) as resp:
                assert resp.status_code == 200
                received[i] = b"".join([c async for c in resp.aiter_raw()])

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)

    total_beats = 0
    for i, (_, sent) in enumerate(scripts):
        upstream, beats = split_heartbeats(received[i])
        assert upstream == sent, f"stream {i} differs"
        total_beats += beats
    assert total_beats > 0  # heartbeats really were interleaved with the data


async def test_stream_longer_than_150_s(start_gateway, mock_clock: MockClock) -> None:
    """No framework timeout (Quart's 60 s RESPONSE_TIMEOUT, hypercorn's) cuts a long stream.
    The clock runs 40x faster than real time, so every trio timer in hypercorn, Quart and
    the gateway sees 160 s pass; sockets are real."""
    mock_clock.rate = 40
    gw = await start_gateway(keepalive={"interval": 5})
    t0 = trio.current_time()
    raw = await stream_with_read_timeout(gw.url, {"tokens": 80, "pace": 2}, 30)
    elapsed = trio.current_time() - t0
    upstream, _ = split_heartbeats(raw)
    assert elapsed > 150
    assert upstream == b"".join(chat_events(80, model="upstream-m"))
    assert upstream.endswith(b"data: [DONE]\n\n")


async def test_stream_ends_at_done_while_the_upstream_holds_on(
    start_gateway, fake: FakeOpenAI
) -> None:
    """``[DONE]`` ends the client's response, with no heartbeat after it, even while the
    upstream keeps its connection open without ending its body; the gateway then closes
    that connection (it cannot go back to the pool half-read)."""
    gw = await start_gateway(keepalive={"interval": 0.05})
    script = {"tokens": 3, "pace": 0.15, "fault": "hold_after_done"}
    raw = b""
    with trio.fail_after(5):  # before the fix: heartbeats for as long as the upstream holds on
        async with (
            gw.client() as client,
            client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as r,
        ):
            async for chunk in r.aiter_raw():
                raw += chunk
        ended_at = trio.current_time()
    upstream, beats = split_heartbeats(raw)
    assert beats > 0  # heartbeats were on, between the paced events
    assert upstream == b"".join(chat_events(3, model="upstream-m"))
    assert raw.endswith(b"data: [DONE]\n\n")  # nothing after it
    connection = fake.connections[-1]
    with trio.fail_after(3):
        await connection.closed_event.wait()
    assert connection.closed_at is not None
    # The client's end did not wait for the upstream's.
    assert ended_at <= connection.closed_at
    backend = gw.gateway.upstreams["fake"].backend
    assert backend.pool_connections() == (0, 0)  # type: ignore[attr-defined]


async def test_stream_that_ends_after_done_returns_its_connection(
    start_gateway, fake: FakeOpenAI
) -> None:
    """The usual upstream ends its body right after ``[DONE]``: the gateway reads that end,
    so the connection goes back to the pool and carries the next request."""
    gw = await start_gateway(keepalive={"interval": 0.05})
    async with gw.client() as client:
        for _ in range(3):
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": {"tokens": 2}}
            ) as r:
                assert (await r.aread()).endswith(b"data: [DONE]\n\n")
            with trio.fail_after(2):  # the relay is over once it read the upstream's end
                await gw.gateway.inflight.wait_empty()
    assert [len(c.requests) for c in fake.connections] == [3]
    backend = gw.gateway.upstreams["fake"].backend
    assert backend.pool_connections() == (1, 1)  # type: ignore[attr-defined]


async def test_a_stream_in_a_silent_prefill_holds_no_socket_error(start_gateway) -> None:
    """The client's socket and the upstream's, both found empty by a read that raised
    ``BlockingIOError``, are waited on outside that ``except`` clause: a wait inside it
    would hold the error and its traceback (with their frames) for the whole prefill,
    ≈ 1 KiB more for every idle stream."""
    gw = await start_gateway(keepalive={"interval": 30})
    script = {"prefill": 60, "tokens": 1}
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as r,
    ):
        assert r.status_code == 200  # the upstream's headers are relayed; its body waits
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        held = [o for o in gc.get_objects() if isinstance(o, BlockingIOError)]
        assert held == []
