"""The official ``openai`` npm package's Responses WebSocket mode (``ResponsesWS`` from
``openai/resources/responses/ws``, on the pinned npm ``ws`` package) against a served
gateway's ``GET /v1/responses``, in front of the fake upstream speaking Responses itself
(``native``: passthrough) or chat only (``translated``).

Each test runs one Node process (``tests/node/responses_ws.mjs``) that opens one socket,
sends its turns one after another and reports what the application saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.testing.fake_openai import FakeOpenAI

from .conftest import NODE_DIR, RunNode, node_runner
from .scripts import tokens_text

pytestmark = pytest.mark.node

NATIVE = {"native_endpoints": ["chat/completions", "responses", "responses/input_tokens"]}
MODES = {"native": NATIVE, "translated": {}}

INTERVAL = 0.1  # the gateway's ping interval
PREFILL = 0.6  # seconds of upstream silence before a turn's first event


@pytest.fixture
def run_responses_ws_node(node_client: tuple[str, Path]) -> RunNode:
    """``run_node`` for the ``openai`` package's ``ResponsesWS``, through
    ``tests/node/responses_ws.mjs``."""
    return node_runner(node_client[0], NODE_DIR / "responses_ws.mjs")


def turn(tokens: int, *, chain: bool = False, **params: Any) -> dict[str, Any]:
    fields = {"model": "m", "input": "Hi", "fake": {"tokens": tokens}, **params}
    return {"params": fields, "chain": chain}


def user_texts(body: dict[str, Any]) -> list[Any]:
    return [item["content"] for item in body["input"] if item.get("role") == "user"]


def assert_answered(result: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The turn's events as the SDK parsed them: created first, completed last, the text
    deltas making the whole text; returns the completed response."""
    assert result["error"] is None, result["error"]
    kinds = [e["type"] for e in result["events"]]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds
    assert result["text"] == tokens_text(tokens)
    response: dict[str, Any] = result["response"]
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == tokens_text(tokens)
    return response


@pytest.mark.parametrize("mode", MODES)
async def test_two_turns_chained_without_the_store(
    start_gateway, fake: FakeOpenAI, run_responses_ws_node: RunNode, mode: str
) -> None:
    """Two turns on one socket, ``store: false``, the second continuing the first by its
    ``previous_response_id``: both answered as parsed events, the second reaching the
    upstream with the whole conversation. The first turn's silent prefill is filled with
    pings, which the ``ws`` package answers, so the socket lives through it."""
    gw = await start_gateway(backend=MODES[mode], keepalive={"interval": INTERVAL})
    first = turn(2, store=False, fake={"tokens": 2, "prefill": PREFILL})
    second = turn(3, chain=True, store=False, input="And then?")
    results = await run_responses_ws_node(
        [{"id": "ws", "baseURL": gw.url + "/v1", "turns": [first, second]}]
    )
    result = results["ws"]
    assert result["ok"], result.get("failure")
    assert result["opened"] and result["raw"] == []
    assert result["close"] == {"code": 1000, "reason": "OK"}
    one, two = result["turns"]
    answer_one = assert_answered(one, 2)
    answer_two = assert_answered(two, 3)
    assert answer_one["id"] != answer_two["id"]
    # at least one ping per interval of the prefill, all answered
    assert one["pings"] >= PREFILL / INTERVAL - 2, one["pings"]

    # The second turn reached the upstream with the first exchange as its input.
    path = "/responses" if mode == "native" else "/chat/completions"
    sent = [r.body for r in fake.requests if r.path.endswith(path)]
    assert len(sent) == 2
    if mode == "native":
        assert user_texts(sent[1]) == [
            [{"type": "input_text", "text": "Hi"}],
            [{"type": "input_text", "text": "And then?"}],
        ]
        assert [item["role"] for item in sent[1]["input"]] == ["user", "assistant", "user"]
        assert "previous_response_id" not in sent[1]
    else:
        messages = sent[1]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == tokens_text(2)
    # store: false kept neither response in the store.
    async with gw.client() as client:
        for answer in (answer_one, answer_two):
            assert (await client.get(f"/v1/responses/{answer['id']}")).status_code == 404


@pytest.mark.parametrize("mode", MODES)
async def test_error_turns_then_a_good_turn_on_the_same_socket(
    start_gateway, fake: FakeOpenAI, run_responses_ws_node: RunNode, mode: str
) -> None:
    """A turn the gateway refuses (an unknown ``previous_response_id``) and a turn the
    upstream refuses (a 400) each reach the application as the SDK's ``WebSocketError``
    carrying the gateway's ``error`` event; the socket stays open and the next turn is
    answered."""
    gw = await start_gateway(backend=MODES[mode])
    refused = turn(1, store=False, previous_response_id="resp_missing")
    script_400 = {"status": 400, "message": "scripted 400", "code": "code_400"}
    upstream_400 = turn(1, fake=script_400, store=False)
    good = turn(2, store=False)
    results = await run_responses_ws_node(
        [{"id": "ws", "baseURL": gw.url + "/v1", "turns": [refused, upstream_400, good]}]
    )
    result = results["ws"]
    assert result["ok"], result.get("failure")
    assert result["close"] == {"code": 1000, "reason": "OK"} and result["raw"] == []
    missing, bad, answered = result["turns"]

    for failed in (missing, bad):
        error = failed["error"]
        assert error is not None and error["class"] == "WebSocketError", failed
        assert failed["events"] == [], failed["events"]  # the iterator hands errors apart
        assert failed["response"] is None
    gateway_error = missing["error"]["event"]
    assert gateway_error["type"] == "error" and gateway_error["status"] == 400
    assert gateway_error["error"]["param"] == "previous_response_id"
    assert "resp_missing" in gateway_error["error"]["message"]
    upstream_error = bad["error"]["event"]
    assert upstream_error["type"] == "error" and upstream_error["status"] == 400
    assert upstream_error["error"]["message"] == "scripted 400"
    assert upstream_error["error"]["code"] == "code_400"
    # the SDK's message is the event as JSON when the event has no message of its own
    assert "scripted 400" in bad["error"]["message"]
    # the error the socket sent is the one POST /v1/responses answers the same request with
    async with gw.client() as client:
        over_http = await client.post(
            "/v1/responses",
            json={**upstream_400["params"], "stream": True},
        )
    assert over_http.status_code == upstream_error["status"]
    assert over_http.json()["error"] == upstream_error["error"]

    assert_answered(answered, 2)
    # The refused turn never reached the upstream; the 400 and the good turn did (and
    # then the HTTP request above).
    path = "/responses" if mode == "native" else "/chat/completions"
    assert len([r for r in fake.requests if r.path.endswith(path)]) == 3
