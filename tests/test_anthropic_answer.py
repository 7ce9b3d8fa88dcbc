"""Whole chat answers to Anthropic Messages (:mod:`gateway.dialects.anthropic_answer`):
thinking, text and tool calls in order, stop reasons, usage, broken answers as the
upstream's fault."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.errors import UpstreamProtocolError
from tests.anthropic_helpers import (
    STOP_REASONS,
    TOOL_ID,
    chunk,
    completion,
    run_stream,
    to_message,
)


def test_a_text_answer() -> None:
    assert to_message(completion({"role": "assistant", "content": "Hello"})) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def test_thinking_text_and_tool_calls_in_order() -> None:
    message = to_message(
        completion(
            {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "I should call it.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Zürich"}'},
                    },
                    {"type": "function", "function": {"name": "time", "arguments": ""}},
                ],
            },
            "tool_calls",
        )
    )
    content = message["content"]
    assert isinstance(content, list)
    assert content[:3] == [
        {"type": "thinking", "thinking": "I should call it.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Zürich"}},
    ]
    generated = content[3]
    assert isinstance(generated, dict)
    assert TOOL_ID.fullmatch(str(generated.pop("id")))
    assert generated == {"type": "tool_use", "name": "time", "input": {}}
    assert message["stop_reason"] == "tool_use"


def test_vllms_reasoning_field_and_the_legacy_function_call() -> None:
    message = to_message(
        completion(
            {
                "role": "assistant",
                "content": None,
                "reasoning": "hmm",
                "function_call": {"name": "f", "arguments": '{"a":1}'},
            },
            "function_call",
        )
    )
    content = message["content"]
    assert isinstance(content, list) and len(content) == 2
    assert content[0] == {"type": "thinking", "thinking": "hmm", "signature": ""}
    assert isinstance(content[1], dict) and content[1]["input"] == {"a": 1}
    assert message["stop_reason"] == "tool_use"


def test_an_empty_answer_has_no_blocks() -> None:
    message = to_message(completion({"role": "assistant", "content": ""}))
    assert message["content"] == []
    assert message["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    "arguments",
    ["[1, 2]", '"text"', "{not json", '{"a": 1', "null", "NaN", '{"a": NaN}'],
)
def test_tool_arguments_that_are_not_an_object_are_the_upstreams_fault(arguments: str) -> None:
    answer = completion(
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}],
        },
        "tool_calls",
    )
    with pytest.raises(
        UpstreamProtocolError, match="'f' with arguments that are not a JSON object"
    ):
        to_message(answer)


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "x"},
        {"choices": []},
        {"choices": ["x"]},
        {"choices": [{"index": 0, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "message": "hi"}]},
        completion(
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}
        ),
        completion({"role": "assistant", "tool_calls": [{"id": "c"}]}),
    ],
)
def test_a_broken_answer_is_the_upstreams_fault(answer: JSONObject) -> None:
    with pytest.raises(UpstreamProtocolError):
        to_message(answer)


# (finish_reason, vLLM's stop_reason, stop_sequences, with a tool call) → Anthropic's


@pytest.mark.parametrize("finish,matched,stops,tools,reason,sequence", STOP_REASONS)
def test_stop_reasons_whole(
    finish: Any, matched: Any, stops: tuple[str, ...], tools: bool, reason: str, sequence: Any
) -> None:
    message: JSONObject = {"role": "assistant", "content": "x"}
    if tools:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    answer = to_message(completion(message, finish, stop_reason=matched), stops)
    assert (answer["stop_reason"], answer["stop_sequence"]) == (reason, sequence)


@pytest.mark.parametrize("finish,matched,stops,tools,reason,sequence", STOP_REASONS)
def test_stop_reasons_streamed(
    finish: Any, matched: Any, stops: tuple[str, ...], tools: bool, reason: str, sequence: Any
) -> None:
    delta: JSONObject = {"content": "x"}
    if tools:
        delta["tool_calls"] = [
            {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
        ]
    chunks = [chunk(delta), chunk({}, finish, stop_reason=matched)]
    events = run_stream(chunks, stop_sequences=stops)
    assert events[-2][1]["delta"] == {"stop_reason": reason, "stop_sequence": sequence}


@pytest.mark.parametrize(
    "usage,expected",
    [
        (None, {"input_tokens": 0, "output_tokens": 0}),
        ({"prompt_tokens": 12, "completion_tokens": 5}, {"input_tokens": 12, "output_tokens": 5}),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 80},
            },
            {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 80},
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            {"input_tokens": 100, "output_tokens": 5, "cache_read_input_tokens": 0},
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": None},
            {"input_tokens": 10, "output_tokens": 1},
        ),
    ],
)
def test_usage(usage: Any, expected: JSONObject) -> None:
    answer = completion({"role": "assistant", "content": "x"})
    answer["usage"] = usage
    assert to_message(answer)["usage"] == expected
