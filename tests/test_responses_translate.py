"""OpenAI Responses ↔ Chat Completions (:mod:`gateway.dialects.responses_request`,
:mod:`gateway.dialects.responses_answer`, ``responses_stream``, ``responses_custom``): request bodies (and the history a
``previous_response_id`` expands to) to chat, chat answers and chat chunk streams back to
Responses, table by table; refusals name the field. Streams are checked event by event for
the Responses grammar and sequence numbers, every event and response is validated with the
``openai`` SDK's own models, and the SDK's stream accumulator — fed directly, and through
``client.responses.stream()`` — must arrive at the same response."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.responses_answer import chat_to_response
from gateway.dialects.responses_custom import custom_input
from gateway.dialects.responses_request import (
    CUSTOM_TOOL_ARGUMENT,
    IMAGES_FOLLOW,
    IMAGES_OF,
    input_items,
    responses_to_chat,
    validate_responses,
)
from gateway.dialects.responses_stream import ChatToResponsesStream
from gateway.errors import InvalidRequest, UpstreamProtocolError
from tests.test_anthropic_translate import INTERLEAVED

CODEX = Path(__file__).parent / "fixtures" / "codex_request.json"
PNG_URL = "data:image/png;base64,iVBORw0KGgo="
ITEM_ID = {p: re.compile(rf"{p}_[0-9a-f]{{48}}") for p in ("msg", "fc", "fco", "rs", "ctc", "ctco")}
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def request(**fields: Any) -> JSONObject:
    doc: JSONObject = {"model": "gpt-x", "input": "hi"}
    doc.update(fields)
    return doc


def chat(history: Iterable[Any] = (), **fields: Any) -> dict[str, Any]:
    """The chat body for ``request(**fields)``, which must pass validation first."""
    doc = request(**fields)
    validate_responses(doc)
    before = copy.deepcopy(doc)
    earlier = copy.deepcopy(list(history))
    out = responses_to_chat(doc, earlier)
    assert doc == before, "translation must not change the body it reads"
    assert earlier == list(history), "nor the history"
    return out


def messages(*items: Any, **fields: Any) -> list[Any]:
    out = chat(input=list(items), **fields)["messages"]
    assert isinstance(out, list)
    return out


def refused(*, history: Iterable[Any] = (), **fields: Any) -> InvalidRequest:
    doc = request(**fields)
    validate_responses(doc)
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat(doc, list(history))
    return caught.value


def user(*parts: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def text(value: str, kind: str = "input_text") -> dict[str, Any]:
    return {"type": kind, "text": value}


def said(value: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [text(value, "output_text")]}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def output(call_id: str, value: Any) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": value}


def chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


REASONING = {"type": "reasoning", "summary": [], "content": None, "encrypted_content": "gAAA"}


# --- request: messages --------------------------------------------------------------------


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


# --- request: tool calls ------------------------------------------------------------------


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


PATCH = '*** Begin Patch\n*** Add File: a.txt\n+héllo "x"\n*** End Patch\n'
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


TOOLS = [
    {"type": "function", "name": "f", "parameters": {"type": "object"}},
    {"type": "custom", "name": "p"},
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


# --- request: the rest --------------------------------------------------------------------

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


# --- request: refused ---------------------------------------------------------------------

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


# --- input items --------------------------------------------------------------------------


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


# --- answers ------------------------------------------------------------------------------


def answer(
    message: dict[str, Any], finish_reason: str | None = "stop", usage: Any = None
) -> JSONObject:
    doc: JSONObject = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        doc["usage"] = usage
    return doc


def respond(whole: JSONObject, req: JSONObject | None = None, **fields: Any) -> dict[str, Any]:
    out = chat_to_response(
        whole,
        response_id="resp_1",
        model="public",
        request=req or request(),
        created_at=1700000000,
        **fields,
    )
    sdk_response(out)
    return out


def sdk_response(doc: JSONObject) -> Any:
    """``doc`` validated with the SDK's ``Response`` model (skipped without the SDK)."""
    import openai.types.responses as responses

    return responses.Response.model_validate(doc)


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


# --- streams ------------------------------------------------------------------------------

Event = tuple[str, dict[str, Any]]


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **fields: Any) -> JSONObject:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice], **fields}


def usage_chunk(prompt: int, completion: int, **details: Any) -> JSONObject:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **details,
    }
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_delta(index: int, arguments: str | None = None, **fields: Any) -> JSONObject:
    function: dict[str, Any] = {}
    if "name" in fields:
        function["name"] = fields.pop("name")
    if arguments is not None:
        function["arguments"] = arguments
    return chunk({"tool_calls": [{"index": index, **fields, "function": function}]})


def parse(raw: bytes) -> Event:
    text = raw.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1, text
    head, data = text[:-2].split("\n")
    assert head.startswith("event: ") and data.startswith("data: ")
    doc = json.loads(data[len("data: ") :])
    assert doc["type"] == head[len("event: ") :]
    assert data == "data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return doc["type"], doc


def new_stream(req: JSONObject | None = None, **fields: Any) -> ChatToResponsesStream:
    return ChatToResponsesStream(
        response_id="resp_1",
        model="public",
        request=req or request(stream=True),
        created_at=1700000000,
        **fields,
    )


def run_stream(
    chunks: list[JSONObject], req: JSONObject | None = None, **fields: Any
) -> tuple[list[bytes], ChatToResponsesStream]:
    stream = new_stream(req, **fields)
    raw = stream.start()
    for doc in chunks:
        raw += stream.feed(doc)
    raw += stream.finish()
    return raw, stream


def check(raw: list[bytes], final: JSONObject) -> list[Event]:
    """The events of ``raw``, checked against the Responses grammar: sequence numbers from 0
    up by one, an opening of ``response.created`` and ``response.in_progress`` whose response
    is in progress and empty, items added and done one at a time with matching ids and
    indexes, deltas that add up to each ``.done``, and a terminal event whose response is
    ``final`` and whose output holds the items as they were done."""
    events = [parse(event) for event in raw]
    assert [doc["sequence_number"] for _, doc in events] == list(range(len(events)))
    assert [name for name, _ in events[:2]] == ["response.created", "response.in_progress"]
    for _, doc in events[:2]:
        assert doc["response"]["status"] == "in_progress" and doc["response"]["output"] == []
        assert doc["response"]["id"] == final["id"]
    item: dict[str, Any] | None = None
    part = False
    pieces: list[str] = []
    done: list[Any] = []
    for name, doc in events[2:-1]:
        if name == "keepalive":
            assert set(doc) == {"type", "sequence_number"}
            continue
        if name == "response.output_item.added":
            assert item is None and doc["output_index"] == len(done)
            item, pieces = doc["item"], []
            continue
        assert item is not None, name
        if name != "response.output_item.done":
            assert (doc["item_id"], doc["output_index"]) == (item["id"], len(done)), name
        if name == "response.content_part.added":
            assert (
                not part and item["type"] in ("message", "reasoning") and doc["content_index"] == 0
            )
            part = True
        elif name in ("response.output_text.delta", "response.reasoning_text.delta"):
            assert part and (name == "response.output_text.delta") == (item["type"] == "message")
            pieces.append(doc["delta"])
        elif name in ("response.output_text.done", "response.reasoning_text.done"):
            assert part and doc["text"] == "".join(pieces)
        elif name == "response.content_part.done":
            assert part and doc["part"]["text"] == "".join(pieces)
            part = False
        elif name == "response.function_call_arguments.delta":
            assert item["type"] == "function_call"
            pieces.append(doc["delta"])
        elif name == "response.function_call_arguments.done":
            assert doc["arguments"] == "".join(pieces)
        elif name == "response.custom_tool_call_input.delta":
            assert item["type"] == "custom_tool_call"
            pieces.append(doc["delta"])
        elif name == "response.custom_tool_call_input.done":
            assert doc["input"] == "".join(pieces)
        elif name == "response.output_item.done":
            assert not part and doc["output_index"] == len(done)
            assert (doc["item"]["id"], doc["item"]["type"]) == (item["id"], item["type"])
            done.append(doc["item"])
            item = None
        else:
            raise AssertionError(f"unexpected event {name}")
    name, last = events[-1]
    assert last["response"] == final
    if name == "response.failed":
        assert last["response"]["output"][: len(done)] == done
    else:
        assert item is None and name in ("response.completed", "response.incomplete")
        assert last["response"]["output"] == done
    return events


def sdk_accumulated(raw: list[bytes], req: JSONObject) -> Any:
    """``raw`` validated event by event with the SDK's ``ResponseStreamEvent`` and
    accumulated by the SDK's ``ResponseStreamState``; its completed response (or ``None``)."""
    import openai.types.responses as responses
    import pydantic
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState

    adapter = pydantic.TypeAdapter(responses.ResponseStreamEvent)
    state: Any = ResponseStreamState(input_tools=req.get("tools") or [], text_format=omit)
    for event in raw:
        _, doc = parse(event)
        if doc["type"] == "keepalive":  # no SDK model; the SDK's stream skips what it does not know
            continue
        state.handle_event(adapter.validate_python(doc))
    return state._completed_response


def same_as_sdk(ours: JSONObject, theirs: Any) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: plain(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")
            }
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    assert plain(theirs.to_dict()) == sdk_response(ours).to_dict()


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


def test_a_text_stream() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage_chunk(7, 2),
    ]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2][1]["item"]
    assert ITEM_ID["msg"].fullmatch(added["id"])
    assert added == {
        "id": added["id"],
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    assert events[3][1]["part"] == {"type": "output_text", "annotations": [], "text": ""}
    assert events[4][1] == {
        "type": "response.output_text.delta",
        "item_id": added["id"],
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 4,
    }
    final = stream.response
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 9
    assert final["output"] == [
        {
            "id": added["id"],
            "type": "message",
            "status": "completed",
            "content": [{"type": "output_text", "annotations": [], "text": "Hello"}],
            "role": "assistant",
        }
    ]
    whole = respond(
        answer({"content": "Hello"}, usage={"prompt_tokens": 7, "completion_tokens": 2}),
        request(stream=True),
    )
    assert final | {"output": []} == whole | {"output": []}
    same_as_sdk(final, sdk_accumulated(raw, request(stream=True)))


def test_reasoning_then_text() -> None:
    chunks = [
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
    ]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events)[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[3][1]["part"] == {"type": "reasoning_text", "text": ""}
    reasoning, message = stream.response["output"]
    assert ITEM_ID["rs"].fullmatch(reasoning["id"])
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert message["content"][0]["text"] == "42"
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


def test_text_then_calls_with_arguments_in_pieces() -> None:
    req = request(
        stream=True,
        tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
    )
    chunks = [
        chunk({"content": "Checking."}),
        tool_delta(0, "", id="call_a", type="function", name="weather"),
        tool_delta(0, '{"city":'),
        tool_delta(0, ' "Zürich"}'),
        tool_delta(1, '{"city":"Bern"}', id="call_b", type="function", name="weather"),
        chunk({}, "tool_calls"),
        usage_chunk(20, 10),
    ]
    raw, stream = run_stream(chunks, req)
    events = check(raw, stream.response)
    deltas = [
        doc["delta"] for name, doc in events if name == "response.function_call_arguments.delta"
    ]
    assert deltas == ['{"city":', ' "Zürich"}', '{"city":"Bern"}']
    _, first, second = stream.response["output"]
    assert (first["call_id"], first["arguments"], first["status"]) == (
        "call_a",
        '{"city": "Zürich"}',
        "completed",
    )
    assert (second["call_id"], second["arguments"]) == ("call_b", '{"city":"Bern"}')
    assert ITEM_ID["fc"].fullmatch(first["id"]) and first["id"] != second["id"]
    same_as_sdk(stream.response, sdk_accumulated(raw, req))


def test_a_custom_tool_streams_its_unwrapped_input() -> None:
    req = request(stream=True, tools=[{"type": "custom", "name": "apply_patch"}])
    arguments = json.dumps({"input": PATCH + "é😀"}, ensure_ascii=True)
    chunks = [tool_delta(0, "", id="call_p", name="apply_patch")]
    chunks += [tool_delta(0, arguments[i : i + 3]) for i in range(0, len(arguments), 3)]
    raw, stream = run_stream([*chunks, chunk({}, "tool_calls")], req)
    events = check(raw, stream.response)
    item = dict(stream.response["output"][0])
    assert ITEM_ID["ctc"].fullmatch(item.pop("id"))
    assert item == {
        "type": "custom_tool_call",
        "status": "completed",
        "input": PATCH + "é😀",
        "call_id": "call_p",
        "name": "apply_patch",
    }
    deltas = [
        doc["delta"] for name, doc in events if name == "response.custom_tool_call_input.delta"
    ]
    assert len(deltas) > 10 and all(deltas)
    same_as_sdk(stream.response, sdk_accumulated(raw, req))


HARD = 'a\\u00e9\\ud83d\\ude00 \\"q\\" \\\\ \\n\\t\\ud83d\\ude80 end'


@pytest.mark.parametrize("cut", range(len('{"input": "') + len(HARD) + 2))
def test_a_custom_input_split_at_every_point(cut: int) -> None:
    arguments = '{"input": "' + HARD + '"}'
    expected = json.loads(arguments)["input"]
    stream = new_stream(request(stream=True, tools=[{"type": "custom", "name": "p"}]))
    raw = stream.start()
    raw += stream.feed(tool_delta(0, arguments[:cut], id="c", name="p"))
    raw += stream.feed(tool_delta(0, arguments[cut:]))
    raw += stream.finish()
    check(raw, stream.response)
    assert stream.response["output"][0]["input"] == expected


def test_a_custom_call_of_another_shape_comes_whole_at_its_end() -> None:
    req = request(stream=True, tools=[{"type": "custom", "name": "p"}])
    raw, stream = run_stream(
        [tool_delta(0, '{"patch":', id="c", name="p"), tool_delta(0, ' "x"}')], req
    )
    events = check(raw, stream.response)
    assert [doc["delta"] for name, doc in events if name.endswith("input.delta")] == ["x"]
    assert stream.response["output"][0]["input"] == "x"


def test_a_call_without_id_gets_one_and_a_late_name_waits() -> None:
    chunks = [tool_delta(0, '{"a":'), tool_delta(0, "1}", name="f"), tool_delta(0, "")]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    (item,) = stream.response["output"]
    assert CALL_ID.fullmatch(item["call_id"]) and item["arguments"] == '{"a":1}'
    assert [doc["delta"] for name, doc in events if name.endswith("arguments.delta")] == [
        '{"a":',
        "1}",
    ]


def test_calls_without_an_index_are_told_apart_by_id() -> None:
    chunks = [
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
    ]
    raw, stream = run_stream(chunks)
    check(raw, stream.response)
    assert [(i["call_id"], i["arguments"]) for i in stream.response["output"]] == [
        ("c1", "{}"),
        ("c2", "{}"),
    ]


def test_parallel_calls_that_all_say_index_0_are_told_apart_by_id() -> None:
    # As Ollama and SGLang stream parallel calls: every one at index 0, each its own id; a
    # call's later pieces repeat its id, or carry none.
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "g"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
    ]
    raw, stream = run_stream(chunks)
    check(raw, stream.response)
    assert [(i["call_id"], i["name"], i["arguments"]) for i in stream.response["output"]] == [
        ("c1", "f", "{}"),
        ("c2", "g", '{"a":1}'),
    ]


def test_one_chunk_with_two_calls_and_the_legacy_function_call() -> None:
    two = chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}},
                {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}},
            ]
        }
    )
    raw, stream = run_stream([two])
    check(raw, stream.response)
    assert [i["name"] for i in stream.response["output"]] == ["f", "g"]
    raw, stream = run_stream([chunk({"function_call": {"name": "old", "arguments": "{}"}})])
    check(raw, stream.response)
    assert stream.response["output"][0]["name"] == "old"


def test_interleaved_parallel_calls_are_the_upstreams_fault_said_plainly() -> None:
    # Index 0, 1, 0: items go out one after another, so the answer fails saying why.
    with pytest.raises(UpstreamProtocolError, match="interleaved parallel tool calls: call 0"):
        run_stream([chunk(delta) for delta in INTERLEAVED])


def test_a_call_that_never_gets_a_name_is_the_upstreams_fault() -> None:
    stream = new_stream()
    stream.start()
    stream.feed(tool_delta(0, "{}", id="c"))
    with pytest.raises(UpstreamProtocolError, match="without a name"):
        stream.finish()


@pytest.mark.parametrize("chunks", [[], [chunk({"role": "assistant"}), chunk({}, "stop")]])
def test_an_empty_answer_has_no_output(chunks: list[JSONObject]) -> None:
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events) == ["response.created", "response.in_progress", "response.completed"]
    assert stream.response["output"] == [] and stream.response["usage"] is None
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


@pytest.mark.parametrize(
    "finish_reason,reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete(finish_reason: str, reason: str) -> None:
    raw, stream = run_stream(
        [
            chunk({"reasoning_content": "r"}),
            chunk({"content": "cut"}),
            chunk({}, finish_reason),
            usage_chunk(5, 16),
        ],
        request(stream=True, max_output_tokens=16),
    )
    events = check(raw, stream.response)
    assert names(events)[-1] == "response.incomplete"
    final = stream.response
    assert (final["status"], final["incomplete_details"], final["max_output_tokens"]) == (
        "incomplete",
        {"reason": reason},
        16,
    )
    assert final["output"][1]["status"] == "incomplete"
    sdk_accumulated(raw, request(stream=True))
    sdk_response(final)


def test_cached_and_reasoning_tokens_in_the_stream() -> None:
    details = {
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    _, stream = run_stream([chunk({"content": "x"}, "stop"), usage_chunk(10, 2, **details)])
    assert stream.response["usage"]["input_tokens_details"]["cached_tokens"] == 4
    assert stream.response["usage"]["output_tokens_details"]["reasoning_tokens"] == 1


def test_other_choices_are_ignored() -> None:
    other = {
        "id": "x",
        "choices": [{"index": 1, "delta": {"content": "no"}, "finish_reason": "length"}],
    }
    _, stream = run_stream([chunk({"content": "yes"}), other, chunk({}, "stop")])
    assert sdk_response(stream.response).output_text == "yes"
    assert stream.response["status"] == "completed"


@pytest.mark.parametrize(
    "error,message", [({"message": "boom", "code": 500}, "boom"), ("plain", "plain")]
)
def test_an_error_chunk_is_the_upstreams_failure(error: Any, message: str) -> None:
    stream = new_stream()
    stream.start()
    with pytest.raises(UpstreamProtocolError, match=message):
        stream.feed({"error": error})


def test_keepalive_events_are_numbered_into_the_stream() -> None:
    stream = new_stream()
    with pytest.raises(RuntimeError):
        stream.keepalive()
    raw = stream.start()
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "a"}))
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "b"}, "stop"))
    raw += stream.finish()
    events = check(raw, stream.response)
    assert names(events)[2] == "keepalive" and events[2][1] == {
        "type": "keepalive",
        "sequence_number": 2,
    }
    with pytest.raises(RuntimeError):
        stream.keepalive()
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


def test_failed_ends_the_stream_with_what_was_done() -> None:
    stream = new_stream()
    raw = stream.start()
    raw += stream.feed(chunk({"content": "partial"}))
    raw += stream.feed(tool_delta(0, "{", id="c", name="f"))
    raw += stream.failed("server_error", "upstream reset the connection")
    events = check(raw, stream.response)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "upstream reset the connection"}
    message, call_item = failed["output"]
    assert message["status"] == "completed" and message["content"][0]["text"] == "partial"
    assert (call_item["status"], call_item["arguments"]) == ("incomplete", "{")
    assert stream.response is failed or stream.response == failed
    sdk_accumulated(raw, request(stream=True))
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "more"}))
    with pytest.raises(RuntimeError):
        stream.failed("server_error", "again")


def test_calls_out_of_order_are_bugs() -> None:
    stream = new_stream()
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "x"}))
    with pytest.raises(RuntimeError):
        stream.finish()
    stream.start()
    with pytest.raises(RuntimeError):
        stream.start()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "x"}))
    with pytest.raises(RuntimeError):
        stream.finish()


def test_text_is_utf8_and_a_lone_surrogate_is_escaped() -> None:
    stream = new_stream()
    stream.start()
    *_, delta = stream.feed(chunk({"content": "é"}))
    assert b'"delta":"\xc3\xa9"' in delta
    (lone,) = stream.feed(chunk({"content": "\ud83d"}))
    assert b'"delta":"\\ud83d"' in lone


def test_the_sdks_stream_helper_reads_a_translated_stream() -> None:
    """``client.responses.stream()`` of the ``openai`` SDK, its bytes served by an in-memory
    transport: keepalive events between the others, a function call and text, and
    ``get_final_response()`` equal to the translator's final response."""
    import httpx
    import openai

    tools = [
        {
            "type": "function",
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        }
    ]
    req = request(stream=True, tools=tools)
    stream = new_stream(req)
    raw = stream.start()
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "Looking."}))
    raw.append(stream.keepalive())
    raw += stream.feed(tool_delta(0, '{"city":"Bern"}', id="call_1", name="weather"))
    raw += stream.feed(chunk({}, "tool_calls"))
    raw += stream.feed(usage_chunk(3, 4))
    raw += stream.finish()
    check(raw, stream.response)

    def serve(_: Any) -> Any:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(raw)
        )

    with httpx.Client(transport=httpx.MockTransport(serve)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", http_client=http)
        with client.responses.stream(model="gpt-x", input="hi", tools=tools) as events:
            kinds = [event.type for event in events]
            final = events.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    same_as_sdk(stream.response, final)
    assert final.output_text == "Looking."
    assert final.output[1].parsed_arguments == {"city": "Bern"}
