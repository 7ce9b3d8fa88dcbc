"""The fake upstream's Anthropic Messages mode, over a real socket: what an Anthropic-native
server (llama-server's own ``/v1/messages``) answers, so the gateway's passthrough is tested
against the real wire grammar."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.testing.fake_openai import FakeOpenAI, messages_events

BODY: dict[str, Any] = {
    "model": "claude-fake",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello there"}],
}
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-test"}


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; fails on anything that is not a whole event."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: "), block
        events.append((name[7:].decode(), json.loads(data[6:])))
    return events


async def post(
    fake: FakeOpenAI, script: dict[str, Any], *, path: str = "/messages", **body: Any
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            fake.url + path, json={**BODY, **body, "fake": script}, headers=HEADERS
        )


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
async def test_error_status_answers_an_anthropic_error_body(
    fake: FakeOpenAI, status: int, error_type: str
) -> None:
    for stream in (False, True):
        response = await post(fake, {"status": status}, stream=stream)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "type": "error",
            "error": {"type": error_type, "message": f"fake error {status}"},
        }


async def test_error_type_and_message_from_the_script(fake: FakeOpenAI) -> None:
    response = await post(
        fake,
        {"status": 400, "type": "custom_error", "message": "no"},
        path="/messages/count_tokens",
    )
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "custom_error", "message": "no"}}


async def test_no_done_ends_the_body_cleanly_without_message_stop(fake: FakeOpenAI) -> None:
    response = await post(fake, {"tokens": 2, "fault": "no_done"}, stream=True)
    names = [name for name, _ in parse_events(response.content)]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ]


async def test_error_event_mid_stream(fake: FakeOpenAI) -> None:
    response = await post(fake, {"tokens": 4, "fault": "error_event"}, stream=True)
    events = parse_events(response.content)
    # 9 events: the error replaces the 5th and the stream ends there
    assert [name for name, _ in events[:4]] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert events[4:] == [
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "fake error event"}},
        )
    ]


async def test_reset_mid_stream_is_a_broken_body(fake: FakeOpenAI) -> None:
    with pytest.raises(httpx.ReadError, match="reset"):
        await post(fake, {"tokens": 4, "fault": "reset_mid_stream"}, stream=True)
    assert b"message_start" in fake.requests[-1].sent
    assert b"message_stop" not in fake.requests[-1].sent


async def test_pings_in_every_position_the_first_before_message_start(fake: FakeOpenAI) -> None:
    response = await post(fake, {"tokens": 2, "comment_every": 1}, stream=True)
    events = parse_events(response.content)
    assert [name for name, _ in events[0::2]] == ["ping"] * 7
    assert all(data == {"type": "ping"} for _, data in events[0::2])
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    assert response.content == b"".join(ping + e for e in messages_events(2, model="claude-fake"))
    assert b"upstream-ping" not in response.content


async def test_stream_grammar(fake: FakeOpenAI) -> None:
    response = await post(fake, {"tokens": 3}, path="/messages?beta=true", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_events(response.content)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start == {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 0},
    }
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data["delta"] for _, data in events[2:5]]
    assert deltas == [{"type": "text_delta", "text": f"tok{i} "} for i in range(3)]
    assert events[5][1] == {"type": "content_block_stop", "index": 0}
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }
    assert fake.requests[-1].sent == b"".join(messages_events(3, model="claude-fake"))


async def test_non_stream_message(fake: FakeOpenAI) -> None:
    response = await post(fake, {"tokens": 4})
    assert response.status_code == 200
    assert response.json() == {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [{"type": "text", "text": "tok0 tok1 tok2 tok3 "}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }
    assert fake.requests[-1].headers["anthropic-version"] == "2023-06-01"


async def test_count_tokens(fake: FakeOpenAI) -> None:
    body = {
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": "one two  three"},
            {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
            {"role": "user", "content": [{"type": "image", "source": {}}]},
        ],
    }
    response = await post(fake, {}, path="/messages/count_tokens", **body)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 2 + 3 + 1 + 10}
    response = await post(fake, {"input_tokens": 1234}, path="/messages/count_tokens")
    assert response.json() == {"input_tokens": 1234}


async def test_models_in_anthropic_shape_only_for_anthropic_clients(fake: FakeOpenAI) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        anthropic = (await client.get(fake.url + "/models", headers=HEADERS)).json()
        openai = (await client.get(fake.url + "/models")).json()
    assert anthropic["data"][0]["type"] == "model"
    assert (anthropic["has_more"], anthropic["first_id"], anthropic["last_id"]) == (
        False,
        "fake",
        "fake",
    )
    assert openai == {"object": "list", "data": [{"id": "fake", "object": "model"}]}


async def test_chat_on_the_same_fake_keeps_its_own_grammar(fake: FakeOpenAI) -> None:
    body = {"model": "m", "messages": BODY["messages"], "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            fake.url + "/chat/completions",
            json={**body, "fake": {"tokens": 1, "comment_every": 1, "status": 200}},
        )
    assert response.content.startswith(b": upstream-ping\n\ndata: ")
    assert response.content.endswith(b"data: [DONE]\n\n")
