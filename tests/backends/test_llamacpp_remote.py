"""Backend ``llamacpp``, remote mode, against the real llama-server and the real model:
answers relayed as llama-server produced them, llama.cpp's own fields passed through, the
queue gap covered by heartbeats, and disconnects freeing slots and queue places."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from backends.llamacpp import LlamaCppBackend
from backends.llamacpp._launch import free_port
from gateway.testing.waiting import wait_until

from .llamacpp_fixtures import (
    LlamaServer,
    _wait_healthy_sync,
    backend_settings,
    gateway_doc,
    llama_server,  # noqa: F401  (fixture)
    metrics,
    model_path,  # noqa: F401  (fixture)
    open_events,
    open_stream,
    read_stream,
    slot_busy,
    spawn_llama_server,
    start_gateway,
    stop_llama_server,
)
from .sse_helpers import event_json, sse_events

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
async def gateway(nursery: trio.Nursery, llama_server: LlamaServer):
    return await start_gateway(
        nursery, gateway_doc(backend_settings(url=llama_server.url + "/v1"), interval=1.0)
    )


@pytest.fixture
async def server(llama_server: LlamaServer):
    async with llama_server.client() as client:
        yield client


def _upstream(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "model": "gemma3"}


# --- settings and start-up ---------------------------------------------------------------


async def test_backend_reads_health_load_and_props(gateway, llama_server) -> None:
    backend = gateway.backend
    assert backend.url == llama_server.url  # the trailing /v1 is the API's, not the server's
    await wait_until((lambda: backend.server_info is not None), within=5)
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
        prompt = {
            **COMPLETION,
            "prompt": "Count slowly from one to ten: one, two,",
            "max_tokens": 2,
        }
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


async def test_queued_stream_is_kept_alive_by_heartbeats(gateway, server, llama_server) -> None:
    """--parallel 1 and a long request (another client's, straight to llama-server) in the
    only slot: a second streaming request through the gateway has to wait. The gateway holds
    it until the slot frees and covers the wait with a heartbeat every interval (1 s), so a
    client with a 3 s read timeout lives through 15 s of it; straight to llama-server, a
    waiting request hears nothing at all, not even headers, and the same client dies."""
    read_3s = httpx.Timeout(10.0, read=3.0)
    gap = 15.0
    backend = gateway.backend
    async with trio.open_nursery() as nursery:
        long_running = trio.CancelScope()
        long_tokens: list[float] = []

        async def occupy_the_slot() -> None:
            with long_running:
                async with open_events(server, "/v1/completions", _upstream(LONG)) as (_, events):
                    async for event in events:
                        if event.startswith(b"data: {"):
                            long_tokens.append(trio.current_time())

        nursery.start_soon(occupy_the_slot)
        await wait_until((lambda: len(long_tokens) > 0), within=60)
        # The load, read from /metrics, reaches the backend's status.
        await wait_until((lambda: backend.status.running == 1), within=5)

        async with gateway.client(timeout=read_3s) as client:
            started = trio.current_time()
            async with open_stream(client, "/v1/completions", COMPLETION) as response:
                assert response.status_code == 200  # committed with the first heartbeat
                async with aclosing(sse_events(response)) as events:
                    beats: list[float] = []
                    async for event in events:
                        assert event == b": keepalive", event  # nothing from llama-server yet
                        beats.append(trio.current_time())
                        if beats[-1] - started >= gap:
                            break
                    # Held by the gateway, not in llama-server's queue.
                    assert backend.slots.waiting == 1
                    assert (await metrics(server))["llamacpp:requests_deferred"] == 0
                    status = backend.status
                    assert (status.health, status.running, status.queued) == ("ready", 1, 0), status

                    # Without the gateway: llama-server sends a waiting request nothing at all.
                    async with llama_server.client(timeout=read_3s) as direct:
                        with pytest.raises(httpx.ReadTimeout):
                            await direct.post(
                                "/v1/completions", json={**_upstream(COMPLETION), "stream": True}
                            )
                    long_running.cancel()  # free the slot: now the held request runs
                    rest = [event async for event in events]
    gaps = [b - a for a, b in zip([started, *beats], beats, strict=False)]
    assert len(beats) >= 14
    assert all(0.9 <= g <= 1.6 for g in gaps), gaps
    data = [e for e in rest if e.startswith(b"data: {")]
    assert data and rest[-1] == b"data: [DONE]"
    print(
        f"\nqueue gap: waited {beats[-1] - started:.1f} s behind {len(long_tokens)} tokens; "
        f"{len(beats)} heartbeats, gaps {min(gaps):.3f}-{max(gaps):.3f} s"
    )


async def test_load_comes_from_slots_when_metrics_are_off(
    nursery: trio.Nursery,
    model_path: Path,
    tmp_path: Path,
) -> None:
    """A server started without ``--metrics``: the busy count is read from ``/slots``
    (its queue length is not published there, so ``queued`` stays unknown)."""
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    process = spawn_llama_server(model_path, port, tmp_path / "server.log", metrics=False)
    try:
        _wait_healthy_sync(url, process, tmp_path / "server.log")
        settings = backend_settings(url=url, poll_interval=0.1, load_interval=0.2)
        gateway = await start_gateway(nursery, gateway_doc(settings))
        backend = gateway.backend
        await wait_until((lambda: backend.status.running == 0), within=10)
        assert backend.status.queued is None
        async with (
            httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as direct,
            open_events(direct, "/v1/completions", _upstream(LONG)) as (_, events),
        ):
            async for event in events:
                if event.startswith(b"data: {"):
                    break
            await wait_until((lambda: backend.status.running == 1), within=10)
        await wait_until((lambda: backend.status.running == 0), within=10)
    finally:
        stop_llama_server(process)


# --- disconnects -----------------------------------------------------------------------------


async def test_disconnect_mid_generation_frees_the_slot(gateway, server) -> None:
    """The gateway closes its upstream request as soon as the client is gone; llama-server
    sees it at its next token and frees the slot. Within 1 s — or, on a machine so loaded
    that one token takes longer than 0.25 s, within four token times (llama-server cannot
    notice sooner than its next token)."""
    arrivals: list[float] = []
    async with (
        gateway.client() as client,
        open_events(client, "/v1/completions", LONG) as (_, events),
    ):
        async for event in events:
            if event.startswith(b"data: {"):
                arrivals.append(trio.current_time())
                if len(arrivals) == 8:
                    break
        assert await slot_busy(server)
    # the response and its connection are closed here: the client is gone
    freed_after = await wait_until(lambda: _not(slot_busy(server)), within=10)
    token_time = (arrivals[-1] - arrivals[1]) / 6
    print(
        f"\nslot idle {freed_after * 1000:.0f} ms after the client disconnected "
        f"(a token took {token_time * 1000:.0f} ms)"
    )
    assert freed_after < max(1.0, 4 * token_time)
    assert gateway.backend.pool_connections()[0] == gateway.backend.pool_connections()[1]


async def test_queued_request_that_disconnects_never_starts(gateway, server) -> None:
    """A request waiting for the busy slot whose client goes away is dropped from the
    gateway's line at once and never reaches llama-server: not one of its prompt tokens is
    evaluated. (Had it been sent, llama-server would have kept it queued — it notices a
    waiting client's disconnect only after a second with no token from any slot — and run
    it once the slot freed.)"""
    queued = {
        **COMPLETION,
        "prompt": "An entirely different and rather longer prompt about owls, " * 20,
        "max_tokens": 50,
    }
    backend = gateway.backend
    tokenized = await server.post(
        "/tokenize", json={"content": LONG["prompt"], "add_special": True}
    )
    long_prompt_tokens = len(tokenized.json()["tokens"])
    before = await metrics(server)
    async with trio.open_nursery() as nursery:
        first_running = trio.CancelScope()
        first_tokens: list[float] = []

        async def first_request() -> None:
            with first_running:
                async with open_events(server, "/v1/completions", _upstream(LONG)) as (_, events):
                    async for event in events:
                        if event.startswith(b"data: {"):
                            first_tokens.append(trio.current_time())

        nursery.start_soon(first_request)
        await wait_until((lambda: len(first_tokens) > 0), within=60)
        await wait_until((lambda: backend.status.running == 1), within=5)
        async with gateway.client() as client, open_stream(client, "/v1/completions", queued) as r:
            async with aclosing(sse_events(r)) as stream_events:
                async for event in stream_events:
                    assert event == b": keepalive"
                    break  # one heartbeat: it is waiting for the slot now
                # Looked at with the reader open: closed, it leaves the HTTP client's own
                # readers to the garbage collector, whose finalizing one hangs up.
                assert backend.slots.waiting == 1
        # disconnected: out of the line at once
        await wait_until((lambda: backend.slots.waiting == 0), within=1)
        first_running.cancel()
    await wait_until(lambda: _not(slot_busy(server)), within=10)
    # Two more polls see the slot free; a request still waiting anywhere would be sent now.
    for _ in range(2):
        await _next_poll(backend)
    assert not await slot_busy(server)
    after = await metrics(server)
    assert after["llamacpp:requests_deferred"] == 0
    evaluated = sum(
        after[name] - before[name]
        for name in ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")
    )
    assert evaluated == long_prompt_tokens  # the first request's prompt, and nothing else
    assert backend.slots.own == 0


# --- helpers ---------------------------------------------------------------------------------


async def _next_poll(backend: LlamaCppBackend) -> None:
    checked = backend.status.checked_at
    await wait_until((lambda: backend.status.checked_at != checked), within=5)


async def _not(awaitable) -> bool:  # type: ignore[no-untyped-def]
    return not await awaitable


async def _metric_is(server: httpx.AsyncClient, name: str, value: float) -> bool:
    return (await metrics(server))[name] == value


# --- upstream pings and the upstream timers ------------------------------------------------


async def test_llama_server_pings_count_as_upstream_liveness(
    nursery: trio.Nursery,
    llama_server: LlamaServer,
) -> None:
    """llama-server sends headers when the slot starts, then nothing during the prefill
    except its own pings (``:``, asked for every second). Those pings are upstream bytes: they satisfy ``first_byte`` and reset
    ``idle``, so a prefill longer than both timers survives — and the same request without
    pings times out. The prompt is sized to this machine's prefill speed (~6 s)."""
    # llama-server checks for a due ping on a 1 s poll and sends it once more than the
    # interval has passed: asked for every second, pings come 1-2 s apart.
    timeouts = {"first_byte": 2.5, "idle": 2.5}
    # load_interval: no /metrics read during the prefill; each one wakes the server's
    # waiting handlers and postpones their pings (see the setting's description).
    settings = backend_settings(url=llama_server.url, timeouts=timeouts, load_interval=600)
    quiet = gateway_doc(settings, interval=0)
    gateway = await start_gateway(nursery, quiet)
    async with llama_server.client() as server:
        unit = "one two three four five six seven eight nine ten "
        unit_tokens = len((await server.post("/tokenize", json={"content": unit})).json()["tokens"])
        probe = {**_upstream(COMPLETION), "prompt": unit * 30, "max_tokens": 1}
        speed = (await server.post("/v1/completions", json=probe)).json()["timings"]
    per_second = speed["prompt_per_second"]
    # ~8 s of prefill by the speed measured now, at most what the context holds; the
    # machine's speed changes under load, so aim well past the 3.5 s the test needs.
    repeats = max(30, min(3600 // unit_tokens, int(8.0 * per_second / unit_tokens)))
    long_prompt = {**COMPLETION, "prompt": unit * repeats, "max_tokens": 2}
    async with gateway.client() as client:
        started = trio.current_time()
        async with open_stream(
            client, "/v1/completions", {**long_prompt, "sse_ping_interval": 1}
        ) as r:
            assert r.status_code == 200
            pinged = await read_stream(r)
        first_data = next(i for i, e in enumerate(pinged.events) if e.startswith(b"data: {"))
        prefill = trio.current_time() - started
        async with open_stream(
            client, "/v1/completions", {**long_prompt, "sse_ping_interval": -1}
        ) as r:
            silent = (await r.aread()).split(b"\n\n")
    assert pinged.done and pinged.pieces
    pings = pinged.events[:first_data]
    assert pings and all(p == b":" for p in pings), pings  # llama-server's own, relayed
    assert prefill > timeouts["first_byte"] + 1, f"prefill {prefill:.1f} s proves nothing"
    error = event_json(silent[0])
    assert error is not None and error["error"]["code"] == "upstream_timeout", silent
    print(
        f"\nprefill of {repeats * unit_tokens} tokens ({per_second:.0f}/s): {prefill:.1f} s "
        f"with {len(pings)} llama-server pings; without them: {error['error']['message']}"
    )
