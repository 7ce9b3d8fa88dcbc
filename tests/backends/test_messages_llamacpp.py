"""Anthropic Messages on the real llama-server, which speaks ``/v1/messages`` and
``/v1/messages/count_tokens`` itself: the gateway passes its answers through (events and
bodies byte for byte, llama-server's ``model`` kept), counts with llama-server's own count,
and covers the wait for the one slot with ``event: ping`` — a queued request that hangs up
never reaches the server.

The server is the session's shared ``llama_server`` (``--parallel 1``, llama.cpp's built-in
gemma template under ``--no-jinja``, so counts depend on the messages). Tests that read its
slot wait for it to be idle first.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from gateway.testing.waiting import wait_until

from .llamacpp_fixtures import (
    CTX,
    LlamaServer,
    RunningGateway,
    backend_settings,
    gateway_doc,
    inflight_entry,
    llama_server,  # noqa: F401  (fixture)
    metrics,
    next_poll,
    open_events,
    server,  # noqa: F401  (fixture)
    slot_idle,
    slot_task,
    start_gateway,
)

PING = b'event: ping\ndata: {"type": "ping"}'
INTERVAL = 0.3  # the route's heartbeat interval
ASK: dict[str, Any] = {
    "model": "gemma",
    "max_tokens": 16,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Name three colours of the rainbow."}],
}
# Long enough to hold the only slot for the whole test (cut short by its client).
LONG: dict[str, Any] = {
    "model": "gemma",
    "max_tokens": 3000,
    "ignore_eos": True,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
}


@pytest.fixture
async def gateway(nursery: trio.Nursery, llama_server: LlamaServer) -> RunningGateway:
    settings = backend_settings(url=llama_server.url, poll_interval=0.1, load_interval=0.2)
    gw = await start_gateway(nursery, gateway_doc(settings, interval=INTERVAL))
    # The slot gate knows the server has one slot once /props has been read.
    await wait_until((lambda: gw.backend.server_info is not None), within=10)
    assert gw.backend.slots.total == 1
    return gw


def _parse(event: bytes) -> tuple[str, dict[str, Any]]:
    name, data = event.split(b"\n", 1)
    assert name.startswith(b"event: ") and data.startswith(b"data: "), event
    return name[len(b"event: ") :].decode(), json.loads(data[len(b"data: ") :])


async def _events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[bytes]:
    """Every event of a streamed Messages answer, raw, pings and comments left out."""
    out: list[bytes] = []
    async with open_events(client, "/v1/messages", body) as (response, events):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in events:
            if event != PING and not event.startswith(b":"):
                out.append(event)
    return out


def _message_id(events: list[bytes]) -> str:
    name, start = _parse(events[0])
    assert name == "message_start"
    return str(start["message"]["id"])


# --- passthrough ----------------------------------------------------------------------------


async def test_stream_is_llama_servers_own_events(gateway, server) -> None:
    """The relayed stream is the event list llama-server sends for the same request, byte
    for byte but for the message id (its own, new per request): message_start with the
    upstream's ``model`` (the GGUF path, not the route's name) … message_stop.

    The direct and the relayed request start from the same slot state (a first direct
    request leaves the prompt in the slot's cache for both), so greedy decoding is the
    same computation twice."""
    await _events(server, ASK)
    direct = await _events(server, ASK)
    async with gateway.client() as client:
        relayed = await _events(client, ASK)

    relayed_id, direct_id = _message_id(relayed), _message_id(direct)
    assert relayed_id != direct_id  # two real requests, not one answer replayed
    same_id = [e.replace(relayed_id.encode(), direct_id.encode()) for e in relayed]
    assert same_id == direct

    parsed = [_parse(e) for e in relayed]
    names = [name for name, _ in parsed]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"} and len(names) - 5 >= 1
    model = parsed[0][1]["message"]["model"]
    props = (await server.get("/props")).json()
    assert model == props["model_alias"] != "gemma"
    delta = parsed[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == ASK["max_tokens"]


async def test_a_prompt_over_the_context_is_refused_in_each_dialects_words(gateway, server) -> None:
    """llama-server's refusal (``exceed_context_size_error`` with its counts, the same on
    every endpoint) reaches the anthropic SDK as Anthropic's ``prompt is too long: N tokens >
    M maximum``, Claude Code's cue to compact, and the openai SDK as OpenAI's
    ``context_length_exceeded``, Codex's; the numbers are llama-server's own."""
    long = [{"role": "user", "content": "word " * 5000}]
    direct = await server.post("/v1/messages", json={**ASK, "messages": long})
    refusal = direct.json()["error"]
    assert (direct.status_code, refusal["type"]) == (400, "exceed_context_size_error")
    tokens, limit = refusal["n_prompt_tokens"], refusal["n_ctx"]
    assert tokens > limit == int(CTX)
    url = gateway.url
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError) as messages:
            await sdk.messages.create(model="gemma", max_tokens=16, messages=long)  # type: ignore[arg-type]
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as chat:
            await sdk.chat.completions.create(model="gemma", messages=long)  # type: ignore[arg-type]
    assert messages.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": f"prompt is too long: {tokens} tokens > {limit} maximum",
        },
    }
    assert chat.value.code == "context_length_exceeded"
    assert f"maximum context length is {limit} tokens" in chat.value.message
    assert f"resulted in {tokens} tokens" in chat.value.message


async def test_answer_is_llama_servers_own_body(gateway, server) -> None:
    """Non-streamed, the body llama-server answers, byte for byte but for its id."""
    await server.post("/v1/messages", json=ASK)
    direct = await server.post("/v1/messages", json=ASK)
    async with gateway.client() as client:
        relayed = await client.post("/v1/messages", json=ASK)
    assert direct.status_code == relayed.status_code == 200, relayed.text
    assert relayed.headers["content-type"].startswith("application/json")
    relayed_id, direct_id = relayed.json()["id"], direct.json()["id"]
    assert relayed_id != direct_id
    assert relayed.content.replace(relayed_id.encode(), direct_id.encode()) == direct.content
    answer = relayed.json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == direct.json()["model"] != "gemma"
    assert answer["content"][0]["type"] == "text" and answer["content"][0]["text"]
    assert answer["usage"]["output_tokens"] == ASK["max_tokens"]


COUNTED: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {"messages": ASK["messages"]},
    {
        "system": "Answer in one word.",
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "What colour is the sky?"}]},
        ],
    },
]


async def test_count_tokens_is_llama_servers_count(gateway, server) -> None:
    """``/v1/messages/count_tokens`` answers llama-server's own count (passthrough, no slot
    taken), which is also the prompt the same messages cost when generated from."""
    counted: list[int] = []
    async with gateway.client() as client:
        for body in COUNTED:
            body = {"model": "gemma", **body}
            direct = await server.post("/v1/messages/count_tokens", json=body)
            relayed = await client.post("/v1/messages/count_tokens", json=body)
            assert relayed.status_code == direct.status_code == 200, relayed.text
            assert relayed.json() == direct.json()
            counted.append(relayed.json()["input_tokens"])
            answer = (await client.post("/v1/messages", json={**body, "max_tokens": 1})).json()
            usage = answer["usage"]
            assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted[-1]
    assert len(set(counted)) == len(counted), counted  # a count of these messages
    assert gateway.backend.slots.own == 0


# --- the queue gap: pings, and a hang-up that never reaches the server ----------------------


async def test_queued_request_hears_pings_and_its_hang_up_never_reaches_the_server(
    gateway, server
) -> None:
    """One slot, taken by a long Messages stream through the gateway. A second Messages
    stream is held by the gateway's slot gate (not sent: llama-server's queue is empty) and
    hears nothing but ``event: ping`` every ``INTERVAL`` s. Its client hangs up: it leaves
    the gate's line at once, and when the slot frees it is never sent — llama-server
    evaluates no prompt token of it and starts no task in the slot."""
    backend = gateway.backend
    queued_body = {
        **ASK,
        "messages": [{"role": "user", "content": "A different, longer question about owls. " * 12}],
    }
    before = await metrics(server)
    async with gateway.client() as client, trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()
        first_started: list[dict[str, Any]] = []
        first_deltas = 0

        async def first_request() -> None:
            nonlocal first_deltas
            with first_scope:
                async with open_events(client, "/v1/messages", LONG) as (response, events):
                    assert response.status_code == 200
                    async for event in events:
                        if event.startswith(b"event: message_start"):
                            first_started.append(_parse(event)[1])
                        elif event.startswith(b"event: content_block_delta"):
                            first_deltas += 1

        nursery.start_soon(first_request)
        await wait_until((lambda: first_deltas > 0), within=60)
        assert backend.slots.own == 1
        first_task = await slot_task(server)

        async with (
            gateway.client(timeout=httpx.Timeout(30.0, read=2.0)) as queued_client,
            open_events(queued_client, "/v1/messages", queued_body) as (response, events),
        ):
            assert response.status_code == 200  # committed with the first ping
            assert response.headers["content-type"].startswith("text/event-stream")
            started = trio.current_time()
            beats: list[float] = []
            async for event in events:
                assert event == PING, event  # nothing from llama-server: it was never sent
                beats.append(trio.current_time())
                if len(beats) == 6:
                    break
            entry = inflight_entry(gateway, response.headers["request-id"])
            # Held in the backend's slot gate, not in llama-server's queue.
            assert backend.slots.waiting == 1 and backend.slots.own == 1
            assert entry.phase == "connecting" and entry.first_byte_at is None
            # Counted as heartbeats (the count follows the write the client already read).
            await wait_until((lambda: entry.heartbeats >= 6), within=INTERVAL)
            assert (await metrics(server))["llamacpp:requests_deferred"] == 0
            assert await slot_task(server) == first_task
        # hung up
        await wait_until((lambda: backend.slots.waiting == 0), within=1)
        await wait_until((lambda: entry.outcome is not None), within=1)
        assert entry.outcome == "client_gone" and entry.disconnect_phase == "connecting"

        first_scope.cancel()  # the first client hangs up too: the slot frees
    await wait_until(lambda: slot_idle(server), within=10)
    await wait_until((lambda: backend.slots.own == 0), within=1)
    # Two more polls see the slot free: a request still waiting anywhere would be sent now.
    for _ in range(2):
        await next_poll(backend)
    assert await slot_idle(server)
    assert await slot_task(server) == first_task  # no task ran in the slot after the first
    after = await metrics(server)
    assert after["llamacpp:requests_deferred"] == 0
    evaluated = sum(
        after[name] - before[name]
        for name in ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")
    )
    usage = first_started[0]["message"]["usage"]
    assert evaluated == usage["input_tokens"] + usage["cache_read_input_tokens"]
    gaps = [b - a for a, b in zip([started, *beats], beats, strict=False)]
    print(f"\nqueued behind {first_deltas} deltas: 6 pings, gaps {min(gaps):.3f}-{max(gaps):.3f} s")
    assert all(g < INTERVAL + 1.0 for g in gaps[1:]), gaps
