"""A client that goes away closes the upstream request, in every phase, and leaks nothing."""

from __future__ import annotations

from contextlib import aclosing

import httpx
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.conftest import RunningGateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
MESSAGES = {**CHAT, "max_tokens": 5000}
NATIVE = {"native_endpoints": ["chat/completions", "messages"]}
RESPONSES = {"model": "m", "input": "hi", "stream": True}
# (path, body, backend table): chat; Messages to a backend that speaks it; Messages to a
# chat-only backend (translated).
DIALECTS = {
    "chat": ("/v1/chat/completions", CHAT, {}),
    "messages-native": ("/v1/messages", MESSAGES, NATIVE),
    "messages-translated": ("/v1/messages", MESSAGES, {}),
    "responses-native": ("/v1/responses", RESPONSES, {"native_endpoints": ["responses"]}),
    "responses-translated": ("/v1/responses", RESPONSES, {}),
}


async def hang_up_and_see_the_upstream_closed(
    client: httpx.AsyncClient, fake: FakeOpenAI, gw: RunningGateway, label: str
) -> None:
    """Close ``client``'s socket; the last upstream connection must close within 100 ms
    of it and the gateway end the request."""
    await client.aclose()
    hung_up_at = trio.current_time()
    upstream = fake.connections[-1]
    with trio.fail_after(2):
        await upstream.closed_event.wait()
    assert upstream.closed_at is not None
    assert upstream.closed_at - hung_up_at < 0.1, f"{label}: {upstream.closed_at - hung_up_at:.3f}s"
    with trio.fail_after(2):
        await gw.gateway.inflight.wait_empty()


async def wait_for_request(fake: FakeOpenAI, n: int) -> None:
    await wait_until(lambda: len(fake.requests) >= n, within=5)


@pytest.mark.parametrize(
    "phase,script,early_headers",
    [
        ("awaiting-headers", {"headers_delay": 30}, True),
        ("awaiting-headers-no-early", {"headers_delay": 30}, False),
        ("prefill", {"prefill": 30}, True),
        ("streaming", {"tokens": 1000, "pace": 0.01}, True),
    ],
)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_disconnect_closes_upstream_within_100ms(
    start_gateway, fake: FakeOpenAI, phase: str, script: dict, early_headers: bool, dialect: str
) -> None:
    path, body, backend = DIALECTS[dialect]
    gw = await start_gateway(
        keepalive={"interval": 0.05, "early_headers": early_headers}, backend=backend
    )
    client = httpx.AsyncClient(base_url=gw.url, timeout=30)

    async def hang_up_after(delay: float, cancel_scope: trio.CancelScope) -> None:
        await trio.sleep(delay)
        cancel_scope.cancel()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_up_after, 0.3, nursery.cancel_scope)
            async with client.stream("POST", path, json={**body, "fake": script}) as resp:
                async for _ in resp.aiter_raw():
                    pass
    assert not scope.cancelled_caught
    await hang_up_and_see_the_upstream_closed(client, fake, gw, phase)


async def test_pool_returns_to_baseline_after_1000_cancelled_requests(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(keepalive={"interval": 0.01})
    backend = gw.gateway.backends["fake"]
    async with gw.client() as client:
        warm = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert warm.status_code == 200
    baseline_open, baseline_idle = backend.pool_connections()
    assert baseline_open == baseline_idle == 1

    phases = [{"headers_delay": 10}, {"prefill": 10}, {"tokens": 500, "pace": 0.001}]

    async def cycles(worker: int) -> None:
        for i in range(worker, 1000, 25):
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                async with client.stream(
                    "POST", "/v1/chat/completions", json={**CHAT, "fake": phases[i % 3]}
                ) as resp:
                    async with aclosing(resp.aiter_raw()) as chunks:
                        await chunks.__anext__()  # headers + first bytes, then hang up

    async with trio.open_nursery() as nursery:  # 25 clients at a time, 1,000 in all
        for worker in range(25):
            nursery.start_soon(cycles, worker)
    with trio.fail_after(5):
        await gw.gateway.inflight.wait_empty()
    # The fake sees a close a moment after the pool made it: wait until they agree.
    await wait_until(
        lambda: fake.open_connections == backend.pool_connections()[0] <= baseline_open,
        within=5,
    )

    open_, idle = backend.pool_connections()
    assert open_ == idle <= baseline_open  # nothing in use, nothing leaked
    assert fake.open_connections == open_
    # Some clients hung up on the first heartbeat, before the request even left the gateway.
    assert 1 < len(fake.requests) <= 1001
    async with gw.client() as client:  # and the pool still works
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert resp.status_code == 200


@pytest.mark.parametrize("script", [{"headers_delay": 30}, {"prefill": 30}])
async def test_disconnect_without_heartbeats_closes_a_whole_answers_upstream(
    start_gateway, fake: FakeOpenAI, script: dict
) -> None:
    """No heartbeats (interval 0) and a whole answer: the relay runs with no task beside
    it, and the client leaving still closes the upstream at once — told by the server
    (:class:`gateway.http_stream.Disconnect`), not by a task waiting in ``receive()``."""
    gw = await start_gateway(keepalive={"interval": 0})
    client = httpx.AsyncClient(base_url=gw.url, timeout=30)
    with trio.move_on_after(0.3):
        await client.post("/v1/chat/completions", json={**CHAT, "stream": False, "fake": script})
        raise AssertionError("answered while the upstream was still silent")
    await hang_up_and_see_the_upstream_closed(client, fake, gw, str(script))
