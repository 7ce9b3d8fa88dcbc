"""Backend ``llamacpp``, remote mode, against the real llama-server and the real model:
answers relayed as llama-server produced them, llama.cpp's own fields passed through, the
queue gap covered by heartbeats, and disconnects freeing slots and queue places."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from .llamacpp_fixtures import (
    LlamaServer,
    backend_settings,
    gateway_doc,
    llama_server,  # noqa: F401  (fixture)
    metrics,
    model_path,  # noqa: F401  (fixture)
    open_stream,
    read_stream,
    slot_busy,
    sse_events,
    start_gateway,
    wait_for,
)

CHAT = {
    "model": "gemma",
    "messages": [{"role": "user", "content": "Name three colours of the rainbow."}],
    "max_tokens": 24,
    "temperature": 0,
    "seed": 7,
    "cache_prompt": False,  # identical numerics on both paths: nothing reused
}
COMPLETION = {
    "model": "gemma",
    "prompt": "The three primary colours are",
    "max_tokens": 24,
    "temperature": 0,
    "seed": 7,
    "cache_prompt": False,
}


@pytest.fixture
async def gateway(nursery: trio.Nursery, llama_server: LlamaServer):  # noqa: F811
    return await start_gateway(
        nursery, gateway_doc(backend_settings(url=llama_server.url + "/v1"), interval=1.0)
    )


@pytest.fixture
async def server(llama_server: LlamaServer):  # noqa: F811
    async with llama_server.client() as client:
        yield client


def _upstream(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "model": "gemma3"}


# --- settings and start-up ---------------------------------------------------------------


async def test_backend_reads_health_load_and_props(gateway, llama_server) -> None:  # noqa: F811
    backend = gateway.backend
    assert backend.url == llama_server.url  # the trailing /v1 is the API's, not the server's
    await wait_for(_returns(lambda: backend.server_info is not None), timeout=5)
    assert backend.status.health == "ready"
    assert (backend.status.running, backend.status.queued) == (0, 0)
    info = backend.server_info
    assert info is not None and info.total_slots == 1 and info.n_ctx == 4096
    async with gateway.client() as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"]["l"]["health"] == "ready"


# --- answers as llama-server produced them -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)]
)
async def test_streamed_tokens_arrive_as_llama_server_produced_them(
    gateway, server, path: str, body: dict[str, Any]
) -> None:
    body = {**body, "stream_options": {"include_usage": True}}
    async with open_stream(server, path, _upstream(body)) as response:
        direct = await read_stream(response)
    async with gateway.client() as client, open_stream(client, path, body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        relayed = await read_stream(response)
    assert relayed.done and direct.done
    assert len(relayed.pieces) > 5
    assert relayed.pieces == direct.pieces  # same tokens, same chunking, same order
    assert relayed.usage is not None
    assert relayed.usage["completion_tokens"] == direct.usage["completion_tokens"] > 0
    assert relayed.usage["prompt_tokens"] == direct.usage["prompt_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/v1/chat/completions", CHAT, "message"), ("/v1/completions", COMPLETION, "text")],
)
async def test_unary_answer_matches_llama_server(
    gateway, server, path: str, body: dict[str, Any], field: str
) -> None:
    direct = (await server.post(path, json=_upstream(body))).json()
    async with gateway.client() as client:
        response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    relayed = response.json()
    if field == "message":
        text = relayed["choices"][0]["message"]["content"]
        assert text == direct["choices"][0]["message"]["content"]
    else:
        text = relayed["choices"][0]["text"]
        assert text == direct["choices"][0]["text"]
    assert text.strip()
    assert relayed["usage"] == direct["usage"]
    assert relayed["usage"]["completion_tokens"] > 0


async def test_llama_cpp_fields_pass_through_and_take_effect(gateway) -> None:
    async with gateway.client() as client:
        # grammar: the answer can only be "yes" or "no".
        grammar = {**COMPLETION, "prompt": "Is the sky green?", "grammar": 'root ::= "yes" | "no"'}
        answer = (await client.post("/v1/completions", json=grammar)).json()
        assert answer["choices"][0]["text"] in ("yes", "no")

        # n_probs: llama.cpp adds the top-n candidates of every token.
        probs = (await client.post("/v1/completions", json={**COMPLETION, "n_probs": 3})).json()
        candidates = probs["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert len(candidates) == 3

        # cache_prompt: a repeated prompt is served from the slot's KV cache only when asked.
        prompt = {**COMPLETION, "prompt": "Count slowly from one to ten: one, two,", "max_tokens": 2}
        uncached = [
            (await client.post("/v1/completions", json={**prompt, "cache_prompt": False})).json()
            for _ in range(2)
        ]
        cached = [
            (await client.post("/v1/completions", json={**prompt, "cache_prompt": True})).json()
            for _ in range(2)
        ]
    assert [a["timings"]["cache_n"] for a in uncached] == [0, 0]
    assert cached[1]["timings"]["cache_n"] > 0


# --- the queue gap -------------------------------------------------------------------------


LONG = {
    "model": "gemma",
    "prompt": "Write a very long story about a lighthouse keeper.",
    "max_tokens": 3500,
    "ignore_eos": True,
    "temperature": 0,
}


async def test_queued_stream_is_kept_alive_by_heartbeats(gateway, server, llama_server) -> None:  # noqa: F811
    """--parallel 1 and a long request in the only slot: a second streaming request waits
    in llama-server's queue, which sends it nothing at all (a direct client with a 3 s read
    timeout dies); through the gateway the same wait is covered by a heartbeat every
    interval (1 s), so a client with the same 3 s read timeout lives through 15 s of it."""
    read_3s = httpx.Timeout(10.0, read=3.0)
    gap = 15.0
    async with trio.open_nursery() as nursery:
        long_running = trio.CancelScope()
        long_tokens: list[float] = []

        async def occupy_the_slot() -> None:
            with long_running:
                async with open_stream(server, "/v1/completions", _upstream(LONG)) as response:
                    async for event in sse_events(response):
                        if event.startswith(b"data: {"):
                            long_tokens.append(trio.current_time())

        nursery.start_soon(occupy_the_slot)
        await wait_for(_returns(lambda: len(long_tokens) > 0), timeout=30)

        # Without the gateway: llama-server sends a queued request nothing — not even headers.
        async with llama_server.client(timeout=read_3s) as direct:
            with pytest.raises(httpx.ReadTimeout):
                await direct.post("/v1/completions", json={**_upstream(COMPLETION), "stream": True})

        # Through the gateway: heartbeats every second while llama-server is silent.
        async with gateway.client(timeout=read_3s) as client:
            async with open_stream(client, "/v1/completions", COMPLETION) as response:
                assert response.status_code == 200
                events = sse_events(response)
                beats: list[float] = []
                started = trio.current_time()
                async for event in events:
                    assert event == b": keepalive", event  # nothing from llama-server yet
                    beats.append(trio.current_time())
                    if beats[-1] - started >= gap:
                        break
                deferred = (await metrics(server))["llamacpp:requests_deferred"]
                assert deferred == 1, "the request must still be waiting in llama-server's queue"
                long_running.cancel()  # free the slot: now the queued request runs
                rest = [event async for event in events]
    gaps = [b - a for a, b in zip([started, *beats], beats, strict=False)]
    assert len(beats) >= 14
    assert all(0.9 <= g <= 1.6 for g in gaps), gaps
    data = [e for e in rest if e.startswith(b"data: {")]
    assert data and rest[-1] == b"data: [DONE]"
    print(f"\nqueue gap: waited {beats[-1] - started:.1f} s behind {len(long_tokens)} tokens; "
          f"{len(beats)} heartbeats, gaps {min(gaps):.3f}-{max(gaps):.3f} s")


# --- disconnects -----------------------------------------------------------------------------


async def test_disconnect_mid_generation_frees_the_slot(gateway, server) -> None:
    async with gateway.client() as client:
        async with open_stream(client, "/v1/completions", LONG) as response:
            tokens = 0
            async for event in sse_events(response):
                tokens += event.startswith(b"data: {")
                if tokens == 5:
                    break
            assert await slot_busy(server)
            gone_at = trio.current_time()
    # the response and its connection are closed here: the client is gone
    freed_after = await wait_for(lambda: _not(slot_busy(server)), timeout=5)
    print(f"\nslot idle {freed_after * 1000:.0f} ms after the client disconnected "
          f"(measured from {gone_at:.3f})")
    assert freed_after < 1.0
    assert gateway.backend.pool_connections()[0] == gateway.backend.pool_connections()[1]


async def test_queued_request_that_disconnects_never_starts(gateway, server) -> None:
    first = {**LONG, "max_tokens": 150, "stream_options": {"include_usage": True}}
    queued = {
        **COMPLETION,
        "prompt": "An entirely different and rather longer prompt about owls, " * 20,
        "max_tokens": 50,
    }
    before = await metrics(server)
    async with trio.open_nursery() as nursery:
        result: list[Any] = []

        async def first_request() -> None:
            async with open_stream(server, "/v1/completions", _upstream(first)) as response:
                result.append(await read_stream(response))

        nursery.start_soon(first_request)
        await wait_for(lambda: slot_busy(server), timeout=30)
        async with gateway.client() as client, open_stream(client, "/v1/completions", queued) as r:
            async for event in sse_events(r):
                assert event == b": keepalive"
                break  # one heartbeat: it is queued in llama-server now
            assert (await metrics(server))["llamacpp:requests_deferred"] == 1
        # disconnected; llama-server drops it from its queue while the first still runs
        await wait_for(
            lambda: _metric_is(server, "llamacpp:requests_deferred", 0), timeout=3
        )
        assert await slot_busy(server)
    after = await metrics(server)
    usage = result[0].usage
    assert usage["completion_tokens"] == 150
    # Everything llama-server computed since `before` is the first request's: not one token
    # of the queued one was evaluated or generated.
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    prompt = sum(
        after[name] - before[name]
        for name in ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")
    )
    assert predicted == usage["completion_tokens"]
    assert prompt == usage["prompt_tokens"]


# --- helpers ---------------------------------------------------------------------------------


def _returns(predicate):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(predicate())

    return check


async def _not(awaitable) -> bool:  # type: ignore[no-untyped-def]
    return not await awaitable


async def _metric_is(server: httpx.AsyncClient, name: str, value: float) -> bool:
    return (await metrics(server))[name] == value
