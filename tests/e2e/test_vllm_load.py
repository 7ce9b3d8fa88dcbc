"""The ``vllm`` backend through the real gateway (:mod:`.vllm_gateway`), under load and over
time: load signals reach the status and ``least_busy``, a metrics outage and a dead engine,
a silent prefill and the heartbeat, and a client disconnect that aborts the request at
vLLM in each phase."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from backends.vllm import ServedModel
from gateway.config import build_config
from tests.fakes.vllm import FakeVLLM

from .vllm_gateway import (
    HEARTBEAT,
    KEY,
    MESSAGES,
    POLL,
    StartGateway,
    fake,  # noqa: F401  (fixture)
    serve_gateway,
    split_heartbeats,
    start_gateway,  # noqa: F401  (fixture)
    wait_status,
)

# -- (3) load and health -----------------------------------------------------------------


async def test_load_signals_reach_status_within_one_poll(
    start_gateway: StartGateway, fake: FakeVLLM
) -> None:
    """Three streams on a vLLM with two batch slots: 2 running, 1 waiting, with the KV-cache
    usage it reports, show in the backend's status within one polling interval; when the
    clients leave, vLLM's numbers (and the status) fall back to zero."""
    gw = await start_gateway()
    backend = gw.backend
    assert backend.status.health == "ready" and backend.status.running == 0
    assert backend.served_models == (ServedModel("fake-model", 2048),)
    fake.max_num_seqs, fake.prefill, fake.kv_cache_usage = 2, 60, 0.37

    async def stream() -> None:
        async with gw.client() as client:
            body = {"model": "chat", "messages": MESSAGES, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                await r.aread()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(stream)
        await fake.wait_until(lambda: fake.running() == 2 and fake.waiting() == 1)
        reached = trio.current_time()
        status = await wait_status(backend, lambda s: s.running == 2)
        assert trio.current_time() - reached <= POLL + 0.5
        assert (status.health, status.queued, status.cache_usage) == ("ready", 1, 0.37)
        nursery.cancel_scope.cancel()
    await fake.wait_until(lambda: fake.running() == 0 and fake.waiting() == 0)
    fake.kv_cache_usage = None
    status = await wait_status(backend, lambda s: s.running == 0)
    assert (status.queued, status.cache_usage) == (0, 0.0)


async def test_least_busy_avoids_the_vllm_with_a_queue(nursery: trio.Nursery) -> None:
    """vLLM's own counts steer the gateway: with ``least_busy``, requests go to the server
    whose ``/metrics`` shows a queue, although the gateway itself has sent nothing to it:
    the load on ``a`` comes from other clients. (The llama.cpp backend fills the same
    ``running``/``queued`` fields.)"""
    a, b = FakeVLLM(max_num_seqs=1, prefill=60), FakeVLLM()
    for server in (a, b):
        await nursery.start(server.serve)
    common = {"type": "vllm", "poll_interval": POLL}
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"a": {**common, "url": a.url}, "b": {**common, "url": b.url}},
            "routes": {
                "pool": {
                    "targets": [
                        {"backend": "a", "model": "fake-model"},
                        {"backend": "b", "model": "fake-model"},
                    ],
                    "strategy": "least_busy",
                }
            },
        },
        environ={},
    )
    gw = await serve_gateway(nursery, config)
    async with (
        httpx.AsyncClient(base_url=a.url + "/v1", timeout=None) as other,
        trio.open_nursery() as others,
    ):
        for _ in range(3):
            others.start_soon(partial(other.post, "/completions", json={"prompt": "x"}))
        await a.wait_until(lambda: (a.running(), a.waiting()) == (1, 2))
        await wait_status(gw.vllm("a"), lambda s: (s.running, s.queued) == (1, 2))
        async with gw.client() as client:
            for _ in range(4):
                r = await client.post("/v1/completions", json={"model": "pool", "prompt": "y"})
                assert r.status_code == 200
        others.cancel_scope.cancel()
    assert len(b.generation_requests()) == 4 and len(a.generation_requests()) == 3


@pytest.mark.parametrize("fault", ["hang", "error"])
async def test_metrics_outage_does_not_break_requests(
    start_gateway: StartGateway, fake: FakeVLLM, fault: Any
) -> None:
    """A vLLM whose ``/metrics`` hangs or fails stays ready with its load unknown, and
    requests keep working; the numbers come back with ``/metrics``."""
    gw = await start_gateway()
    fake.metrics_fault = fault
    status = await wait_status(gw.backend, lambda s: "load unknown" in s.detail)
    assert (status.health, status.running, status.queued, status.cache_usage) == (
        "ready",
        None,
        None,
        None,
    )
    async with gw.client() as client:
        r = await client.post("/v1/chat/completions", json={"model": "chat", "messages": MESSAGES})
        assert r.status_code == 200
        r = await client.post(
            "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES, "stream": True}
        )
        assert split_heartbeats(r.content)[0].endswith(b"data: [DONE]\n\n")
        assert (await client.get("/readyz")).status_code == 200
    fake.metrics_fault = None
    await wait_status(gw.backend, lambda s: s.running == 0)


async def test_dead_engine_fails_readiness_until_it_recovers(
    start_gateway: StartGateway, fake: FakeVLLM
) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["backends"]["vllm"] == {
            "health": "ready",
            "detail": "serving fake-model (max_model_len 2048)",
        }
        fake.engine_dead = True
        status = await wait_status(gw.backend, lambda s: s.health == "down")
        assert "503" in status.detail
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["backends"]["vllm"]["health"] == "down"
        assert r.json()["routes"]["chat"] is False
        fake.engine_dead = False
        await wait_status(gw.backend, lambda s: s.health == "ready")
        assert (await client.get("/readyz")).status_code == 200


# -- (4) keepalive -----------------------------------------------------------------------


async def test_silent_prefill_survives_with_keepalive_and_not_without(
    start_gateway: StartGateway, fake: FakeVLLM, mock_clock: MockClock
) -> None:
    """vLLM answers a stream's headers at once and then sends nothing for a 20 s prefill.
    A client with a 3 s read timeout survives through route ``chat`` (heartbeats every
    0.5 s) and times out through ``chat-quiet``. Sockets are real; the clock runs 5x, so
    every trio timer (httpx's read timeout included) sees 20 s pass."""
    mock_clock.rate = 5
    gw = await start_gateway({"poll_interval": 5})
    fake.prefill = 20
    results: dict[str, bytes | Exception] = {}

    async def run(route: str) -> None:
        timeout = httpx.Timeout(30.0, read=3.0)
        async with gw.client(timeout=timeout) as client:
            body = {"model": route, "messages": MESSAGES, "stream": True}
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    results[route] = b"".join([c async for c in r.aiter_raw()])
            except httpx.ReadTimeout as exc:
                results[route] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "chat")
        nursery.start_soon(run, "chat-quiet")

    assert isinstance(results["chat-quiet"], httpx.ReadTimeout)
    raw = results["chat"]
    assert isinstance(raw, bytes)
    upstream, beats = split_heartbeats(raw)
    assert beats >= 30  # 20 s of silence at one per 0.5 s
    ok = next(r for r in fake.generation_requests() if r.finished_at is not None)
    assert upstream == ok.sent and upstream.endswith(b"data: [DONE]\n\n")
    # The fake behaved as vLLM does: headers at once, the first byte only after the prefill.
    assert ok.headers_at is not None and ok.first_token_at is not None
    assert ok.headers_at - ok.received_at < 1 and ok.first_token_at - ok.headers_at >= 20
    quiet = next(r for r in fake.generation_requests() if r is not ok)
    assert quiet.aborted_at is not None  # the timed-out client's request left vLLM's batch


# -- (5) cancellation --------------------------------------------------------------------


async def hold_slot(client: httpx.AsyncClient, task_status: trio.TaskStatus[None]) -> None:
    async with (
        client,
        client.stream(
            "POST", "/chat/completions", json={"messages": MESSAGES, "stream": True}
        ) as r,
    ):
        task_status.started()
        await r.aread()


@pytest.mark.parametrize("phase", ["waiting-for-slot", "prefill", "streaming"])
async def test_client_disconnect_aborts_the_vllm_request(
    start_gateway: StartGateway, fake: FakeVLLM, nursery: trio.Nursery, phase: str
) -> None:
    """The client leaves; vLLM sees its request's connection close at once (and frees the
    slot, as its abort does), in each phase; the gateway's pool keeps no busy connection."""
    gw = await start_gateway()
    if phase == "streaming":
        fake.tokens, fake.pace = 10_000, 0.01
    else:
        fake.prefill = 60
    if phase == "waiting-for-slot":  # another client holds vLLM's only batch slot
        fake.max_num_seqs = 1
        other = httpx.AsyncClient(
            base_url=fake.url + "/v1", headers={"authorization": f"Bearer {KEY}"}
        )
        await nursery.start(hold_slot, other)
    body = {"model": "chat", "messages": MESSAGES, "stream": True}
    async with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = r.aiter_raw()
        if phase == "streaming":
            async for chunk in chunks:
                if b"data: {" in chunk:
                    break
        else:
            assert await chunks.__anext__() == HEARTBEAT  # early headers, then a ping
        seen = fake.generation_requests()[-1]
        assert seen.aborted_at is None
        assert (seen.slot_at is None) == (phase == "waiting-for-slot")
        closed_at = trio.current_time()
    await fake.wait_until(lambda: seen.aborted_at is not None)
    assert seen.aborted_at is not None and seen.aborted_at - closed_at < 0.5
    assert seen.finished_at is None
    assert fake.waiting() == 0 and fake.running() == (1 if phase == "waiting-for-slot" else 0)
    open_, idle = gw.backend.pool_connections()
    assert open_ == idle  # the aborted request's connection was closed, not left busy
