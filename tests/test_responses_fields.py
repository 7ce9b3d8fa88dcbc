"""Responses requests to chat, the rest: ``text.format``, reasoning, sampling, hints that
are dropped, fields that go on, the history of a ``previous_response_id``, Codex's request;
what chat cannot carry is refused with its field; ``input_items`` as the API lists them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.responses_request import (
    input_items,
)
from tests.responses_helpers import (
    CODEX,
    ITEM_ID,
    PNG_URL,
    TOOLS,
    call,
    chat,
    chat_call,
    output,
    refused,
    request,
    text,
    user,
)

FORMAT_TABLE = [
    pytest.param({"format": {"type": "text"}, "verbosity": "low"}, None, id="text"),
    pytest.param({"format": {"type": "json_object"}}, {"type": "json_object"}, id="json_object"),
    pytest.param(
        {
            "format": {
                "type": "json_schema",
                "name": "person",
                "schema": {"type": "object"},
                "strict": True,
                "description": "d",
            }
        },
        {
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "schema": {"type": "object"},
                "description": "d",
                "strict": True,
            },
        },
        id="json_schema",
    ),
    pytest.param(
        {"format": {"type": "json_schema", "name": "n", "schema": {}}},
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
        id="json_schema, strictness unsaid",
    ),
]


@pytest.mark.parametrize("text_config,expected", FORMAT_TABLE)
def test_text_format(text_config: JSONObject, expected: Any) -> None:
    assert chat(text=text_config).get("response_format") == expected


EFFORT_TABLE = [
    ("none", None, False),
    ("minimal", "low", True),
    ("low", "low", True),
    ("medium", "medium", True),
    ("high", "high", True),
    ("xhigh", "high", True),
    ("max", "high", True),
]


@pytest.mark.parametrize("effort,reasoning_effort,thinking", EFFORT_TABLE)
def test_reasoning_effort(effort: str, reasoning_effort: str | None, thinking: bool) -> None:
    out = chat(reasoning={"effort": effort, "summary": "auto"})
    assert out.get("reasoning_effort") == reasoning_effort
    assert out["chat_template_kwargs"] == {"enable_thinking": thinking}


def test_no_effort_no_switch() -> None:
    out = chat(reasoning={"summary": "auto"})
    assert "reasoning_effort" not in out and "chat_template_kwargs" not in out


def test_sampling_and_user() -> None:
    out = chat(
        max_output_tokens=16, temperature=0.2, top_p=0.9, user="old", safety_identifier="new"
    )
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["user"]) == (
        16,
        0.2,
        0.9,
        "new",
    )
    assert chat(user="u")["user"] == "u"


def test_streaming_asks_for_usage() -> None:
    out = chat(stream=True)
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_responses_hints_are_not_sent_upstream() -> None:
    out = chat(
        store=False,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        previous_response_id="resp_1",
        metadata={"k": "v"},
        text={"verbosity": "low"},
        reasoning={"summary": "auto"},
        service_tier="flex",
        truncation="auto",
        max_tool_calls=3,
        client_metadata={"session": "x"},
        stream_options={"include_obfuscation": False},
        background=False,
        top_logprobs=0,
    )
    assert out == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_fields_that_are_no_responses_field_go_on_to_the_backend() -> None:
    out = chat(
        cache_prompt=True,
        top_k=20,
        grammar="root ::= x",
        chat_template_kwargs={"enable_thinking": True, "custom": 1},
        reasoning={"effort": "none"},
    )
    assert (out["cache_prompt"], out["top_k"], out["grammar"]) == (True, 20, "root ::= x")
    assert out["chat_template_kwargs"] == {"enable_thinking": True, "custom": 1}
    assert chat(max_tokens=5, max_output_tokens=9)["max_tokens"] == 9


def test_history_comes_before_the_input_and_after_the_instructions() -> None:
    history = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "user",
            "status": "completed",
            "content": [text("first")],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hm"}],
        },
        {
            "type": "message",
            "id": "msg_2",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "one", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "c",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
        },
    ]
    assert chat(history, input=[output("c", "42")], instructions="sys")["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one", "tool_calls": [chat_call("c", "f", "{}")]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
    ]
    assert (
        chat(history, input=None, previous_response_id="resp_1")["messages"][-1]["role"]
        == "assistant"
    )


def test_a_codex_request() -> None:
    doc = json.loads(CODEX.read_text())
    out = chat(**doc)
    assert set(out) == {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "chat_template_kwargs",
        "stream",
        "stream_options",
    }
    assert (out["tool_choice"], out["parallel_tool_calls"], out["reasoning_effort"]) == (
        "auto",
        True,
        "medium",
    )
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert [tool["function"]["name"] for tool in out["tools"]] == [
        "shell",
        "update_plan",
        "apply_patch",
        "view_image",
    ]
    roles = [message["role"] for message in out["messages"]]
    assert roles == [
        "system",
        "system",
        "user",
        "user",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "user",
    ]
    assert out["messages"][0]["content"] == doc["instructions"]
    shell = out["messages"][5]["tool_calls"][0]
    assert shell["id"] == "call_3fVb1kQm0aZr8TqLw2NcX7yd"
    assert (
        json.loads(shell["function"]["arguments"])["command"][-1] == "pytest -q tests/test_calc.py"
    )
    patched = out["messages"][7]
    assert patched["content"] == "`add` subtracts instead of adding; patching it."
    assert json.loads(patched["tool_calls"][0]["function"]["arguments"]) == {
        "input": doc["input"][9]["input"]
    }
    assert out["messages"][8] == {
        "role": "tool",
        "tool_call_id": "call_Hn2LxP0sVw4QeR7tYb9Kd1Mz",
        "content": doc["input"][10]["output"],
    }


HOSTED = [
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "computer",
    "code_interpreter",
    "mcp",
    "image_generation",
    "local_shell",
    "shell",
    "apply_patch",
    "tool_search",
]


@pytest.mark.parametrize("kind", HOSTED)
def test_hosted_tools_are_refused_by_name(kind: str) -> None:
    error = refused(tools=[{"type": "function", "name": "f"}, {"type": kind}])
    assert error.param == "tools.1.type"
    assert error.message.startswith(f"tools.1.type: the {kind} tool cannot be translated")


REFUSALS = [
    pytest.param(
        {"input": [user({"type": "input_image", "file_id": "file_1"})]},
        "input.0.content.0.file_id",
        "an image given by file id",
        id="image by file id",
    ),
    pytest.param(
        {"input": [user({"type": "input_file", "file_id": "file_1"})]},
        "input.0.content.0.type",
        "an input_file part",
        id="file input",
    ),
    pytest.param(
        {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG_URL}]}]},
        "input.0.content.0.type",
        "images in system messages",
        id="image in system",
    ),
    pytest.param(
        {
            "input": [
                {"role": "assistant", "content": [{"type": "input_image", "image_url": PNG_URL}]}
            ]
        },
        "input.0.content.0.type",
        "images in assistant messages",
        id="image in assistant",
    ),
    pytest.param(
        {"input": [output("c", [{"type": "input_file", "file_url": "https://x/a.pdf"}])]},
        "input.0.output.0.type",
        "an input_file part in a tool output",
        id="file in a tool output",
    ),
    pytest.param(
        {"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
        "input.0.type",
        "a web_search_call item",
        id="hosted tool item",
    ),
    pytest.param(
        {"input": [{"type": "compaction", "encrypted_content": "x"}]},
        "input.0.type",
        "a compaction item",
        id="compaction item",
    ),
    pytest.param(
        {"context_management": [{"type": "compaction"}]},
        "context_management",
        "context_management (server-side compaction)",
        id="context_management",
    ),
    pytest.param({"top_logprobs": 5}, "top_logprobs", "top_logprobs", id="top_logprobs"),
    pytest.param(
        {"tools": TOOLS, "tool_choice": {"type": "file_search"}},
        "tool_choice.type",
        "a tool choice of type 'file_search'",
        id="hosted tool choice",
    ),
    pytest.param(
        {
            "tools": TOOLS,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "mcp", "server_label": "x"}],
            },
        },
        "tool_choice.tools.0.type",
        "a tool choice of type 'mcp'",
        id="hosted allowed tool",
    ),
]


@pytest.mark.parametrize("fields,param,what", REFUSALS)
def test_what_chat_cannot_carry_is_refused(fields: dict[str, Any], param: str, what: str) -> None:
    error = refused(**fields)
    assert error.param == param
    assert (
        error.message
        == f"{param}: {what} cannot be translated for this model's backend, which speaks only chat"
    )


OTHER_REFUSALS = [
    pytest.param(
        {"tools": TOOLS, "tool_choice": {"type": "function", "name": "g"}},
        "tool_choice.name",
        id="unknown tool chosen",
    ),
    pytest.param(
        {
            "tools": TOOLS,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "g"}],
            },
        },
        "tool_choice.tools.0.name",
        id="unknown tool allowed",
    ),
    pytest.param(
        {"tools": [*TOOLS, {"type": "function", "name": "p"}]},
        "tools.2.name",
        id="two tools of one name",
    ),
    pytest.param({"input": []}, "input", id="nothing to say"),
]


@pytest.mark.parametrize("fields,param", OTHER_REFUSALS)
def test_requests_chat_could_carry_but_that_make_no_sense(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(**fields).param == param


def test_an_untranslatable_item_of_the_history_is_named_by_previous_response_id() -> None:
    history = [
        {"type": "message", "role": "user", "content": "q"},
        {"type": "web_search_call", "id": "ws"},
    ]
    error = refused(history=history, previous_response_id="resp_1")
    assert error.param == "previous_response_id.1.type"


def test_a_string_input_is_one_user_message() -> None:
    (item,) = input_items(request(input="hello"))
    assert ITEM_ID["msg"].fullmatch(item.pop("id"))
    assert item == {
        "type": "message",
        "role": "user",
        "content": [text("hello")],
        "status": "completed",
    }


def test_input_items_keep_given_ids_and_assign_others() -> None:
    doc = request(
        input=[
            {"role": "user", "content": "easy"},
            {"type": "message", "id": "msg_given", "role": "assistant", "content": "said"},
            {"type": "message", "role": "assistant", "content": [text("in", "input_text")]},
            call("c", "f", "{}"),
            output("c", "ok"),
            {"type": "custom_tool_call", "call_id": "d", "name": "p", "input": "x"},
            {"type": "custom_tool_call_output", "call_id": "d", "output": "y"},
            {"type": "reasoning", "encrypted_content": "gAAA", "content": None},
        ]
    )
    before = copy.deepcopy(doc)
    listed = input_items(doc)
    assert doc == before
    assert listed[1]["id"] == "msg_given"
    for item, prefix in zip(
        listed, ["msg", "msg", "msg", "fc", "fco", "ctc", "ctco", "rs"], strict=True
    ):
        assert item["id"] == "msg_given" or ITEM_ID[prefix].fullmatch(item["id"])
    assert listed[0] | {"id": ""} == {
        "id": "",
        "type": "message",
        "role": "user",
        "content": [text("easy")],
        "status": "completed",
    }
    assert listed[1]["content"] == [{"type": "output_text", "text": "said", "annotations": []}]
    assert listed[2]["content"] == [{"type": "output_text", "text": "in", "annotations": []}]
    assert [item.get("status") for item in listed] == ["completed"] * 7 + [None]
    assert listed[7]["summary"] == []
    assert input_items(request(input=None, previous_response_id="resp_1")) == []


def test_input_items_are_items_of_the_sdk() -> None:
    import openai.types.responses as responses
    import pydantic

    adapter = pydantic.TypeAdapter(responses.ResponseItem)
    doc = json.loads(CODEX.read_text())
    for item in input_items(doc):
        adapter.validate_python(item)
