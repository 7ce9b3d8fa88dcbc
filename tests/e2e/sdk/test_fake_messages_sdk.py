"""The official Anthropic SDKs, Python (``anthropic``) and Node (``@anthropic-ai/sdk`` through
``tests/node/anthropic.mjs``), against the fake upstream's Messages mode directly, with no
gateway: the proof that the fake speaks what the SDKs accept, so that the gateway's Messages
tests stand on a faithful upstream."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .anthropic_gateway import STREAM_EVENTS
from .conftest import RunNode
from .scripts import tokens_text

MESSAGE: dict[str, Any] = {
    "model": "claude-fake",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "say something"}],
}
# The status the fake answers, the Python SDK's class for it, the Node SDK's class name.
STATUS_ERRORS = [
    (400, anthropic.BadRequestError, "BadRequestError", "invalid_request_error"),
    (401, anthropic.AuthenticationError, "AuthenticationError", "authentication_error"),
    (403, anthropic.PermissionDeniedError, "PermissionDeniedError", "permission_error"),
    (404, anthropic.NotFoundError, "NotFoundError", "not_found_error"),
    (413, anthropic.ContentTooLargeError, "ContentTooLargeError", "request_too_large"),
    (429, anthropic.RateLimitError, "RateLimitError", "rate_limit_error"),
    (500, anthropic.InternalServerError, "InternalServerError", "api_error"),
    (529, anthropic.OverloadedError, "OverloadedError", "overloaded_error"),
]


def base_url(fake: FakeOpenAI) -> str:
    """The server root: both SDKs append ``/v1/messages`` themselves."""
    return f"http://127.0.0.1:{fake.port}"


def client(fake: FakeOpenAI) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url(fake), api_key="sk-test", max_retries=0)


async def test_python_status_errors_are_the_sdk_classes(fake: FakeOpenAI) -> None:
    async with client(fake) as sdk:
        for status, error_class, _, error_type in STATUS_ERRORS:
            for stream in (False, True):
                with trio.fail_after(10), pytest.raises(error_class) as raised:
                    await sdk.messages.create(
                        **MESSAGE, stream=stream, extra_body={"fake": {"status": status}}
                    )
                assert type(raised.value) is error_class
                assert raised.value.status_code == status
                assert raised.value.type == error_type
                assert raised.value.body == {
                    "type": "error",
                    "error": {"type": error_type, "message": f"fake error {status}"},
                }
        with trio.fail_after(10), pytest.raises(anthropic.OverloadedError):
            await sdk.messages.count_tokens(
                model="claude-fake",
                messages=MESSAGE["messages"],
                extra_body={"fake": {"status": 529}},
            )


async def test_python_error_event_mid_stream_raises(fake: FakeOpenAI) -> None:
    async with client(fake) as sdk:
        with trio.fail_after(10):
            stream = await sdk.messages.create(
                **MESSAGE, stream=True, extra_body={"fake": {"tokens": 4, "fault": "error_event"}}
            )
            seen: list[str] = []
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with stream:
                    async for event in stream:
                        seen.append(event.type)
    assert seen == STREAM_EVENTS[:4]
    assert raised.value.type == "overloaded_error"


async def test_python_sdk_takes_a_stream_without_message_stop_for_whole(
    fake: FakeOpenAI,
) -> None:
    """What a cut before ``message_stop`` looks like to the application: nothing. So a
    gateway has to tell such a cut with an ``event: error`` itself."""
    async with client(fake) as sdk:
        with trio.fail_after(10):
            stream = await sdk.messages.create(
                **MESSAGE, stream=True, extra_body={"fake": {"fault": "no_done"}}
            )
            async with stream:
                events = [event.type async for event in stream]
            async with sdk.messages.stream(
                **MESSAGE, extra_body={"fake": {"fault": "no_done"}}
            ) as helper:
                final = await helper.get_final_message()
    assert events == STREAM_EVENTS[:-1]
    assert final.stop_reason == "end_turn" and final.content[0].text == tokens_text(3)


async def test_python_create_non_stream_and_stream_with_pings_everywhere(fake: FakeOpenAI) -> None:
    async with client(fake) as sdk:
        with trio.fail_after(10):
            message = await sdk.messages.create(**MESSAGE, extra_body={"fake": {"tokens": 4}})
            stream = await sdk.messages.create(
                **MESSAGE, stream=True, extra_body={"fake": {"tokens": 3, "comment_every": 1}}
            )
            events: list[Any] = []
            async with stream:
                async for event in stream:
                    events.append(event)
    assert message.id == "msg_fake" and message.model == "claude-fake"
    assert message.content[0].type == "text" and message.content[0].text == tokens_text(4)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    # a ping before every event, the first before message_start: none reaches the application
    assert fake.requests[-1].sent.count(b"event: ping\n") == len(STREAM_EVENTS)
    assert [e.type for e in events] == STREAM_EVENTS
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == (
        tokens_text(3)
    )
    assert events[-2].usage.output_tokens == 3


async def test_python_stream_helper_final_message(fake: FakeOpenAI) -> None:
    async with client(fake) as sdk:
        with trio.fail_after(10):
            async with sdk.messages.stream(
                **MESSAGE, extra_body={"fake": {"tokens": 5, "comment_every": 2, "pace": 0.001}}
            ) as stream:
                texts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
    assert texts == [f"tok{i} " for i in range(5)]
    assert final.content[0].type == "text" and final.content[0].text == tokens_text(5)
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 5)


async def test_python_count_tokens_and_models(fake: FakeOpenAI) -> None:
    async with client(fake) as sdk:
        with trio.fail_after(10):
            counted = await sdk.messages.count_tokens(
                model="claude-fake",
                system="be brief",
                messages=[{"role": "user", "content": "one two three"}],
            )
            scripted = await sdk.messages.count_tokens(
                model="claude-fake",
                messages=MESSAGE["messages"],
                extra_body={"fake": {"input_tokens": 777}},
            )
            models = [m async for m in sdk.models.list()]
    assert counted.input_tokens == 2 + 3 + 10
    assert scripted.input_tokens == 777
    assert [(m.id, m.type) for m in models] == [("fake", "model")]
    assert fake.requests[-1].headers["anthropic-version"]


def node_op(
    fake: FakeOpenAI,
    id: str,
    call: str,
    params: dict[str, Any] | None = None,
    script: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An op of ``tests/node/anthropic.mjs`` against ``fake``; ``script`` goes in the body."""
    body = {**(params or {}), **({"fake": script} if script is not None else {})}
    return {"id": id, "baseURL": base_url(fake), "call": call, "params": body, **extra}


async def test_node_sdk_against_the_fake(fake: FakeOpenAI, run_anthropic_node: RunNode) -> None:
    ops = [
        node_op(fake, "create", "create", params=MESSAGE, script={"tokens": 4}),
        node_op(
            fake,
            "create-stream",
            "create",
            params={**MESSAGE, "stream": True},
            script={"tokens": 3, "comment_every": 1},
            tap=True,
        ),
        node_op(
            fake,
            "stream",
            "stream",
            params=MESSAGE,
            script={"tokens": 3, "comment_every": 2},
            undici={"headersTimeout": 5000, "bodyTimeout": 5000},
            headers={"anthropic-beta": "fake-beta-1"},
        ),
        node_op(
            fake,
            "count",
            "count_tokens",
            params={"model": "claude-fake", "messages": [{"role": "user", "content": "a b c d"}]},
        ),
        node_op(fake, "models", "models", apiKey=None, headers={"x-api-key": "sk-header"}),
        node_op(fake, "no-done", "create", {**MESSAGE, "stream": True}, {"fault": "no_done"}),
        node_op(fake, "no-done-helper", "stream", MESSAGE, {"fault": "no_done"}),
        node_op(
            fake,
            "error-event",
            "create",
            params={**MESSAGE, "stream": True},
            script={"tokens": 4, "fault": "error_event"},
        ),
        *(
            node_op(fake, f"{status}-{call}", call, MESSAGE, {"status": status})
            for status, *_ in STATUS_ERRORS
            for call in ("create", "stream")
        ),
    ]
    results = await run_anthropic_node(ops)

    create = results["create"]
    assert create["ok"], create.get("error")
    assert create["text"] == tokens_text(4)
    assert create["result"]["id"] == "msg_fake" and create["result"]["model"] == "claude-fake"
    assert create["result"]["usage"] == {"input_tokens": 5, "output_tokens": 4}

    streamed = results["create-stream"]
    assert streamed["ok"], streamed.get("error")
    assert [e["type"] for e in streamed["events"]] == STREAM_EVENTS
    assert streamed["text"] == tokens_text(3)
    assert streamed["raw"].count('event: ping\ndata: {"type": "ping"}\n\n') == len(STREAM_EVENTS)
    assert streamed["raw"].startswith("event: ping\n")

    helper = results["stream"]
    assert helper["ok"], helper.get("error")
    assert [e["type"] for e in helper["events"]] == STREAM_EVENTS
    # the events as they arrived, not the message the helper went on to build from them
    assert helper["events"][0]["message"]["content"] == []
    assert helper["result"]["content"] == [{"type": "text", "text": tokens_text(3)}]
    assert helper["result"]["stop_reason"] == "end_turn"
    assert helper["result"]["usage"] == {"input_tokens": 5, "output_tokens": 3}
    (helper_request,) = [
        r for r in fake.requests if (r.body.get("fake") or {}).get("comment_every") == 2
    ]
    assert helper_request.headers["anthropic-beta"] == "fake-beta-1"
    # this SDK sends its key as a bearer token, not x-api-key
    assert helper_request.headers["authorization"] == "Bearer sk-test"
    assert "x-api-key" not in helper_request.headers
    assert helper_request.headers["anthropic-version"]
    assert helper_request.path == "/v1/messages"

    assert results["count"]["ok"], results["count"].get("error")
    assert results["count"]["result"] == {"input_tokens": 4 + 10}
    assert results["models"]["ok"], results["models"].get("error")
    assert [m["id"] for m in results["models"]["result"]] == ["fake"]
    (models_request,) = [r for r in fake.requests if r.path.startswith("/v1/models")]
    assert models_request.headers["x-api-key"] == "sk-header"
    assert "authorization" not in models_request.headers

    # Without message_stop, create() ends as if the stream were whole; only the helper,
    # which wants a whole message, notices (unlike Python's, see above).
    assert results["no-done"]["ok"]
    assert [e["type"] for e in results["no-done"]["events"]] == STREAM_EVENTS[:-1]
    assert not results["no-done-helper"]["ok"]
    assert results["no-done-helper"]["error"]["class"] == "AnthropicError"

    error_event = results["error-event"]
    assert not error_event["ok"]
    assert error_event["error"]["type"] == "overloaded_error"
    assert [e["type"] for e in error_event["events"]] == STREAM_EVENTS[:4]

    for status, _, class_name, error_type in STATUS_ERRORS:
        for id in (f"{status}-create", f"{status}-stream"):
            result = results[id]
            assert not result["ok"], id
            assert result["error"]["class"] == class_name, (id, result["error"])
            assert result["error"]["status"] == status
            assert result["error"]["type"] == error_type
            assert result["events"] == []
