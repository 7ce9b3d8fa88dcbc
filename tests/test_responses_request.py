"""Responses requests to chat (:mod:`gateway.dialects.responses_request`): messages and
their parts, tool calls and their outputs, custom and function tools, ``tool_choice``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.dialects.responses_request import (
    CUSTOM_TOOL_ARGUMENT,
    IMAGES_FOLLOW,
    IMAGES_OF,
)
from tests.responses_helpers import (
    PATCH,
    PNG_URL,
    REASONING,
    TOOLS,
    call,
    chat,
    chat_call,
    messages,
    output,
    said,
    text,
    user,
)


def test_the_smallest_body() -> None:
    assert chat() == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_instructions_are_the_first_message() -> None:
    assert messages(user(text("q")), instructions="be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q"},
    ]


MESSAGE_TABLE = [
    pytest.param(
        [{"role": "user", "content": "plain"}],
        [{"role": "user", "content": "plain"}],
        id="easy message",
    ),
    pytest.param(
        [user(text("a"), text("b"))],
        [{"role": "user", "content": "a\n\nb"}],
        id="text parts joined",
    ),
    pytest.param(
        [{"type": "message", "role": "developer", "content": [text("rules")]}],
        [{"role": "system", "content": "rules"}],
        id="developer is system",
    ),
    pytest.param(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
        id="system",
    ),
    pytest.param(
        [
            user(
                text("what is this?"),
                {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
            )
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                ],
            }
        ],
        id="image",
    ),
    pytest.param(
        [user({"type": "input_image", "image_url": "https://x/cat.jpg", "detail": "original"})],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}}],
            }
        ],
        id="image with a detail chat lacks",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, said("a")],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        id="assistant output_text",
    ),
    pytest.param(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [text("a", "output_text"), {"type": "refusal", "refusal": "no"}],
            },
        ],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nno"}],
        id="refusal parts are text",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, REASONING, said("a")],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        id="reasoning dropped",
    ),
]


@pytest.mark.parametrize("items,expected", MESSAGE_TABLE)
def test_message_table(items: list[Any], expected: list[Any]) -> None:
    assert messages(*items) == expected


def test_calls_join_the_assistant_text_before_them_and_each_other() -> None:
    """An assistant message, then two calls with reasoning between them: one assistant
    message; the outputs are tool messages right after it."""
    assert messages(
        {"role": "user", "content": "weather in two cities?"},
        REASONING,
        said("Let me look."),
        call("c1", "weather", '{"city":"Zürich"}'),
        REASONING,
        call("c2", "weather", '{"city":"Bern"}'),
        output("c1", "sunny"),
        output("c2", "rain"),
        said("Sunny, and rain."),
    ) == [
        {"role": "user", "content": "weather in two cities?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                chat_call("c1", "weather", '{"city":"Zürich"}'),
                chat_call("c2", "weather", '{"city":"Bern"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "Sunny, and rain."},
    ]


def test_sequential_calls_are_separate_assistant_messages() -> None:
    assert messages(
        {"role": "user", "content": "q"},
        call("c1", "f", "{}"),
        output("c1", "one"),
        call("c2", "g", "{}"),
        output("c2", "two"),
    ) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [chat_call("c1", "f", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "assistant", "content": None, "tool_calls": [chat_call("c2", "g", "{}")]},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_an_empty_assistant_text_before_calls_becomes_null() -> None:
    empty = {"role": "assistant", "content": [text("", "output_text")]}
    assert messages({"role": "user", "content": "q"}, empty, call("c", "f", "{}"))[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [chat_call("c", "f", "{}")],
    }


def test_images_in_tool_outputs_follow_the_run_of_tool_messages() -> None:
    image = {"type": "input_image", "image_url": PNG_URL}
    assert messages(
        {"role": "user", "content": "look"},
        call("c1", "shot", "{}"),
        call("c2", "shot", "{}"),
        output("c1", [text("first"), image]),
        output("c2", [image]),
        output("c3", [text("a"), text("b")]),
        {"role": "user", "content": "and?"},
    ) == [
        {"role": "user", "content": "look"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [chat_call("c1", "shot", "{}"), chat_call("c2", "shot", "{}")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": f"first\n\n{IMAGES_FOLLOW}"},
        {"role": "tool", "tool_call_id": "c2", "content": IMAGES_FOLLOW},
        {"role": "tool", "tool_call_id": "c3", "content": "a\n\nb"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": IMAGES_OF.format(id="c1")},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "text", "text": IMAGES_OF.format(id="c2")},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ],
        },
        {"role": "user", "content": "and?"},
    ]


def test_images_of_the_last_tool_output_end_the_conversation() -> None:
    out = messages(
        call("c", "shot", "{}"), output("c", [{"type": "input_image", "image_url": PNG_URL}])
    )
    assert out[-1]["role"] == "user"
    assert out[-2] == {"role": "tool", "tool_call_id": "c", "content": IMAGES_FOLLOW}


GRAMMAR = 'start: "*** Begin Patch" LF /(.|\\n)*/ "*** End Patch"'


def test_custom_tools_are_functions_of_one_string_and_their_calls_are_wrapped() -> None:
    out = chat(
        input=[
            {"role": "user", "content": "add a file"},
            {
                "type": "custom_tool_call",
                "call_id": "c",
                "name": "apply_patch",
                "input": PATCH,
                "status": "completed",
            },
            {"type": "custom_tool_call_output", "call_id": "c", "output": "Done"},
        ],
        tools=[
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Edit files.",
                "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR},
            },
            {"type": "custom", "name": "note"},
        ],
    )
    arguments = json.dumps({CUSTOM_TOOL_ARGUMENT: PATCH}, separators=(",", ":"), ensure_ascii=False)
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [chat_call("c", "apply_patch", arguments)],
        },
        {"role": "tool", "tool_call_id": "c", "content": "Done"},
    ]
    assert json.loads(arguments) == {"input": PATCH}
    patch_tool, note_tool = out["tools"]
    assert patch_tool["function"]["name"] == "apply_patch"
    assert patch_tool["function"]["description"] == "Edit files."
    parameters = patch_tool["function"]["parameters"]
    assert parameters["required"] == ["input"] and parameters["additionalProperties"] is False
    assert parameters["properties"]["input"]["type"] == "string"
    assert parameters["properties"]["input"]["description"].endswith(f"lark grammar:\n{GRAMMAR}")
    assert note_tool == {
        "type": "function",
        "function": {
            "name": "note",
            "parameters": {
                "type": "object",
                "properties": {
                    "input": {
                        "type": "string",
                        "description": "The tool's whole input, as free text.",
                    }
                },
                "required": ["input"],
                "additionalProperties": False,
            },
        },
    }


def test_function_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert chat(
        tools=[
            {
                "type": "function",
                "name": "weather",
                "description": "Weather now.",
                "parameters": schema,
                "strict": True,
            },
            {"type": "function", "name": "ping", "parameters": None, "strict": None},
        ]
    )["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now.",
                "parameters": schema,
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        },
    ]


TOOL_CHOICE_TABLE = [
    pytest.param({"tool_choice": "auto"}, "auto", ["f", "p"], id="auto"),
    pytest.param({"tool_choice": "none"}, "none", ["f", "p"], id="none"),
    pytest.param({"tool_choice": "required"}, "required", ["f", "p"], id="required"),
    pytest.param(
        {"tool_choice": {"type": "function", "name": "f"}},
        {"type": "function", "function": {"name": "f"}},
        ["f", "p"],
        id="function",
    ),
    pytest.param(
        {"tool_choice": {"type": "custom", "name": "p"}},
        {"type": "function", "function": {"name": "p"}},
        ["f", "p"],
        id="custom",
    ),
    pytest.param(
        {
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "custom", "name": "p"}],
            }
        },
        "required",
        ["p"],
        id="allowed_tools required",
    ),
    pytest.param(
        {
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "f"}],
            }
        },
        "auto",
        ["f"],
        id="allowed_tools auto",
    ),
]


@pytest.mark.parametrize("fields,choice,names", TOOL_CHOICE_TABLE)
def test_tool_choice(fields: dict[str, Any], choice: Any, names: list[str]) -> None:
    out = chat(tools=TOOLS, parallel_tool_calls=False, **fields)
    assert out["tool_choice"] == choice
    assert [tool["function"]["name"] for tool in out["tools"]] == names
    assert out["parallel_tool_calls"] is False


def test_tool_choice_and_parallel_calls_without_tools_are_dropped() -> None:
    out = chat(tool_choice="required", parallel_tool_calls=True, tools=[])
    assert "tool_choice" not in out and "parallel_tool_calls" not in out and "tools" not in out
