"""Anthropic Messages requests to chat (:mod:`gateway.dialects.anthropic_request`): messages
and their blocks, tools and parameters, table by table; what chat cannot carry is refused
with its field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.anthropic_request import (
    IMAGES_FOLLOW,
    IMAGES_OF,
    TOOL_ERROR_PREFIX,
    messages_to_chat,
)
from gateway.dialects.anthropic_validate import validate_messages
from gateway.errors import InvalidRequest
from tests.anthropic_helpers import (
    PNG,
    PNG_URL,
    assistant,
    chat,
    messages,
    request,
    text,
    tool_result,
    tool_use,
    user,
)


def test_the_smallest_body() -> None:
    assert chat() == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "stream": False,
    }


@pytest.mark.parametrize(
    "system,expected",
    [
        ("be brief", "be brief"),
        ([text("one")], "one"),
        ([text("one"), {**text("two"), "cache_control": {"type": "ephemeral"}}], "one\n\ntwo"),
    ],
)
def test_system_becomes_the_first_message(system: Any, expected: str) -> None:
    assert chat(system=system)["messages"] == [
        {"role": "system", "content": expected},
        {"role": "user", "content": "hi"},
    ]


MESSAGE_TABLE = [
    pytest.param(
        [{"role": "user", "content": "plain"}],
        [{"role": "user", "content": "plain"}],
        id="user string",
    ),
    pytest.param(
        [user(text("a"), text("b"))],
        [{"role": "user", "content": "a\n\nb"}],
        id="user text blocks joined",
    ),
    pytest.param(
        [user(text("what is this?"), {"type": "image", "source": PNG})],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL}},
                ],
            }
        ],
        id="image base64",
    ),
    pytest.param(
        [user({"type": "image", "source": {"type": "url", "url": "https://x/cat.jpg"}})],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}}],
            }
        ],
        id="image url",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        id="assistant string",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, assistant(text("a"), text("b"))],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nb"}],
        id="assistant text blocks joined",
    ),
    pytest.param(
        [
            {"role": "user", "content": "q"},
            assistant(
                {"type": "thinking", "thinking": "first", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                text("answer"),
            ),
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "answer", "reasoning_content": "first"},
        ],
        id="thinking to reasoning_content, redacted dropped",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, assistant({"type": "redacted_thinking", "data": "x"})],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        id="assistant of redacted thinking only",
    ),
    pytest.param(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        id="prefill kept as the last assistant message",
    ),
    pytest.param(
        [{"role": "system", "content": [text("late")]}, {"role": "user", "content": "q"}],
        [{"role": "system", "content": "late"}, {"role": "user", "content": "q"}],
        id="system role message",
    ),
]


@pytest.mark.parametrize("turns,expected", MESSAGE_TABLE)
def test_message_table(turns: list[Any], expected: list[Any]) -> None:
    assert messages(*turns) == {"messages": expected}


def test_a_tool_round_trip() -> None:
    """tool_use → tool_calls (compact JSON, non-ASCII kept), tool_result → a tool message
    right after, then the rest of the user turn."""
    out = messages(
        {"role": "user", "content": "weather?"},
        assistant(
            {"type": "thinking", "thinking": "use the tool", "signature": "s"},
            text("Let me look."),
            tool_use("toolu_a", "weather", {"city": "Zürich", "days": [1, 2]}),
        ),
        user(tool_result("toolu_a", "sunny"), text("thanks")),
    )
    assert out["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Zürich","days":[1,2]}'},
                }
            ],
            "reasoning_content": "use the tool",
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]


def test_tool_calls_without_text_have_null_content() -> None:
    out = messages(
        {"role": "user", "content": "q"},
        assistant(tool_use("toolu_a", "f", {}), tool_use("toolu_b", "g", {"x": None})),
    )
    answer = out["messages"][1]
    assert answer["content"] is None
    calls = answer["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_a", "toolu_b"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{}, {"x": None}]


def test_tool_results_come_first_in_their_order() -> None:
    """Several results in one turn, even after the text, become tool messages first."""
    out = messages(
        {"role": "user", "content": "q"},
        assistant(tool_use("t1", "f", {}), tool_use("t2", "f", {}), tool_use("t3", "f", {})),
        user(
            text("here you go"),
            tool_result("t1", "one"),
            tool_result("t2", [text("two"), text("lines")]),
            tool_result("t3"),
        ),
    )
    assert out["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "two\n\nlines"},
        {"role": "tool", "tool_call_id": "t3", "content": ""},
        {"role": "user", "content": "here you go"},
    ]


@pytest.mark.parametrize(
    "content,expected",
    [
        ("file not found", "Error: file not found"),
        ([text("boom")], "Error: boom"),
        (None, "Error"),
    ],
)
def test_a_failed_tool_result_says_so(content: Any, expected: str) -> None:
    assert TOOL_ERROR_PREFIX == "Error: "
    out = messages(
        {"role": "user", "content": "q"},
        assistant(tool_use("t1", "f", {})),
        user(tool_result("t1", content, is_error=True)),
    )
    assert out["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": expected}]


def test_is_error_false_changes_nothing() -> None:
    out = messages(
        {"role": "user", "content": "q"},
        assistant(tool_use("t1", "f", {})),
        user(tool_result("t1", "fine", is_error=False)),
    )
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "fine"}


def test_images_of_a_tool_result_follow_in_a_user_message() -> None:
    out = messages(
        {"role": "user", "content": "screenshot please"},
        assistant(tool_use("t1", "shot", {}), tool_use("t2", "shot", {})),
        user(
            tool_result("t1", [text("a window"), {"type": "image", "source": PNG}]),
            tool_result("t2", [{"type": "image", "source": {"type": "url", "url": "https://x/2"}}]),
            text("what do you see?"),
        ),
    )
    assert out["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": f"a window\n\n{IMAGES_FOLLOW}"},
        {"role": "tool", "tool_call_id": "t2", "content": IMAGES_FOLLOW},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": IMAGES_OF.format(id="t1")},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "text", "text": IMAGES_OF.format(id="t2")},
                {"type": "image_url", "image_url": {"url": "https://x/2"}},
                {"type": "text", "text": "what do you see?"},
            ],
        },
    ]


SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def test_tools_become_functions() -> None:
    out = chat(
        tools=[
            {"name": "search", "description": "Find things", "input_schema": SCHEMA},
            {
                "type": "custom",
                "name": "bare",
                "input_schema": {"type": "object"},
                "strict": True,
                "cache_control": {"type": "ephemeral"},
            },
        ]
    )
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "search", "description": "Find things", "parameters": SCHEMA},
        },
        {
            "type": "function",
            "function": {"name": "bare", "parameters": {"type": "object"}, "strict": True},
        },
    ]


TOOLS = [{"name": "search", "input_schema": SCHEMA}]


@pytest.mark.parametrize(
    "choice,expected",
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "search"},
            {"tool_choice": {"type": "function", "function": {"name": "search"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": False},
            {"tool_choice": "required"},
        ),
        (
            {"type": "tool", "name": "search", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "search"}},
                "parallel_tool_calls": False,
            },
        ),
    ],
)
def test_tool_choice(choice: JSONObject, expected: JSONObject) -> None:
    out = chat(tools=TOOLS, tool_choice=choice)
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


@pytest.mark.parametrize("tools", [None, []])
def test_no_tools_no_tool_fields(tools: Any) -> None:
    """Nothing to choose from: ``tool_choice`` goes too (chat servers refuse it alone)."""
    out = chat(tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys()


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({"stop_sequences": ["END", "###"]}, {"stop": ["END", "###"]}),
        ({"stop_sequences": []}, {}),
        (
            {"temperature": 0.2, "top_p": 0.9, "top_k": 40},
            {"temperature": 0.2, "top_p": 0.9, "top_k": 40},
        ),
        ({"temperature": 0}, {"temperature": 0}),
        ({"metadata": {"user_id": "u-7"}}, {"user": "u-7"}),
        ({"metadata": {}}, {}),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            {"chat_template_kwargs": {"enable_thinking": True}},
        ),
        ({"thinking": {"type": "adaptive"}}, {"chat_template_kwargs": {"enable_thinking": True}}),
        ({"thinking": {"type": "disabled"}}, {"chat_template_kwargs": {"enable_thinking": False}}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {}),
        (
            {
                "output_config": {
                    "format": {"type": "json_schema", "schema": SCHEMA},
                    "effort": "low",
                }
            },
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
                }
            },
        ),
        (
            {"output_format": {"type": "json_schema", "schema": SCHEMA}},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
                }
            },
        ),
        # Hints with no effect a chat backend could honour are dropped.
        (
            {
                "service_tier": "auto",
                "cache_control": {"type": "ephemeral"},
                "speed": "fast",
                "inference_geo": "us",
                "output_config": {"effort": "high"},
            },
            {},
        ),
        # A field that is no Anthropic field is the client's word to the backend.
        ({"cache_prompt": False}, {"cache_prompt": False}),
    ],
)
def test_parameters(fields: JSONObject, expected: JSONObject) -> None:
    base = chat()
    out = chat(**fields)
    added = {k: v for k, v in out.items() if base.get(k) != v}
    assert added == expected
    assert out["max_tokens"] == 64 and out["model"] == "claude-x"


REFUSED = [
    (request(messages=[user({"type": "document", "source": {}})]), "messages.0.content.0.type"),
    (request(messages=[user({"type": "search_result"})]), "messages.0.content.0.type"),
    (request(messages=[user({"type": "container_upload"})]), "messages.0.content.0.type"),
    (
        request(
            messages=[
                {"role": "user", "content": "q"},
                assistant({"type": "server_tool_use", "id": "s", "name": "web_search"}),
            ]
        ),
        "messages.1.content.0.type",
    ),
    (
        request(
            messages=[
                {"role": "user", "content": "q"},
                assistant(text("a"), {"type": "web_search_tool_result"}),
            ]
        ),
        "messages.1.content.1.type",
    ),
    (
        request(messages=[{"role": "user", "content": "q"}, assistant({"type": "mcp_tool_use"})]),
        "messages.1.content.0.type",
    ),
    (
        request(messages=[{"role": "user", "content": "q"}, assistant({"type": "compaction"})]),
        "messages.1.content.0.type",
    ),
    (
        request(messages=[user({"type": "image", "source": {"type": "file", "file_id": "f"}})]),
        "messages.0.content.0.source.type",
    ),
    (
        request(messages=[user(tool_result("t", [{"type": "document"}]))]),
        "messages.0.content.0.content.0.type",
    ),
    (
        request(
            messages=[user(text("a"), tool_result("t", [text("x"), {"type": "search_result"}]))]
        ),
        "messages.0.content.1.content.1.type",
    ),
    (
        request(
            messages=[
                user(
                    tool_result(
                        "t", [{"type": "image", "source": {"type": "file", "file_id": "f"}}]
                    )
                )
            ]
        ),
        "messages.0.content.0.content.0.source.type",
    ),
    # Blocks chat has, in a turn that cannot hold them.
    (
        request(
            messages=[{"role": "user", "content": "q"}, assistant({"type": "image", "source": PNG})]
        ),
        "messages.1.content.0.type",
    ),
    (request(messages=[user(tool_use("t", "f", {}))]), "messages.0.content.0.type"),
    (
        request(messages=[{"role": "user", "content": "q"}, assistant(tool_result("t", "x"))]),
        "messages.1.content.0.type",
    ),
    (
        request(messages=[user({"type": "thinking", "thinking": "x", "signature": ""})]),
        "messages.0.content.0.type",
    ),
    # Server tools: their schema is Anthropic's, not in the request.
    (request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (
        request(
            tools=[{"name": "f", "input_schema": {}}, {"type": "bash_20250124", "name": "bash"}]
        ),
        "tools.1.type",
    ),
    (request(tools=[{"type": "mcp_toolset", "mcp_server_name": "s"}]), "tools.0.type"),
    # Anthropic service features with an effect.
    (request(mcp_servers=[{"type": "url", "url": "https://m", "name": "m"}]), "mcp_servers"),
    (request(container="container_1"), "container"),
    (request(context_management={"strategy": "x"}), "context_management"),
    (
        request(
            context_management={
                "edits": [{"type": "clear_thinking_20251015"}, {"type": "compact_20260112"}]
            }
        ),
        "context_management.edits.1",
    ),
    (request(output_config={"format": {"type": "text"}}), "output_config.format"),
]


def test_context_edits_that_only_clear_are_dropped() -> None:
    # As Claude Code sends them: the backend reads the whole conversation instead.
    edits = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": "all"},
            {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1}},
        ]
    }
    chat = messages_to_chat(request(context_management=edits))
    assert "context_management" not in chat
    assert chat == messages_to_chat(request())


@pytest.mark.parametrize("doc,param", REFUSED, ids=[p for _, p in REFUSED])
def test_what_chat_cannot_carry_is_refused(doc: JSONObject, param: str) -> None:
    validate_messages(doc)  # a valid Messages body: only translation refuses it
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(doc)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


@pytest.mark.parametrize(
    "doc,words",
    [
        (REFUSED[0][0], "a document block cannot be translated"),
        (REFUSED[7][0], "an image given by file id"),
        (REFUSED[15][0], "the server tool 'web_search_20250305' cannot be translated"),
        (REFUSED[18][0], "mcp_servers (an Anthropic service feature) cannot be translated"),
        (REFUSED[12][0], "a tool_use block cannot be in a user message"),
    ],
)
def test_refusals_say_what_and_why(doc: JSONObject, words: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        messages_to_chat(doc)
