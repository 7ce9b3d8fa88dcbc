"""OpenAI Responses bodies checked (:mod:`gateway.dialects.responses_request`): every refusal
names the bad field's dotted path, as ``param`` and at the head of the message; what the
gateway cannot serve for any backend (background runs, conversations, saved prompts, item
references) is refused as such; every documented shape, and Codex's requests, pass."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.responses_validate import (
    ITEM_TYPES,
    TOOL_TYPES,
    validate_input_tokens,
    validate_responses,
)
from gateway.errors import InvalidRequest, MissingField

CODEX = Path(__file__).parent / "fixtures" / "codex_request.json"
BASE: JSONObject = {"model": "gpt-x", "input": "hi"}


def body(**fields: Any) -> JSONObject:
    """:data:`BASE` with ``fields`` set (``None`` removes a field)."""
    doc = copy.deepcopy(BASE)
    for name, value in fields.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def items(*entries: Any) -> JSONObject:
    return body(input=list(entries))


def user(*parts: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def codex() -> JSONObject:
    doc = json.loads(CODEX.read_text())
    assert isinstance(doc, dict)
    return doc


# --- refused, with the path ---------------------------------------------------------------

MISSING = [
    (body(model=None), "model"),
    (body(input=None), "input"),
    (items({"type": "message", "content": "x"}), "input.0.role"),
    (items({"type": "message", "role": "user"}), "input.0.content"),
    (items(user({"text": "x"})), "input.0.content.0.type"),
    (items(user({"type": "input_text"})), "input.0.content.0.text"),
    (items(user({"type": "input_image", "detail": "low"})), "input.0.content.0.image_url"),
    (items(user({"type": "input_file"})), "input.0.content.0.file_id"),
    (items({"role": "assistant", "content": [{"type": "refusal"}]}), "input.0.content.0.refusal"),
    (items({"type": "function_call", "name": "f", "arguments": "{}"}), "input.0.call_id"),
    (items({"type": "function_call", "call_id": "c", "arguments": "{}"}), "input.0.name"),
    (items({"type": "function_call", "call_id": "c", "name": "f"}), "input.0.arguments"),
    (items({"type": "function_call_output", "call_id": "c"}), "input.0.output"),
    (items({"type": "function_call_output", "output": "x"}), "input.0.call_id"),
    (items({"type": "custom_tool_call", "call_id": "c", "name": "f"}), "input.0.input"),
    (items({"type": "custom_tool_call_output", "call_id": "c"}), "input.0.output"),
    (
        items({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text"}]}),
        "input.0.output.0.text",
    ),
    (items({"type": "reasoning", "summary": [{"type": "summary_text"}]}), "input.0.summary.0.text"),
    (body(tools=[{"name": "f"}]), "tools.0.type"),
    (body(tools=[{"type": "function"}]), "tools.0.name"),
    (body(tools=[{"type": "custom"}]), "tools.0.name"),
    (body(tools=[{"type": "custom", "name": "p", "format": {}}]), "tools.0.format.type"),
    (
        body(
            tools=[{"type": "custom", "name": "p", "format": {"type": "grammar", "syntax": "lark"}}]
        ),
        "tools.0.format.definition",
    ),
    (body(tool_choice={}), "tool_choice.type"),
    (body(tool_choice={"type": "function"}), "tool_choice.name"),
    (body(tool_choice={"type": "allowed_tools", "tools": []}), "tool_choice.mode"),
    (body(tool_choice={"type": "allowed_tools", "mode": "auto"}), "tool_choice.tools"),
    (body(text={"format": {"type": "json_schema", "schema": {}}}), "text.format.name"),
    (body(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
    (body(text={"format": {}}), "text.format.type"),
]


@pytest.mark.parametrize("doc,param", MISSING)
def test_missing_fields(doc: JSONObject, param: str) -> None:
    with pytest.raises(MissingField) as caught:
        validate_responses(doc)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


INVALID = [
    (body(model=""), "model"),
    (body(model=3), "model"),
    (body(input=3), "input"),
    (body(input={"role": "user"}), "input"),
    (items("hi"), "input.0"),
    (items({"type": "nonsense"}), "input.0.type"),
    (items({"type": "message", "role": "tool", "content": "x"}), "input.0.role"),
    (items({"type": "message", "role": "user", "content": 3}), "input.0.content"),
    (items(user({"type": "video"})), "input.0.content.0.type"),
    (items(user({"type": "input_text", "text": 1})), "input.0.content.0.text"),
    (items(user({"type": "input_image", "image_url": 1})), "input.0.content.0.image_url"),
    (
        items({"type": "function_call", "call_id": "", "name": "f", "arguments": ""}),
        "input.0.call_id",
    ),
    (
        items({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}),
        "input.0.arguments",
    ),
    (
        items(
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "output_text"}]}
        ),
        "input.0.output.0.type",
    ),
    (items({"type": "function_call_output", "call_id": "c", "output": 5}), "input.0.output"),
    (items({"type": "reasoning", "summary": "x"}), "input.0.summary"),
    (items({"type": "reasoning", "summary": ""}), "input.0.summary"),
    (items({"type": "reasoning", "content": 0}), "input.0.content"),
    (items({"type": 0, "role": "user", "content": "x"}), "input.0.type"),
    (items({"type": True, "role": "user", "content": "x"}), "input.0.type"),
    (items({"type": [], "role": "user", "content": "x"}), "input.0.type"),
    (
        items({"type": "reasoning", "summary": [], "encrypted_content": 1}),
        "input.0.encrypted_content",
    ),
    (body(previous_response_id=1), "previous_response_id"),
    (body(instructions=["x"]), "instructions"),
    (body(tools={}), "tools"),
    (body(tools=[{"type": "telepathy"}]), "tools.0.type"),
    (body(tools=[{"type": "function", "name": "f", "parameters": []}]), "tools.0.parameters"),
    (body(tools=[{"type": "function", "name": "f", "strict": "yes"}]), "tools.0.strict"),
    (body(tools=[{"type": "function", "name": "f", "description": 1}]), "tools.0.description"),
    (
        body(
            tools=[
                {
                    "type": "custom",
                    "name": "p",
                    "format": {"type": "grammar", "syntax": "ebnf", "definition": ""},
                }
            ]
        ),
        "tools.0.format.syntax",
    ),
    (body(tool_choice="any"), "tool_choice"),
    (body(tool_choice={"type": "mind_reading"}), "tool_choice.type"),
    (body(tool_choice={"type": "allowed_tools", "mode": "all", "tools": []}), "tool_choice.mode"),
    (body(parallel_tool_calls="yes"), "parallel_tool_calls"),
    (body(text={"verbosity": "loud"}), "text.verbosity"),
    (body(text={"format": {"type": "yaml"}}), "text.format.type"),
    (body(reasoning={"effort": "extreme"}), "reasoning.effort"),
    (body(reasoning={"summary": "brief"}), "reasoning.summary"),
    (body(max_output_tokens=0), "max_output_tokens"),
    (body(max_output_tokens=1.5), "max_output_tokens"),
    (body(max_output_tokens=True), "max_output_tokens"),
    (body(temperature=2.5), "temperature"),
    (body(temperature=True), "temperature"),
    (body(top_p=1.5), "top_p"),
    (body(top_logprobs=21), "top_logprobs"),
    (body(stream="yes"), "stream"),
    (body(store=1), "store"),
    (body(user=1), "user"),
    (body(truncation="sometimes"), "truncation"),
    (body(include=[1]), "include.0"),
    (body(metadata={"k": 1}), "metadata.k"),
    (body(metadata={"x" * 65: "v"}), "metadata." + "x" * 65),
    (body(metadata={str(i): "v" for i in range(17)}), "metadata"),
    (body(background="yes"), "background"),
]


@pytest.mark.parametrize("doc,param", INVALID)
def test_invalid_fields(doc: JSONObject, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_responses(doc)
    assert not isinstance(caught.value, MissingField)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


UNSUPPORTED = [
    (body(background=True), "background"),
    (body(conversation="conv_1"), "conversation"),
    (body(conversation={"id": "conv_1"}), "conversation"),
    (body(prompt={"id": "pmpt_1"}), "prompt"),
    (items({"type": "item_reference", "id": "msg_1"}), "input.0"),
    (items(user({"type": "input_text", "text": "x"}), {"id": "msg_1"}), "input.1"),
]


@pytest.mark.parametrize("doc,param", UNSUPPORTED)
def test_what_no_backend_behind_the_gateway_serves_is_refused_as_such(
    doc: JSONObject, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_responses(doc)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    assert "not supported by this gateway" in caught.value.message


def test_an_item_reference_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(InvalidRequest, match="send the item itself"):
        validate_responses(items({"type": "item_reference", "id": "msg_1"}))


# --- accepted -----------------------------------------------------------------------------


def test_the_smallest_bodies() -> None:
    assert validate_responses(body()) == ("gpt-x", False)
    assert validate_responses(body(stream=True)) == ("gpt-x", True)
    assert validate_responses(body(stream=False, background=False)) == ("gpt-x", False)
    assert validate_responses(body(input=None, previous_response_id="resp_1")) == ("gpt-x", False)
    assert validate_responses(body(input=[])) == ("gpt-x", False)


def test_a_codex_request_passes() -> None:
    doc = codex()
    before = copy.deepcopy(doc)
    assert validate_responses(doc) == ("gpt-5-codex", True)
    assert validate_input_tokens(doc) == "gpt-5-codex"
    assert doc == before


ACCEPTED = [
    pytest.param(body(max_output_tokens=1), id="max_output_tokens below OpenAI's 16"),
    pytest.param(body(temperature=0, top_p=1, top_logprobs=0), id="sampling bounds"),
    pytest.param(body(temperature=2.0, top_p=0.0), id="sampling bounds, floats"),
    pytest.param(
        items(
            {"role": "user", "content": "easy message"},
            {"role": "developer", "content": "typeless developer"},
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "s"}]},
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "phase": "final_answer",
                "content": [
                    {"type": "output_text", "text": "a", "annotations": []},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
        ),
        id="messages of every role",
    ),
    pytest.param(
        items(
            user(
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "high"},
                {"type": "input_image", "file_id": "file_1"},
                {"type": "input_file", "file_url": "https://x/a.pdf"},
                {"type": "input_file", "file_data": "JVBERi0=", "filename": "a.pdf"},
            )
        ),
        id="images and files",
    ),
    pytest.param(
        items(
            {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": ""},
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [
                    {"type": "input_text", "text": "t"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                ],
            },
            {"type": "custom_tool_call", "call_id": "d", "name": "p", "input": "raw"},
            {"type": "custom_tool_call_output", "call_id": "d", "output": ""},
        ),
        id="calls and outputs",
    ),
    pytest.param(
        items(
            {"type": "reasoning", "summary": [], "content": None, "encrypted_content": None},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "s"}],
                "content": [{"type": "reasoning_text", "text": "t"}],
            },
            {"type": "reasoning"},
        ),
        id="reasoning items",
    ),
    pytest.param(
        body(
            tools=[
                {"type": "function", "name": "f"},
                {"type": "function", "name": "g", "parameters": None, "strict": None},
                {"type": "custom", "name": "p"},
                {"type": "custom", "name": "q", "format": {"type": "text"}},
                {
                    "type": "custom",
                    "name": "r",
                    "format": {"type": "grammar", "syntax": "regex", "definition": "\\d+"},
                },
                {"type": "web_search"},
                {"type": "mcp", "server_label": "x"},
            ],
            tool_choice={
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "f"}],
            },
            parallel_tool_calls=False,
        ),
        id="tools of every kind",
    ),
    pytest.param(body(tool_choice={"type": "custom", "name": "p"}), id="tool_choice custom"),
    pytest.param(body(tool_choice={"type": "web_search_preview"}), id="tool_choice hosted"),
    pytest.param(
        body(
            text={
                "format": {"type": "json_schema", "name": "n", "schema": {}, "strict": True},
                "verbosity": "high",
            }
        ),
        id="json_schema",
    ),
    pytest.param(body(text={"format": {"type": "json_object"}}), id="json_object"),
    pytest.param(body(reasoning={"effort": "none", "summary": None}), id="effort none"),
    pytest.param(body(reasoning={"effort": "xhigh", "summary": "detailed"}), id="effort xhigh"),
    pytest.param(body(reasoning=None, text=None, tools=None, tool_choice=None), id="nulls"),
    pytest.param(
        body(
            metadata={"k": "v"},
            user="u",
            safety_identifier="s",
            prompt_cache_key="k",
            include=["reasoning.encrypted_content"],
            truncation="auto",
            service_tier="flex",
            store=False,
            client_metadata={"x": "y"},
            cache_prompt=True,
        ),
        id="hints and other fields",
    ),
]


@pytest.mark.parametrize("doc", ACCEPTED)
def test_documented_shapes_pass(doc: JSONObject) -> None:
    before = copy.deepcopy(doc)
    assert validate_responses(doc)[0] == "gpt-x"
    assert doc == before


@pytest.mark.parametrize("kind", sorted(ITEM_TYPES - {"item_reference"}))
def test_every_documented_item_type_passes_the_checks(kind: str) -> None:
    item: dict[str, Any] = {"type": kind, "call_id": "c", "name": "f", "arguments": "", "input": ""}
    item |= {"output": "", "role": "user", "content": "x"}
    if kind == "reasoning":
        del item["content"]
    assert validate_responses(items(item))[0] == "gpt-x"


@pytest.mark.parametrize("kind", sorted(TOOL_TYPES))
def test_every_documented_tool_type_passes_the_checks(kind: str) -> None:
    tool: dict[str, Any] = {"type": kind, "name": "f"}
    if kind == "namespace":  # a group of function and custom tools
        tool["tools"] = [{"type": "function", "name": "g"}]
    assert validate_responses(body(tools=[tool]))[0] == "gpt-x"


# --- input_tokens -------------------------------------------------------------------------


def test_input_tokens_checks_the_prompt_only() -> None:
    assert validate_input_tokens(body()) == "gpt-x"
    assert validate_input_tokens(body(max_output_tokens=0, stream="x")) == "gpt-x"
    for doc, param in [
        (body(model=None), "model"),
        (body(conversation="c"), "conversation"),
        (items({"id": "msg_1"}), "input.0"),
        (body(tools=[{"type": "function"}]), "tools.0.name"),
        (body(text={"format": {"type": "yaml"}}), "text.format.type"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            validate_input_tokens(doc)
        assert caught.value.param == param
