"""The official ``openai`` npm package's Responses API on Node's fetch (undici), through the
gateway in front of the fake upstream speaking Responses itself (``native``: passthrough)
or chat only (``translated``).

Each test sends all its calls to one Node process (``tests/node/responses.mjs``), which
runs them at once and reports what the application saw.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.testing.fake_openai import FakeOpenAI

from .conftest import RunNode
from .scripts import chat_tool_calls, tokens_text

pytestmark = pytest.mark.node

NATIVE = {"native_endpoints": ["chat/completions", "responses", "responses/input_tokens"]}
MODES = {"native": NATIVE, "translated": {}}

PREFILL = 1.2  # seconds of upstream silence, each time
BODY_TIMEOUT_MS = 800  # undici's bodyTimeout (and headersTimeout): shorter than any silence
INTERVAL = 0.2  # the gateway's heartbeat interval


def op(id: str, base: str, call: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": id, "baseURL": base, "call": call, "params": params, **extra}


@pytest.mark.parametrize("heartbeat", ["comment", "event"])
async def test_stream_helper_outlives_a_short_body_timeout(
    start_gateway, fake: FakeOpenAI, run_responses_node: RunNode, heartbeat: str
) -> None:
    """``responses.stream()`` over an undici Agent whose ``bodyTimeout`` is 0.8 s, with a
    1.2 s prefill and a 1.2 s gap after the first text: through the gateway (native and
    translated) it completes; straight at the upstream undici's body timer ends it."""
    keepalive = {"interval": INTERVAL, "responses": heartbeat}
    bases = {"direct": fake.url}
    for mode, backend in MODES.items():
        bases[mode] = (await start_gateway(backend=backend, keepalive=keepalive)).url + "/v1"
    # the gap before the second text delta: native after created, in_progress, the item,
    # the part and one delta; translated after the role chunk and one token
    gap_at = {"native": 5, "translated": 2, "direct": 5}
    timers = {"headersTimeout": BODY_TIMEOUT_MS, "bodyTimeout": BODY_TIMEOUT_MS}
    ops = []
    for way, base in bases.items():
        script = {"tokens": 3, "prefill": PREFILL, "gap_at": gap_at[way], "gap": PREFILL}
        for call in ("stream", "create"):
            params = {"model": "m", "input": "Hi", "fake": script}
            if call == "create":
                params["stream"] = True
            ops.append(op(f"{way}-{call}", base, call, params, undici=timers))
    results = await run_responses_node(ops)

    for call in ("stream", "create"):
        direct = results[f"direct-{call}"]
        assert not direct["ok"], direct
        assert direct["error"]["undici"] == "UND_ERR_BODY_TIMEOUT", direct["error"]
        for mode in MODES:
            result = results[f"{mode}-{call}"]
            assert result["ok"], (mode, call, result.get("error"))
            assert result["text"] == tokens_text(3)
            kinds = [e["type"] for e in result["events"]]
            assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
            numbers = [e["sequence_number"] for e in result["events"]]
            assert numbers == list(range(len(numbers)))
            beats = kinds.count("keepalive")
            assert beats >= 3 if heartbeat == "event" else beats == 0, (mode, call, kinds)
            # the gap was heard through: more than the body timer apart, yet no timeout
            assert result["elapsed_ms"] >= 2 * PREFILL * 1000
    for mode in MODES:
        final = results[f"{mode}-stream"]["result"]
        assert final["status"] == "completed" and final["output_text"] == tokens_text(3)


@pytest.mark.parametrize("mode", MODES)
async def test_whole_response_and_retrieve(
    start_gateway, run_responses_node: RunNode, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])
    base = gw.url + "/v1"
    first = await run_responses_node(
        [op("create", base, "create", {"model": "m", "input": "Hi", "fake": {"tokens": 2}})]
    )
    created = first["create"]
    assert created["ok"], created.get("error")
    assert created["text"] == tokens_text(2)
    second = await run_responses_node(
        [
            {**op("retrieve", base, "retrieve", {}), "responseId": created["result"]["id"]},
            {**op("missing", base, "retrieve", {}), "responseId": "resp_nope"},
        ]
    )
    assert second["retrieve"]["ok"] and second["retrieve"]["text"] == tokens_text(2)
    assert second["retrieve"]["result"]["id"] == created["result"]["id"]
    assert second["missing"]["error"]["class"] == "NotFoundError"


async def test_a_namespaced_tool_call_through_a_chat_backend(
    start_gateway, run_responses_node: RunNode
) -> None:
    """A ``namespace`` tool (Codex's sub-agent tools) through a chat-only backend: the model's
    call of ``agents__spawn`` reaches the SDK's stream helper and ``create`` as a
    ``function_call`` named ``spawn`` in namespace ``agents``, its arguments whole."""
    gw = await start_gateway()
    base = gw.url + "/v1"
    arguments = '{"task": "write the tests"}'
    namespace = {
        "type": "namespace",
        "name": "agents",
        "description": "Sub-agents.",
        "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}],
    }
    params = {
        "model": "m",
        "input": "Hi",
        "tools": [namespace],
        "fake": {"chunks": chat_tool_calls([("call_a", "agents__spawn", arguments)])},
    }
    results = await run_responses_node(
        [
            op("stream", base, "stream", params),
            op("create", base, "create", {**params, "stream": True}),
        ]
    )
    for name in ("stream", "create"):
        assert results[name]["ok"], results[name].get("error")
    (call,) = results["stream"]["result"]["output"]
    assert (call["type"], call["name"], call["namespace"], call["arguments"]) == (
        "function_call",
        "spawn",
        "agents",
        arguments,
    )
    added = [e for e in results["create"]["events"] if e["type"] == "response.output_item.added"]
    assert [(e["item"]["name"], e["item"]["namespace"]) for e in added] == [("spawn", "agents")]
