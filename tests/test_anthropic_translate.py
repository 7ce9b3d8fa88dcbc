"""Anthropic Messages ↔ Chat Completions (:mod:`gateway.dialects.anthropic_request`,
:mod:`gateway.dialects.anthropic_answer`): request bodies to chat, chat answers and chat
chunk streams back to Messages, table by table; refusals name the field. Streams are
checked event by event for Anthropic's grammar, and, where the ``anthropic`` SDK is
installed, parsed and accumulated by the SDK's own code."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.anthropic_answer import ChatToMessagesStream, chat_to_message
from gateway.dialects.anthropic_request import (
    IMAGES_FOLLOW,
    IMAGES_OF,
    TOOL_ERROR_PREFIX,
    messages_to_chat,
)
from gateway.dialects.anthropic_validate import validate_messages
from gateway.dialects.base import Tokens
from gateway.dialects.messages import MessagesFromChat
from gateway.errors import InvalidRequest, UpstreamProtocolError

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PNG_URL = "data:image/png;base64,iVBORw0KGgo="
TOOL_ID = re.compile(r"toolu_[A-Za-z0-9]{24}")


def request(**fields: Any) -> JSONObject:
    doc: JSONObject = {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    doc.update(fields)
    return doc


def chat(**fields: Any) -> dict[str, Any]:
    """The chat body for ``request(**fields)``, which must pass validation first."""
    doc = request(**fields)
    validate_messages(doc)
    before = copy.deepcopy(doc)
    out = messages_to_chat(doc)
    assert doc == before, "translation must not change the body it reads"
    return out


def messages(*turns: Any) -> dict[str, Any]:
    """The chat messages for Messages ``turns``."""
    out = chat(messages=list(turns))["messages"]
    assert isinstance(out, list)
    return {"messages": out}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def tool_result(id: str, content: Any = None, **fields: Any) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": id, **fields}
    if content is not None:
        block["content"] = content
    return block


# --- request: messages --------------------------------------------------------------------


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


# --- request: tools and parameters --------------------------------------------------------

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


# --- request: refusals --------------------------------------------------------------------

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


# --- answers: whole -----------------------------------------------------------------------


def completion(message: Any, finish_reason: Any = "stop", **fields: Any) -> JSONObject:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, **fields}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "local-gguf",
        "choices": [choice],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def to_message(answer: JSONObject, stop_sequences: Iterable[str] = ()) -> dict[str, Any]:
    return chat_to_message(
        answer, message_id="msg_1", model="claude-x", stop_sequences=tuple(stop_sequences)
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
STOP_REASONS = [
    ("stop", None, (), False, "end_turn", None),
    (None, None, (), False, "end_turn", None),
    ("stop", "END", ("END", "###"), False, "stop_sequence", "END"),
    ("stop", "OTHER", ("END",), False, "end_turn", None),
    ("stop", 151643, ("END",), False, "end_turn", None),  # vLLM: a stop token id
    ("length", None, (), False, "max_tokens", None),
    ("length", None, (), True, "max_tokens", None),
    ("tool_calls", None, (), True, "tool_use", None),
    ("function_call", None, (), True, "tool_use", None),
    ("tool_calls", None, (), False, "end_turn", None),  # no call to answer: no tool_use
    ("stop", None, (), True, "tool_use", None),  # vLLM's forced tool call ends with stop
    ("content_filter", None, (), False, "refusal", None),
    ("something_new", None, (), False, "end_turn", None),
]


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


# --- answers: streams ---------------------------------------------------------------------

Event = tuple[str, dict[str, Any]]


def chunk(delta: JSONObject, finish_reason: Any = None, **fields: Any) -> JSONObject:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, **fields}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def usage_chunk(prompt: int, completion: int) -> JSONObject:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


ROLE = chunk({"role": "assistant", "content": ""})


def parse(raw: bytes) -> Event:
    """One whole SSE event of Anthropic's: its name, and its data (whose type it is)."""
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1, raw
    head, data = raw[:-2].split(b"\n")
    assert head.startswith(b"event: ") and data.startswith(b"data: "), raw
    name, doc = head[7:].decode(), json.loads(data[6:])
    assert doc["type"] == name
    assert data[6:].decode() == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return name, doc


def run_stream(
    chunks: list[JSONObject], stop_sequences: tuple[str, ...] = (), raw: list[bytes] | None = None
) -> list[Event]:
    stream = ChatToMessagesStream(
        message_id="msg_1", model="claude-x", stop_sequences=stop_sequences
    )
    out: list[bytes] = []
    for item in chunks:
        out += stream.feed(item)
    out += stream.finish()
    if raw is not None:
        raw.extend(out)
    return [parse(event) for event in out]


def names(events: list[Event]) -> list[str]:
    """Event names, with the block index and delta type where they have them."""
    out = []
    for name, doc in events:
        if name == "content_block_start":
            name = f"start {doc['index']} {doc['content_block']['type']}"
        elif name == "content_block_delta":
            name = f"delta {doc['index']} {doc['delta']['type']}"
        elif name == "content_block_stop":
            name = f"stop {doc['index']}"
        out.append(name)
    return out


def test_a_text_stream() -> None:
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    assert stream.feed(ROLE) == []
    first = [parse(e) for e in stream.feed(chunk({"content": "Hel"}))]
    assert first == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
    ]
    assert [parse(e) for e in stream.feed(chunk({"content": "lo"}))] == [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        )
    ]
    assert stream.feed(chunk({}, "stop")) == []
    assert stream.feed(usage_chunk(9, 2)) == []
    assert (stream.input_tokens, stream.output_tokens) == (9, 2)
    assert [parse(e) for e in stream.finish()] == [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 9, "output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_reasoning_then_text() -> None:
    events = run_stream(
        [
            ROLE,
            chunk({"reasoning_content": "Let me"}),
            chunk({"reasoning_content": " think."}),
            chunk({"content": "Done", "reasoning_content": None}),
            chunk({}, "stop"),
        ]
    )
    assert names(events) == [
        "message_start",
        "start 0 thinking",
        "delta 0 thinking_delta",
        "delta 0 thinking_delta",
        "stop 0",
        "start 1 text",
        "delta 1 text_delta",
        "stop 1",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e[1]["delta"]["thinking"] for e in events[2:4]] == ["Let me", " think."]


def tool_delta(index: int, arguments: str | None = None, **fields: Any) -> JSONObject:
    call: dict[str, Any] = {"index": index, **fields}
    function = {}
    if "name" in fields:
        function["name"] = call.pop("name")
    if arguments is not None:
        function["arguments"] = arguments
    call["function"] = function
    return chunk({"tool_calls": [call]})


TWO_TOOLS = [
    ROLE,
    chunk({"content": "Checking both."}),
    tool_delta(0, "", id="call_a", type="function", name="weather"),
    tool_delta(0, '{"ci'),
    tool_delta(0, 'ty": "Zür'),
    tool_delta(0, 'ich"}'),
    tool_delta(1, '{"tz":', id="call_b", type="function", name="time"),
    tool_delta(1, ' "CET"}'),
    chunk({}, "tool_calls"),
    usage_chunk(30, 20),
]


def test_text_then_two_tool_calls_with_arguments_in_pieces() -> None:
    events = run_stream(TWO_TOOLS)
    assert names(events) == [
        "message_start",
        "start 0 text",
        "delta 0 text_delta",
        "stop 0",
        "start 1 tool_use",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "stop 1",
        "start 2 tool_use",
        "delta 2 input_json_delta",
        "delta 2 input_json_delta",
        "stop 2",
        "message_delta",
        "message_stop",
    ]
    starts = [doc["content_block"] for name, doc in events if name == "content_block_start"]
    assert starts[1:] == [
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {}},
    ]
    pieces: dict[int, list[str]] = {1: [], 2: []}
    for name, doc in events:
        if name == "content_block_delta" and doc["delta"]["type"] == "input_json_delta":
            pieces[doc["index"]].append(doc["delta"]["partial_json"])
    assert pieces == {1: ['{"ci', 'ty": "Zür', 'ich"}'], 2: ['{"tz":', ' "CET"}']}
    assert json.loads("".join(pieces[1])) == {"city": "Zürich"}
    assert json.loads("".join(pieces[2])) == {"tz": "CET"}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 30, "output_tokens": 20},
    }


def test_a_tool_call_without_id_gets_one_and_late_names_wait() -> None:
    """No id: one is made. Arguments before the name: held until the block can start."""
    events = run_stream(
        [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert names(events) == [
        "message_start",
        "start 0 tool_use",
        "delta 0 input_json_delta",
        "delta 0 input_json_delta",
        "stop 0",
        "message_delta",
        "message_stop",
    ]
    block = events[1][1]["content_block"]
    assert TOOL_ID.fullmatch(block["id"]) and block["name"] == "f"
    assert [e[1]["delta"]["partial_json"] for e in events[2:4]] == ['{"a"', ":1}"]


def test_tool_calls_without_an_index_are_told_apart_by_id() -> None:
    events = run_stream(
        [
            chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}),
            chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
        ]
    )
    assert names(events)[1:8] == [
        "start 0 tool_use",
        "delta 0 input_json_delta",
        "stop 0",
        "start 1 tool_use",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "stop 1",
    ]


# Two tool calls, one argument piece each, as two blocks.
TWO_TOOL_BLOCKS = [
    "start 0 tool_use",
    "delta 0 input_json_delta",
    "stop 0",
    "start 1 tool_use",
    "delta 1 input_json_delta",
    "stop 1",
]


def test_parallel_tool_calls_that_all_say_index_0_are_told_apart_by_id() -> None:
    # As Ollama and SGLang stream parallel calls: every one at index 0, each its own id; a
    # call's later pieces repeat its id, or carry none.
    events = run_stream(
        [
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{}"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "g"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
        ]
    )
    starts = [e[1]["content_block"] for e in events if e[0] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("c1", "f"), ("c2", "g")]
    assert names(events)[1:7] == TWO_TOOL_BLOCKS


# Parallel calls whose pieces take turns (index 0, 1, 0, 1): blocks go out one after
# another, so the answer fails saying why (it said "a tool call without a name").
INTERLEAVED = [
    {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]},
    {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
]


def test_interleaved_parallel_tool_calls_are_the_upstreams_fault_said_plainly() -> None:
    with pytest.raises(UpstreamProtocolError, match="interleaved parallel tool calls: call 0"):
        run_stream([chunk(delta) for delta in INTERLEAVED])


def test_one_chunk_with_two_tool_calls() -> None:
    events = run_stream(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
                        {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}},
                    ]
                },
                "tool_calls",
            )
        ]
    )
    assert names(events)[1:7] == TWO_TOOL_BLOCKS


def test_a_tool_call_that_never_gets_a_name_is_the_upstreams_fault() -> None:
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    stream.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}))
    with pytest.raises(UpstreamProtocolError, match="without a name"):
        stream.finish()


@pytest.mark.parametrize(
    "chunks",
    [[], [ROLE], [ROLE, chunk({}, "stop"), usage_chunk(4, 0)], [chunk({"content": None}, "stop")]],
)
def test_an_empty_answer_is_a_whole_message(chunks: list[JSONObject]) -> None:
    events = run_stream(chunks)
    assert names(events) == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_a_length_stop() -> None:
    events = run_stream([ROLE, chunk({"content": "trunc"}), chunk({}, "length"), usage_chunk(5, 1)])
    assert names(events)[-3:] == ["stop 0", "message_delta", "message_stop"]
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 1}


def test_cached_prompt_tokens_in_the_stream() -> None:
    usage: JSONObject = {
        "prompt_tokens": 50,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 40},
    }
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.feed({"choices": [], "usage": usage})
    assert (stream.input_tokens, stream.output_tokens, stream.cache_read_input_tokens) == (
        10,
        3,
        40,
    )
    events = [parse(e) for e in stream.finish()]
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 0,
        "cache_read_input_tokens": 40,
    }
    assert events[1][1]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_read_input_tokens": 40,
    }


def test_other_choices_are_ignored() -> None:
    other: JSONObject = {"index": 1, "delta": {"content": "nope"}, "finish_reason": None}
    events = run_stream([{"choices": [other]}, chunk({"content": "yes"})])
    assert [doc["delta"]["text"] for name, doc in events if name == "content_block_delta"] == [
        "yes"
    ]


@pytest.mark.parametrize(
    "error,message",
    [
        (
            {"message": "out of memory", "type": "server_error"},
            "upstream failed mid-stream: out of memory",
        ),
        ("boom", "upstream failed mid-stream: boom"),
    ],
)
def test_an_error_chunk_is_the_upstreams_failure(error: Any, message: str) -> None:
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.feed(chunk({"content": "partial"}))
    with pytest.raises(UpstreamProtocolError, match=f"^{re.escape(message)}$"):
        stream.feed({"error": error})


def test_feeding_after_the_end_is_a_bug() -> None:
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(ROLE)
    with pytest.raises(RuntimeError):
        stream.finish()


def test_text_is_utf8_and_a_lone_surrogate_is_escaped() -> None:
    raw: list[bytes] = []
    run_stream([chunk({"content": "Zürich 🙂"})], raw=raw)
    assert "Zürich 🙂".encode() in raw[2]
    stream = ChatToMessagesStream(message_id="m", model="x")
    events = stream.feed(chunk({"content": "half \ud83d"}))
    assert events[-1].endswith(b'"text":"half \\ud83d"}}\n\n')
    assert json.loads(events[-1].split(b"data: ")[1])["delta"]["text"] == "half \ud83d"


def test_a_whole_answer_with_a_lone_surrogate_is_escaped() -> None:
    # An answer cut inside a surrogate pair, as an upstream escapes it, cannot be UTF-8.
    answer = (
        b'{"id":"c","object":"chat.completion","model":"up","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"cut \\ud83d"},"finish_reason":"length"}]}'
    )
    body = MessagesFromChat("msg_1", "m").whole(answer, Tokens())
    assert b'"text":"cut \\ud83d"' in body
    assert json.loads(body)["content"] == [{"type": "text", "text": "cut \ud83d"}]


# --- the anthropic SDK reads what the gateway writes --------------------------------------


def sdk_final_message(raw: list[bytes]) -> Any:
    """The SDK's own SSE decoder, event types and accumulator over ``raw``."""
    import anthropic
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    seen = []
    for sse in SSEDecoder().iter_bytes(iter([b"".join(raw)])):
        event = adapter.validate_python(sse.json())
        assert event.type == sse.event
        seen.append(event.type)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert seen[0] == "message_start" and seen[-1] == "message_stop"
    return snapshot


def test_the_sdk_accumulates_a_tool_stream() -> None:
    raw: list[bytes] = []
    run_stream(TWO_TOOLS, raw=raw)
    message = sdk_final_message(raw)
    assert message.id == "msg_1" and message.model == "claude-x"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Checking both."
    assert (message.content[1].id, message.content[1].name) == ("call_a", "weather")
    assert message.content[1].input == {"city": "Zürich"}
    assert message.content[2].input == {"tz": "CET"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 20)


def test_the_sdk_accumulates_thinking_and_a_stop_sequence() -> None:
    raw: list[bytes] = []
    run_stream(
        [
            chunk({"reasoning_content": "so"}),
            chunk({"content": "A"}),
            chunk({"content": "B"}),
            chunk({}, "stop", stop_reason="END"),
            usage_chunk(3, 3),
        ],
        stop_sequences=("END",),
        raw=raw,
    )
    message = sdk_final_message(raw)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "so" and message.content[1].text == "AB"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_the_sdk_reads_an_empty_stream_and_a_whole_message() -> None:
    raw: list[bytes] = []
    run_stream([], raw=raw)
    assert sdk_final_message(raw).content == []
    import anthropic

    whole = to_message(
        completion(
            {
                "role": "assistant",
                "content": "x",
                "reasoning_content": "r",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"k":[1]}'}}],
            },
            "tool_calls",
            stop_reason=None,
        )
    )
    message = anthropic.types.Message.model_validate(whole)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"k": [1]}


def test_fields_that_are_no_anthropic_field_go_on_to_the_backend() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "cache_prompt": True,
        "grammar": "root ::= x",
        "service_tier": "auto",
    }
    chat = messages_to_chat(body)
    assert chat["cache_prompt"] is True and chat["grammar"] == "root ::= x"
    assert "service_tier" not in chat and chat["max_tokens"] == 5


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '{"a": NaN}'])
def test_streamed_tool_arguments_that_are_not_an_object_end_the_stream_as_an_error(
    arguments: str,
) -> None:
    # As for a whole answer: the block never closes as if its input were good (the SDK's
    # messages.stream() raised a plain ValueError after a clean message_stop).
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments}}
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    stream.feed(ROLE)
    stream.feed(chunk({"tool_calls": [call]}))
    stream.feed(chunk({}, "tool_calls"))
    with pytest.raises(UpstreamProtocolError, match="'f' with arguments that are not a JSON"):
        stream.finish()


def test_content_as_a_list_of_parts_is_text_streamed_and_whole() -> None:
    # Mistral sends content parts; they were dropped, the answer ending clean and empty.
    parts = [{"type": "text", "text": "PA"}, {"type": "text", "text": "RTS"}]
    events = run_stream([ROLE, chunk({"content": parts}), chunk({}, "stop")])
    deltas = [doc["delta"]["text"] for name, doc in events if name == "content_block_delta"]
    assert deltas == ["PARTS"]
    message = to_message(completion({"role": "assistant", "content": parts}))
    assert message["content"] == [{"type": "text", "text": "PARTS"}]


def test_streamed_arguments_sent_as_an_object_are_the_input() -> None:
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    events = run_stream([ROLE, chunk({"tool_calls": [call]}), chunk({}, "tool_calls")])
    deltas = [doc["delta"] for name, doc in events if name == "content_block_delta"]
    assert deltas == [{"type": "input_json_delta", "partial_json": '{"a":1}'}]


def test_token_counts_no_upstream_could_mean_are_not_taken() -> None:
    events = run_stream([ROLE, chunk({"content": "x"}, "stop"), usage_chunk(10**500, 2)])
    [(_, delta)] = [(n, d) for n, d in events if n == "message_delta"]
    assert delta["usage"]["input_tokens"] == 0 and delta["usage"]["output_tokens"] == 2
