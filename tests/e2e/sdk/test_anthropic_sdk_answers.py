"""The official ``anthropic`` Python SDK (pinned), unmodified, against a served gateway's
``/v1/messages`` and ``/v1/messages/count_tokens``: in front of the fake upstream speaking
Messages itself (passthrough) or chat only (translation).

What an application sees: whole messages, streams and the stream helper's final message,
from the async client and the sync one, a tool-use round trip, and counts."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .anthropic_gateway import ASK, MODES, NATIVE, STREAM_EVENTS, client, events_of
from .clients import SDK_ASYNCGEN_WARNINGS
from .scripts import tokens_text

pytestmark = SDK_ASYNCGEN_WARNINGS


async def collect(
    sdk: anthropic.AsyncAnthropic, into: list[Any], **params: Any
) -> anthropic.types.Message:
    """A streamed ``create``'s events appended to ``into`` as the application gets them,
    then the stream helper's answer for the same request: what both ways of streaming hand
    an application. Returns the helper's final message."""
    stream = await sdk.messages.create(**params, stream=True)
    async with stream:
        async for event in stream:
            into.append(event)
    async with sdk.messages.stream(**params) as helper:
        return await helper.get_final_message()


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_create_stream_and_helper(start_gateway, fake: FakeOpenAI, mode: str) -> None:
    gw = await start_gateway(backend=MODES[mode])
    events: list[Any] = []
    async with client(gw.url) as sdk:
        with trio.fail_after(10):
            whole = await sdk.messages.create(**ASK, extra_body={"fake": {"tokens": 4}})
            final = await collect(sdk, events, **ASK, extra_body={"fake": {"tokens": 3}})
    assert whole.content[0].type == "text" and whole.content[0].text == tokens_text(4)
    assert whole.stop_reason == "end_turn"
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (5, 4)
    assert whole._request_id  # the gateway's request-id header, as the SDK exposes it
    assert [e.type for e in events] == STREAM_EVENTS
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == (
        tokens_text(3)
    )
    assert final.content[0].type == "text" and final.content[0].text == tokens_text(3)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    if mode == "translated":
        assert whole.model == final.model == "m"  # the public name
        assert whole.id.startswith("msg_") and final.id.startswith("msg_")
        assert fake.requests[-1].path == "/v1/chat/completions"
    else:
        assert fake.requests[-1].path == "/v1/messages"
        assert fake.requests[-1].headers["anthropic-version"]


@pytest.mark.parametrize("mode", MODES)
async def test_sync_client_in_a_thread(start_gateway, mode: str) -> None:
    gw = await start_gateway(backend=MODES[mode])

    def work() -> tuple[anthropic.types.Message, anthropic.types.Message]:
        with anthropic.Anthropic(base_url=gw.url, api_key="sk-test", max_retries=0) as sdk:
            whole = sdk.messages.create(**ASK, extra_body={"fake": {"tokens": 2}})
            with sdk.messages.stream(**ASK, extra_body={"fake": {"tokens": 5}}) as helper:
                return whole, helper.get_final_message()

    with trio.fail_after(10):
        whole, final = await trio.to_thread.run_sync(work)
    assert whole.content[0].text == tokens_text(2)
    assert final.content[0].text == tokens_text(5)
    assert final.stop_reason == "end_turn"


async def test_count_tokens_native_and_refused_by_a_chat_only_backend(start_gateway) -> None:
    native = await start_gateway(backend=NATIVE)
    chat_only = await start_gateway()
    count = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    with trio.fail_after(10):
        async with client(native.url) as sdk:
            counted = await sdk.messages.count_tokens(**count)
            scripted = await sdk.messages.count_tokens(
                **count, extra_body={"fake": {"input_tokens": 42}}
            )
        async with client(chat_only.url) as sdk:
            with pytest.raises(anthropic.BadRequestError) as refused:
                await sdk.messages.count_tokens(**count)
    assert counted.input_tokens == 3 + 10  # the fake's count: words + 10
    assert scripted.input_tokens == 42
    assert refused.value.type == "invalid_request_error"
    assert "cannot count tokens" in str(refused.value.api_message)


def tool_chunks() -> tuple[list[str], list[str]]:
    """A chat stream (the fake's ``chunks``, one SSE event each) of one tool call whose
    arguments arrive in three pieces, ending with finish_reason tool_calls; and the pieces."""
    pieces = ['{"city": ', '"Paris", "unit"', ': "C"}']
    base = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 0, "model": "x"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps({**doc, **extra})}\n\n"

    call = {"index": 0, "id": "call_abc", "type": "function"}
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}),
        *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces),
        chunk({}, "tool_calls"),
        chunk({}, choices=[], usage={"prompt_tokens": 20, "completion_tokens": 9}),
        "data: [DONE]\n\n",
    ], pieces


async def test_tool_use_round_trip_through_translation(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1})
    chunks, pieces = tool_chunks()
    # Silent while the model writes the arguments: heartbeats between the argument pieces.
    paces = [0, 0, 0.3, 0.3, 0, 0, 0, 0]
    tools = [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        }
    ]
    tap = bytearray()
    events: list[Any] = []
    async with client(gw.url, tap=tap) as sdk:
        with trio.fail_after(10):
            async with sdk.messages.stream(
                **ASK, tools=tools, extra_body={"fake": {"chunks": chunks, "paces": paces}}
            ) as helper:
                async for event in helper:
                    events.append(event)
                asked = await helper.get_final_message()
            (call,) = asked.content
            assert call.type == "tool_use"
            answered = await sdk.messages.create(
                **{
                    **ASK,
                    "messages": [
                        *ASK["messages"],
                        {
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "tool_use",
                                    "id": call.id,
                                    "name": call.name,
                                    "input": call.input,
                                }
                            ],
                        },
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}
                            ],
                        },
                    ],
                },
                tools=tools,
                extra_body={"fake": {"tokens": 2}},
            )

    assert (call.id, call.name, call.input) == (
        "call_abc",
        "get_weather",
        {"city": "Paris", "unit": "C"},
    )
    assert asked.stop_reason == "tool_use"
    assert (asked.usage.input_tokens, asked.usage.output_tokens) == (20, 9)
    # The argument pieces reach the application as they arrived, pings between them unseen.
    json_deltas = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json_deltas == pieces
    assert "ping" not in {e.type for e in events}
    raw = [
        data["delta"].get("partial_json") if name == "content_block_delta" else name
        for name, data in events_of(bytes(tap))
    ]
    assert raw[raw.index(pieces[0]) : raw.index(pieces[-1])].count("ping") >= 2
    first_request, second_request = fake.requests
    assert first_request.path == second_request.path == "/v1/chat/completions"
    assert first_request.body["tools"][0]["function"]["name"] == "get_weather"
    # The tool result goes back as the assistant's tool call and a `tool` message.
    assistant, tool = second_request.body["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in assistant["tool_calls"]
    ] == [("call_abc", "get_weather", {"city": "Paris", "unit": "C"})]
    assert tool == {"role": "tool", "tool_call_id": "call_abc", "content": "18 C"}
    assert answered.content[0].text == tokens_text(2)
