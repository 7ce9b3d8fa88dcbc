"""Routing across several real upstreams: failover, ejection, queues, least-busy."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import trio

from gateway.abc import BackendStatus
from gateway.config import build_config
from gateway.service import Gateway
from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI, chat_events
from gateway.testing.waiting import wait_until
from tests.conftest import serve_config

CHAT = {"model": "pool", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve_pool(
    nursery: trio.Nursery,
    urls: dict[str, str],
    route: dict[str, Any],
    backend_extra: dict[str, Any] | None = None,
) -> tuple[str, Gateway]:
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {
                name: {"type": "openai", "url": url, **(backend_extra or {})}
                for name, url in urls.items()
            },
            "routes": {"pool": {"targets": [{"backend": n} for n in urls], **route}},
        },
        environ={},
    )

    served = await serve_config(nursery, config)
    return served.url, served.gateway


async def start_fake(nursery: trio.Nursery, port: int = 0) -> tuple[FakeOpenAI, trio.CancelScope]:
    fake = FakeOpenAI()
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await fake.serve(port, task_status=task_status)

    await nursery.start(run)
    return fake, scope


async def test_failover_before_first_data_event(nursery: trio.Nursery) -> None:
    """Refused connection, then a 503, then a working upstream: one clean stream, after
    heartbeats, with the attempts header naming both failures."""
    busy, _ = await start_fake(nursery)
    good, _ = await start_fake(nursery)
    url, _ = await serve_pool(
        nursery,
        {"refusing": f"http://127.0.0.1:{closed_port()}/v1", "busy": busy.url, "good": good.url},
        {"strategy": "priority", "keepalive": {"interval": 0.2}},
    )
    # Every fake answers per the script in the body: the busy one fails, the good one
    # prefills silently for a second. One script serves both: status only on `busy`.
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                **CHAT,
                "fake": {"status_on_port": {str(busy.port): 503}, "prefill": 1.0, "tokens": 5},
            },
        ) as resp,
    ):
        raw = await resp.aread()
    assert resp.status_code == 200
    assert resp.headers["x-gateway-attempts"] == (
        "refusing=502:upstream_connect_error, busy=503:fake_error, good=ok"
    )
    events = SSEFramer().feed(raw)
    assert sum(1 for e in events if e.comments == ("keepalive",)) >= 3
    upstream = b"".join(e.raw for e in events if e.comments != ("keepalive",))
    assert upstream == b"".join(chat_events(5, model="pool"))
    assert len(busy.requests) == 1 and len(good.requests) == 1


async def test_failover_after_headers_and_heartbeats(nursery: trio.Nursery) -> None:
    slow_fail, _ = await start_fake(nursery)
    good, _ = await start_fake(nursery)
    url, _ = await serve_pool(
        nursery, {"slow": slow_fail.url, "good": good.url}, {"keepalive": {"interval": 0.1}}
    )
    script = {"status_on_port": {str(slow_fail.port): 500}, "headers_delay": 0.5, "tokens": 3}
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as r,
    ):
        raw = await r.aread()
    assert r.status_code == 200
    assert "x-gateway-attempts" not in r.headers  # committed by a heartbeat, before any outcome
    events = [e for e in SSEFramer().feed(raw) if e.comments != ("keepalive",)]
    assert b"".join(e.raw for e in events) == b"".join(chat_events(3, model="pool"))


async def test_no_retry_after_first_data_event(nursery: trio.Nursery) -> None:
    broken, _ = await start_fake(nursery)
    spare, _ = await start_fake(nursery)
    url, _ = await serve_pool(nursery, {"broken": broken.url, "spare": spare.url}, {})
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "fake": {"tokens": 6, "pace": 0.01, "fault": "reset_mid_stream"}},
        ) as r,
    ):
        raw = await r.aread()
    data = [e.data for e in SSEFramer().feed(raw) if e.is_data]
    assert "[DONE]" not in data
    assert "error" in json.loads(data[-1])
    assert len(spare.requests) == 0  # never retried: tokens would have been duplicated


async def test_a_half_open_trial_whose_client_leaves_does_not_jam_the_breaker(
    nursery: trio.Nursery,
) -> None:
    """The trial request's client hangs up: the backend must not stay ejected for good (it
    did: neither success nor failure was recorded, and every request got a 503)."""
    fake, scope = await start_fake(nursery)
    port = fake.port
    url, gw = await serve_pool(
        nursery,
        {"only": fake.url},
        {"keepalive": {"interval": 0}},
        {"ejection": {"failures": 1, "cooldown": 0.2}},
    )
    breaker = gw.upstreams["only"].breaker
    scope.cancel()  # down: the next request ejects it
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 502
        assert breaker.state(trio.current_time()) == "open"
        back, _ = await start_fake(nursery, port)
        await wait_until(lambda: breaker.state(trio.current_time()) == "half_open")

        # The trial: its client leaves during a long prefill.
        body = {**CHAT, "stream": False, "fake": {"prefill": 30}}
        with trio.move_on_after(5) as left:
            async with trio.open_nursery() as trial:
                trial.start_soon(partial(client.post, "/v1/chat/completions", json=body))
                await wait_until(lambda: len(back.requests) == 1)
                trial.cancel_scope.cancel()
        assert not left.cancelled_caught
        await wait_until(lambda: not gw.inflight)
        assert breaker.state(trio.current_time()) == "half_open"  # the next one is the trial
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 200
        assert breaker.state(trio.current_time()) == "closed"


async def test_a_busy_answer_to_the_trial_does_not_jam_the_breaker(nursery: trio.Nursery) -> None:
    fake, scope = await start_fake(nursery)
    port = fake.port
    url, gw = await serve_pool(
        nursery,
        {"only": fake.url},
        {"keepalive": {"interval": 0}},
        {"ejection": {"failures": 1, "cooldown": 0.2}},
    )
    breaker = gw.upstreams["only"].breaker
    scope.cancel()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (
            await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        ).status_code == 502
        await start_fake(nursery, port)
        await wait_until(lambda: breaker.state(trio.current_time()) == "half_open")
        busy = {**CHAT, "stream": False, "fake": {"status": 429}}
        r = await client.post("/v1/chat/completions", json=busy)
        assert r.status_code == 429  # the upstream's own answer, and no verdict on it
        assert breaker.state(trio.current_time()) == "half_open"
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 200 and breaker.state(trio.current_time()) == "closed"


async def test_ejection_and_recovery(nursery: trio.Nursery) -> None:
    flaky, flaky_scope = await start_fake(nursery)
    steady, _ = await start_fake(nursery)
    port = flaky.port
    url, gw = await serve_pool(
        nursery,
        {"flaky": flaky.url, "steady": steady.url},
        {"strategy": "priority", "keepalive": {"interval": 0}},
        {"ejection": {"failures": 2, "cooldown": 0.5}},
    )
    flaky_scope.cancel()  # killed: its port now refuses connections
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def attempts() -> str:
            r = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
            assert r.status_code == 200
            return r.headers["x-gateway-attempts"]

        assert (await attempts()).startswith("flaky=502")
        assert (await attempts()).startswith("flaky=502")  # second failure: ejected now
        assert gw.upstreams["flaky"].breaker.state(trio.current_time()) == "open"
        assert await attempts() == "steady=ok"  # out of rotation, not even tried
        ready = await client.get("/readyz")
        assert ready.status_code == 200  # the route still has a ready target

        restarted, _ = await start_fake(nursery, port)  # back on the same port
        breaker = gw.upstreams["flaky"].breaker
        await wait_until(
            lambda: breaker.state(trio.current_time()) != "open", within=5
        )  # the 0.5 s cool-down runs out
        assert await attempts() == "flaky=ok"  # the half-open trial succeeds
        assert await attempts() == "flaky=ok"  # and it is back in rotation
    assert len(restarted.requests) == 2


async def test_queue_limits_concurrency_in_fifo_order(nursery: trio.Nursery) -> None:
    # One slot: request k+1 is granted only once k has finished upstream, so the order the
    # upstream sees is exactly the order the queue granted slots in (with two slots, two
    # grants a few microseconds apart race each other to the upstream).
    fake, _ = await start_fake(nursery)
    url, gw = await serve_pool(
        nursery,
        {"only": fake.url},
        {"keepalive": {"interval": 0.1}},
        {"admission": {"max_concurrency": 1, "max_queue": 9}},
    )
    slots = gw.upstreams["only"].slots
    results: dict[int, tuple[int, int]] = {}

    async def one(i: int, client: httpx.AsyncClient) -> None:
        body = {**CHAT, "fake": {"prefill": 0.15, "tokens": 2, "tag": i}}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = await r.aread()
        events = SSEFramer().feed(raw)
        beats = sum(1 for e in events if e.comments == ("keepalive",))
        assert raw.endswith(b"data: [DONE]\n\n")
        results[i] = (r.status_code, beats)

    def arrived() -> int:
        """Requests waiting in the gateway's queue or already at the upstream: never one
        counted twice, and none lost once served (on a slow machine the first requests
        can finish before the last are sent; in_flight + queued then stays short)."""
        upstream = sum(1 for r in fake.requests if "tag" in r.body.get("fake", {}))
        return slots.queued + upstream

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
        async with trio.open_nursery() as inner:
            for i in range(10):
                inner.start_soon(one, i, client)
                # Arrival order is the test's: request i reaches the upstream or waits in
                # the queue before request i + 1 is sent.
                await wait_until(lambda n=i + 1: arrived() >= n)
        overflow = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    arrivals = sorted(fake.requests, key=lambda r: r.received_at)
    order = [r.body["fake"]["tag"] for r in arrivals if "tag" in r.body.get("fake", {})]
    assert fake.max_active == 1
    assert order == list(range(10))  # served in arrival order
    assert all(status == 200 for status, _ in results.values())
    assert all(beats >= 1 for i, (_, beats) in results.items() if i >= 1)  # waiting ones heard
    assert overflow.status_code == 200  # the queue had drained by then


async def test_queue_overflow_and_disconnected_waiters(nursery: trio.Nursery) -> None:
    fake, _ = await start_fake(nursery)
    url, gw = await serve_pool(
        nursery,
        {"only": fake.url},
        {"keepalive": {"interval": 0.1, "early_headers": False}},
        {"admission": {"max_concurrency": 1, "max_queue": 1}},
    )
    upstream = gw.upstreams["only"]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with trio.open_nursery() as inner:
            inner.start_soon(
                partial(
                    client.post,
                    "/v1/chat/completions",
                    json={**CHAT, "stream": False, "fake": {"prefill": 1.0}},
                )
            )
            await wait_until(lambda: upstream.slots.in_flight >= 1, within=5)

            # A waiter that hangs up leaves the queue and never reaches the upstream.
            with trio.move_on_after(0.3):
                await client.post(
                    "/v1/chat/completions", json={**CHAT, "stream": False, "fake": {"tag": "gone"}}
                )
            await wait_until(lambda: not upstream.slots.queued, within=2)

            # One waiter fills the queue; the next is refused at once.
            inner.start_soon(
                partial(client.post, "/v1/chat/completions", json={**CHAT, "stream": False})
            )
            await wait_until(lambda: upstream.slots.queued >= 1, within=5)
            refused = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert not any(r.body.get("fake", {}).get("tag") == "gone" for r in fake.requests)
    assert len(fake.requests) == 2


async def test_least_busy_spreads_by_reported_load(nursery: trio.Nursery) -> None:
    a, _ = await start_fake(nursery)
    b, _ = await start_fake(nursery)
    url, gw = await serve_pool(
        nursery,
        {"a": a.url, "b": b.url},
        {"strategy": "least_busy", "keepalive": {"interval": 0}},
    )
    # What the backends' load polling would publish: a already runs 30 requests.
    gw.upstreams["a"].backend.status = BackendStatus(health="ready", running=30)
    gw.upstreams["b"].backend.status = BackendStatus(health="ready", running=0)
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async with trio.open_nursery() as inner:
            # Prefills outlast the test: every request is still running when the last one
            # is placed, however slowly a loaded machine sends them.
            for _ in range(100):
                inner.start_soon(
                    partial(
                        client.post,
                        "/v1/chat/completions",
                        json={**CHAT, "stream": False, "fake": {"prefill": 60}},
                    )
                )
            await wait_until(lambda: len(a.requests) + len(b.requests) >= 100, within=30)
            inner.cancel_scope.cancel()
    # b takes the first 30 alone, then both share: 35 / 65 expected (round-robin: 50 / 50).
    assert len(a.requests) + len(b.requests) == 100
    assert 30 <= len(a.requests) <= 40
    assert 60 <= len(b.requests) <= 70


async def test_all_targets_down_is_503(nursery: trio.Nursery) -> None:
    fake, _ = await start_fake(nursery)
    url, gw = await serve_pool(nursery, {"only": fake.url}, {})
    gw.upstreams["only"].backend.status = BackendStatus(health="loading", detail="loading model")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        ready = await client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "no_backend_available"
    assert resp.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert fake.requests == []
