"""The official ``@anthropic-ai/sdk`` for Node (pinned in ``tests/node``), unmodified, through
a served gateway's ``/v1/messages``, driven by ``tests/node/anthropic.mjs``: passthrough to
the fake upstream speaking Messages, and translation to it speaking chat only.

Node's fetch is undici, whose ``bodyTimeout`` kills a response whose body is silent that
long; here it is shorter than the prefill, so only the gateway's pings keep a stream alive,
and a control straight at the fake shows the same client failing. One Node process per test
runs its ops at once."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until

from .anthropic_gateway import ASK, NATIVE, STREAM_EVENTS
from .conftest import RunNode
from .scripts import tokens_text

pytestmark = pytest.mark.node

PING = 'event: ping\ndata: {"type": "ping"}\n\n'
DELTA = re.compile("^event: content_block_delta$", re.MULTILINE)
# undici's timers, in ms; the silences are 1.5 times as long, the pings 4 times as frequent.
UNDICI = {"headersTimeout": 800, "bodyTimeout": 800}
SILENCE = 1.2
KEEPALIVE = {"interval": 0.2}
# The piece of the fake's script before which the silence between the first two text deltas
# falls (Messages events: after message_start and content_block_start; chat: the role chunk).
SECOND_DELTA = {"passthrough": 3, "translated": 2}


def op(
    url: str, id: str, call: str, params: dict[str, Any], script: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """An op of ``anthropic.mjs`` at ``url`` (the server root); ``script`` is the fake's."""
    return {"id": id, "baseURL": url, "call": call, "params": {**params, "fake": script}, **extra}


def root(url: str) -> str:
    """A served gateway's or fake's address without the ``/v1`` the SDK appends itself."""
    return url.removesuffix("/v1")


async def test_node_silence_longer_than_undici_body_timeout(
    start_gateway, fake: FakeOpenAI, run_anthropic_node: RunNode
) -> None:
    gateways = {
        "passthrough": await start_gateway(backend=NATIVE, keepalive=KEEPALIVE),
        "translated": await start_gateway(keepalive=KEEPALIVE),
    }
    ops = []
    for mode, gw in gateways.items():
        script = {"tokens": 3, "prefill": SILENCE, "gap_at": SECOND_DELTA[mode], "gap": SILENCE}
        for call, params in (("create", {**ASK, "stream": True}), ("stream", ASK)):
            ops.append(op(gw.url, f"{mode}-{call}", call, params, script, undici=UNDICI, tap=True))
    control = {"tokens": 3, "prefill": SILENCE}
    for call, params in (("create", {**ASK, "stream": True}), ("stream", ASK)):
        ops.append(op(root(fake.url), f"control-{call}", call, params, control, undici=UNDICI))

    results = await run_anthropic_node(ops, limit=20)

    for mode in gateways:
        for call in ("create", "stream"):
            result = results[f"{mode}-{call}"]
            assert result["ok"], (mode, call, result.get("error"))
            assert [e["type"] for e in result["events"]] == STREAM_EVENTS
            assert result["text"] == tokens_text(3)
            assert result["elapsed_ms"] >= 2 * SILENCE * 1000
            # Pings filled the prefill before message_start, and the gap between two text
            # deltas; the SDK handed none of them to the application.
            raw = result["raw"]
            assert raw.startswith(PING)
            first, second = [m.start() for m in DELTA.finditer(raw)][:2]
            assert raw[first:second].count(PING) >= 2
        assert results[f"{mode}-stream"]["result"]["content"] == [
            {"type": "text", "text": tokens_text(3)}
        ]
    for call in ("create", "stream"):
        result = results[f"control-{call}"]
        assert not result["ok"], result
        assert result["error"]["undici"] == "UND_ERR_BODY_TIMEOUT", result["error"]
        assert result["events"] == []


async def test_node_create_stream_count_and_overloaded(
    start_gateway, fake: FakeOpenAI, run_anthropic_node: RunNode
) -> None:
    native = await start_gateway(backend=NATIVE)
    translated = await start_gateway()
    full = await start_gateway(backend={"admission": {"max_concurrency": 1, "max_queue": 0}})
    count = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    ops = []
    for mode, gw in (("passthrough", native), ("translated", translated)):
        ops += [
            op(gw.url, f"{mode}-create", "create", ASK, {"tokens": 4}),
            op(gw.url, f"{mode}-stream", "stream", ASK, {"tokens": 3, "pace": 0.01}),
            op(gw.url, f"{mode}-count", "count_tokens", count, {"input_tokens": 42}),
        ]
    ops += [
        op(full.url, "overloaded-create", "create", ASK, {}),
        op(full.url, "overloaded-stream", "stream", ASK, {}),
    ]
    async with full.client() as holder, trio.open_nursery() as holding:
        holding.start_soon(
            partial(holder.post, "/v1/messages", json={**ASK, "fake": {"prefill": 30}})
        )
        await wait_until(lambda: full.gateway.upstreams["fake"].slots.in_flight == 1)
        results = await run_anthropic_node(ops, limit=20)
        holding.cancel_scope.cancel()

    for mode in ("passthrough", "translated"):
        create, stream = results[f"{mode}-create"], results[f"{mode}-stream"]
        assert create["ok"], create.get("error")
        assert create["text"] == tokens_text(4)
        assert create["result"]["stop_reason"] == "end_turn"
        assert create["result"]["usage"]["output_tokens"] == 4
        assert create["request_id"]  # the gateway's request-id header
        assert stream["ok"], stream.get("error")
        assert [e["type"] for e in stream["events"]] == STREAM_EVENTS
        assert stream["result"]["content"] == [{"type": "text", "text": tokens_text(3)}]
        assert stream["result"]["stop_reason"] == "end_turn"
    assert results["translated-create"]["result"]["model"] == "m"  # the public name
    assert results["translated-create"]["result"]["id"].startswith("msg_")

    counted = results["passthrough-count"]
    assert counted["ok"], counted.get("error")
    assert counted["result"] == {"input_tokens": 42}
    refused = results["translated-count"]
    assert not refused["ok"]
    assert refused["error"]["class"] == "BadRequestError"
    assert refused["error"]["type"] == "invalid_request_error"
    assert "cannot count tokens" in refused["error"]["body"]["error"]["message"]

    for id in ("overloaded-create", "overloaded-stream"):
        error = results[id]["error"]
        assert (error["class"], error["status"], error["type"]) == (
            "OverloadedError",
            529,
            "overloaded_error",
        ), error
    # Only the request holding the admission slot reached the upstream from that gateway.
    assert sum(1 for r in fake.requests if (r.body.get("fake") or {}).get("prefill") == 30) == 1
