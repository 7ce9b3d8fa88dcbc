"""OpenAI Responses over WebSocket (``GET /v1/responses``) on a served gateway, with a raw
wsproto client (:class:`gateway.testing.ws_client.WSClient`): every frame as the server
sends it, pings with their arrival times, and pongs only when the test wants them.

The fake upstream speaks Responses itself (passthrough) or chat only (translation)."""

from __future__ import annotations

from typing import Any

import pytest
from hypercorn.protocol import h11 as hypercorn_h11

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.ws_client import WSClient
from gateway.ws_stream import GatewayWSStream

from .test_responses import MODES, events_of

CREATE: dict[str, Any] = {"type": "response.create", "model": "m", "input": "Hi"}


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def test_hypercorn_builds_the_gateways_websocket_stream() -> None:
    """The ping extension rides on hypercorn internals (gateway.ws_stream): serving once
    installed it, and the pinned hypercorn still builds its stream by that name."""
    from gateway.ws_stream import install

    install()
    assert hypercorn_h11.WSStream is GatewayWSStream


@pytest.mark.parametrize("mode", MODES)
async def test_turns_on_one_socket_are_answered_in_order_with_the_sse_events(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])
    ws = await WSClient.connect(gw.url)
    # Three turns sent at once: run one at a time, in arrival order.
    for n in (1, 2, 3):
        await ws.send_json({**CREATE, "fake": {"tokens": n}})
    answers = [await ws.events_until_end() for _ in range(3)]
    await ws.close()
    for n, events in zip((1, 2, 3), answers, strict=True):
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] == "response.completed"
        assert text_of(events) == "".join(f"tok{i} " for i in range(n))
        if mode == "translated":
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # Over HTTP the same request streams the same events (ids and times aside).
    async with gw.client() as client:
        resp = await client.post(
            "/v1/responses", json={**CREATE, "stream": True, "fake": {"tokens": 2}}
        )
    over_http = events_of(resp.content)
    assert [e["type"] for e in over_http] == [e["type"] for e in answers[1]]
    upstream = [r for r in fake.requests if r.path.endswith(("/responses", "/completions"))]
    assert [r.body.get("stream") for r in upstream] == [True] * 4
    assert all(r.sent for r in upstream)


async def test_store_false_turns_chain_on_the_socket_without_the_store(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(backend=MODES["native"])
    ws = await WSClient.connect(gw.url)
    await ws.send_json({**CREATE, "store": False, "fake": {"tokens": 1}})
    first = (await ws.events_until_end())[-1]["response"]
    await ws.send_json(
        {
            **CREATE,
            "input": "And then?",
            "store": False,
            "previous_response_id": first["id"],
            "fake": {"tokens": 1},
        }
    )
    second = (await ws.events_until_end())[-1]["response"]
    # A third turn may go back to the first, which is not the socket's last any more and
    # was never stored: the socket answers with an error event and stays usable.
    await ws.send_json({**CREATE, "store": False, "previous_response_id": first["id"]})
    [error] = await ws.events_until_end()
    await ws.send_json({**CREATE, "previous_response_id": second["id"], "fake": {"tokens": 1}})
    third = await ws.events_until_end()
    await ws.close()
    # The second turn reached the backend with the whole conversation as its input.
    sent = [r.body for r in fake.requests if r.path.endswith("/responses")]
    assert [item["content"] for item in sent[1]["input"] if item.get("role") == "user"] == [
        [{"type": "input_text", "text": "Hi"}],
        [{"type": "input_text", "text": "And then?"}],
    ]
    assert [item["role"] for item in sent[1]["input"]] == ["user", "assistant", "user"]
    assert "previous_response_id" not in sent[1]
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"]["param"] == "previous_response_id"
    assert third[-1]["type"] == "response.completed"
    assert len(sent[2]["input"]) == 5  # three of the chain, the new one, and the output
    async with gw.client() as client:  # store: false kept nothing in the store
        assert (await client.get(f"/v1/responses/{first['id']}")).status_code == 404
