"""Whole chat answers to Responses (:mod:`gateway.dialects.responses_answer`): text,
reasoning and calls in order, status, usage, the request echoed as OpenAI echoes it,
broken answers as the upstream's fault, custom tool inputs; every response validated with
the ``openai`` SDK's ``Response`` model."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.responses_answer import chat_to_response
from gateway.dialects.responses_custom import custom_input
from gateway.errors import UpstreamProtocolError
from tests.responses_helpers import (
    CALL_ID,
    ITEM_ID,
    PATCH,
    answer,
    chat_call,
    request,
    respond,
    sdk_response,
)


def test_a_text_answer() -> None:
    out = respond(
        answer(
            {"content": "Hello!"},
            usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        )
    )
    item = dict(out["output"][0])
    assert ITEM_ID["msg"].fullmatch(item.pop("id"))
    assert item == {
        "type": "message",
        "status": "completed",
        "content": [{"type": "output_text", "annotations": [], "text": "Hello!"}],
        "role": "assistant",
    }
    assert (out["id"], out["object"], out["created_at"], out["model"]) == (
        "resp_1",
        "response",
        1700000000,
        "public",
    )
    assert (out["status"], out["incomplete_details"], out["error"]) == ("completed", None, None)
    assert out["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    assert sdk_response(out).output_text == "Hello!"


def test_reasoning_text_and_calls_in_order() -> None:
    whole = answer(
        {
            "reasoning_content": "think",
            "content": "Calling.",
            "tool_calls": [
                chat_call("call_up", "weather", '{"city":"Bern"}'),
                {
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": json.dumps({"input": PATCH})},
                },
            ],
        },
        finish_reason="tool_calls",
    )
    out = respond(
        whole,
        request(
            tools=[
                {"type": "function", "name": "weather"},
                {"type": "custom", "name": "apply_patch"},
            ]
        ),
    )
    reasoning, message, function, custom = copy.deepcopy(out["output"])
    assert ITEM_ID["rs"].fullmatch(reasoning["id"]) and ITEM_ID["msg"].fullmatch(message["id"])
    assert reasoning | {"id": ""} == {
        "id": "",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "think"}],
    }
    assert message["content"][0]["text"] == "Calling."
    assert ITEM_ID["fc"].fullmatch(function.pop("id"))
    assert function == {
        "type": "function_call",
        "status": "completed",
        "arguments": '{"city":"Bern"}',
        "call_id": "call_up",
        "name": "weather",
    }
    assert ITEM_ID["ctc"].fullmatch(custom.pop("id")) and CALL_ID.fullmatch(custom.pop("call_id"))
    assert custom == {
        "type": "custom_tool_call",
        "status": "completed",
        "input": PATCH,
        "name": "apply_patch",
    }
    assert out["status"] == "completed"


def test_custom_tools_may_also_be_named_by_the_caller() -> None:
    out = respond(
        answer({"tool_calls": [chat_call("c", "p", '{"input":"x"}')]}), custom_tools=["p"]
    )
    assert out["output"][0]["type"] == "custom_tool_call" and out["output"][0]["input"] == "x"


def test_vllm_reasoning_field_and_content_parts() -> None:
    out = respond(
        answer(
            {
                "reasoning": "r",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        )
    )
    assert [item["type"] for item in out["output"]] == ["reasoning", "message"]
    assert out["output"][1]["content"][0]["text"] == "ab"


@pytest.mark.parametrize(
    "finish_reason,status,reason",
    [
        ("stop", "completed", None),
        (None, "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
def test_status_whole(finish_reason: str | None, status: str, reason: str | None) -> None:
    out = respond(answer({"content": "cut"}, finish_reason=finish_reason))
    assert out["status"] == status
    assert out["incomplete_details"] == ({"reason": reason} if reason else None)
    assert out["output"][0]["status"] == ("incomplete" if reason else "completed")


USAGE_TABLE = [
    pytest.param(None, None, id="none"),
    pytest.param({}, (0, 0, 0, 0, 0), id="empty"),
    pytest.param({"prompt_tokens": 100, "completion_tokens": 50}, (100, 0, 50, 0, 150), id="plain"),
    pytest.param(
        {
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 60},
            "completion_tokens_details": {"reasoning_tokens": 20},
        },
        (100, 60, 50, 20, 150),
        id="details",
    ),
    pytest.param(
        {"prompt_tokens": -1, "completion_tokens": "x", "prompt_tokens_details": None},
        (0, 0, 0, 0, 0),
        id="nonsense",
    ),
]


@pytest.mark.parametrize("usage,expected", USAGE_TABLE)
def test_usage(usage: Any, expected: tuple[int, ...] | None) -> None:
    whole = answer({"content": "x"})
    whole["usage"] = usage
    got = respond(whole)["usage"]
    if expected is None:
        assert got is None
        return
    assert (
        got["input_tokens"],
        got["input_tokens_details"]["cached_tokens"],
        got["output_tokens"],
        got["output_tokens_details"]["reasoning_tokens"],
        got["total_tokens"],
    ) == expected


def test_the_request_is_echoed_as_openai_echoes_it() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}]
    req = request(
        instructions="sys",
        temperature=0.5,
        top_p=0.9,
        tools=tools,
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        max_output_tokens=100,
        previous_response_id="resp_0",
        store=False,
        metadata={"k": "v"},
        text={"format": {"type": "json_object"}, "verbosity": "low"},
        reasoning={"effort": "low", "summary": "auto"},
        user="u",
        safety_identifier="s",
        prompt_cache_key="pk",
        truncation="auto",
    )
    out = respond(answer({"content": "{}"}), req)
    echoed = {key: out[key] for key in req if key in out and key != "model"}
    assert echoed == {key: value for key, value in req.items() if key not in ("model", "input")}
    defaults = respond(answer({"content": "x"}))
    assert {
        key: defaults[key]
        for key in (
            "instructions",
            "temperature",
            "top_p",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "max_output_tokens",
            "previous_response_id",
            "store",
            "metadata",
            "text",
            "reasoning",
            "truncation",
            "background",
        )
    } == {
        "instructions": None,
        "temperature": None,
        "top_p": None,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "max_output_tokens": None,
        "previous_response_id": None,
        "store": True,
        "metadata": {},
        "text": {"format": {"type": "text"}},
        "reasoning": None,
        "truncation": "disabled",
        "background": False,
    }


@pytest.mark.parametrize(
    "whole,message",
    [
        ({"choices": []}, re.escape("without choices[0].message")),
        ({"choices": [{"index": 0}]}, re.escape("without choices[0].message")),
        (answer({"tool_calls": [{"id": "c"}]}), "without a function"),
        (answer({"tool_calls": [{"function": {"arguments": "{}"}}]}), "without a name"),
    ],
)
def test_a_broken_answer_is_the_upstreams_fault(whole: JSONObject, message: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=message):
        chat_to_response(whole, response_id="r", model="m", request=request(), created_at=0)


CUSTOM_INPUT_TABLE = [
    pytest.param(json.dumps({"input": PATCH}), PATCH, id="wrapped"),
    pytest.param(
        '{ "input" : "a\\u00e9\\ud83d\\ude00\\"\\\\\\/\\b\\f\\n\\r\\t" }',
        'aé😀"\\/\b\f\n\r\t',
        id="escapes",
    ),
    pytest.param('{"input": "line1\nline2"}', "line1\nline2", id="a raw newline, as models write"),
    pytest.param('{"input": "cut short', "cut short", id="cut by max tokens"),
    pytest.param('{"input": "a", "x": 1}', "a", id="more keys after"),
    pytest.param('{"patch": "p"}', "p", id="one string under another name"),
    pytest.param('{"x": 1, "input": "a"}', '{"x": 1, "input": "a"}', id="other keys first"),
    pytest.param("*** Begin Patch", "*** Begin Patch", id="not JSON: raw"),
    pytest.param('{"input": "bad \\x escape"}', 'bad \\x escape"}', id="not JSON inside: raw"),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize("arguments,expected", CUSTOM_INPUT_TABLE)
def test_custom_input(arguments: str, expected: str) -> None:
    assert custom_input(arguments) == expected
