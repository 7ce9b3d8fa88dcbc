"""Anthropic Messages bodies checked (:mod:`gateway.dialects.anthropic_validate`): every
refusal names the bad field's dotted path, as ``param`` and at the head of the message
(Anthropic's error shape has no ``param``); every documented shape passes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.anthropic_validate import (
    BLOCK_TYPES,
    validate_count_tokens,
    validate_messages,
)
from gateway.errors import InvalidRequest, MissingField

BASE: JSONObject = {
    "model": "claude-x",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def body(**fields: Any) -> JSONObject:
    """:data:`BASE` with ``fields`` set (``None`` removes a field)."""
    doc = copy.deepcopy(BASE)
    for name, value in fields.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def user(*blocks: Any) -> list[Any]:
    """``messages`` of one user turn whose content is ``blocks``."""
    return [{"role": "user", "content": list(blocks)}]


def tool_result(**fields: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": "toolu_1", **fields}


# --- refused, with the path ---------------------------------------------------------------

MISSING = [
    (body(model=None), "model"),
    (body(max_tokens=None), "max_tokens"),
    (body(messages=None), "messages"),
    (body(messages=[{"content": "hi"}]), "messages.0.role"),
    (body(messages=[{"role": "user"}]), "messages.0.content"),
    (body(messages=user({"text": "x"})), "messages.0.content.0.type"),
    (body(messages=user({"type": "text"})), "messages.0.content.0.text"),
    (body(messages=user({"type": "image"})), "messages.0.content.0.source"),
    (
        body(messages=user({"type": "image", "source": {"type": "base64", "data": "x"}})),
        "messages.0.content.0.source.media_type",
    ),
    (
        body(messages=user({"type": "image", "source": {"type": "url"}})),
        "messages.0.content.0.source.url",
    ),
    (
        body(messages=user({"type": "tool_use", "name": "f", "input": {}})),
        "messages.0.content.0.id",
    ),
    (
        body(messages=user({"type": "tool_use", "id": "t", "name": "f"})),
        "messages.0.content.0.input",
    ),
    (body(messages=user({"type": "tool_result"})), "messages.0.content.0.tool_use_id"),
    (
        body(messages=user(tool_result(content=[{"type": "text"}]))),
        "messages.0.content.0.content.0.text",
    ),
    (body(messages=user({"type": "thinking", "signature": ""})), "messages.0.content.0.thinking"),
    (body(system=[{"type": "text"}]), "system.0.text"),
    (body(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (body(tools=[{"input_schema": {}}]), "tools.0.name"),
    (body(tool_choice={"type": "tool"}), "tool_choice.name"),
    (body(tool_choice={}), "tool_choice.type"),
    (body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
]

INVALID = [
    (body(model=""), "model"),
    (body(model=5), "model"),
    (body(max_tokens=0), "max_tokens"),
    (body(max_tokens=-1), "max_tokens"),
    (body(max_tokens=True), "max_tokens"),
    (body(max_tokens=1.5), "max_tokens"),
    (body(max_tokens="64"), "max_tokens"),
    (body(messages=[]), "messages"),
    (body(messages={"role": "user"}), "messages"),
    (body(messages=["hi"]), "messages.0"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (body(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (body(messages=[{"role": "user", "content": ""}]), "messages.0.content"),
    (body(messages=[{"role": "user", "content": []}]), "messages.0.content"),
    (
        body(messages=[{"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]),
        "messages.0.content",
    ),
    (body(messages=user("text")), "messages.0.content.0"),
    (body(messages=user({"type": "video"})), "messages.0.content.0.type"),
    (body(messages=user({"type": 3})), "messages.0.content.0.type"),
    (
        body(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "x"}]},
            ]
        ),
        "messages.2.content.1.type",
    ),
    (body(messages=user({"type": "text", "text": 5})), "messages.0.content.0.text"),
    (body(messages=user({"type": "image", "source": "x"})), "messages.0.content.0.source"),
    (
        body(messages=user({"type": "image", "source": {"type": "path", "path": "/x"}})),
        "messages.0.content.0.source.type",
    ),
    (
        body(messages=user({"type": "image", "source": {**PNG, "media_type": "image/bmp"}})),
        "messages.0.content.0.source.media_type",
    ),
    (
        body(messages=user({"type": "tool_use", "id": "t", "name": 5, "input": {}})),
        "messages.0.content.0.name",
    ),
    (
        body(messages=user({"type": "tool_use", "id": "", "name": "f", "input": {}})),
        "messages.0.content.0.id",
    ),
    (
        body(messages=user({"type": "tool_use", "id": "t", "name": "f", "input": [1]})),
        "messages.0.content.0.input",
    ),
    (body(messages=user(tool_result(is_error="yes"))), "messages.0.content.0.is_error"),
    (body(messages=user(tool_result(content=5))), "messages.0.content.0.content"),
    (
        body(messages=user(tool_result(content=[{"type": "tool_use"}]))),
        "messages.0.content.0.content.0.type",
    ),
    (
        body(messages=user(tool_result(content=[{"type": "image", "source": {"type": "x"}}]))),
        "messages.0.content.0.content.0.source.type",
    ),
    (
        body(messages=[{"role": "system", "content": [{"type": "image", "source": PNG}]}]),
        "messages.0.content.0.type",
    ),
    (body(system=5), "system"),
    (body(system=[{"type": "image", "source": PNG}]), "system.0.type"),
    (body(stream="yes"), "stream"),
    (body(stop_sequences="END"), "stop_sequences"),
    (body(stop_sequences=["END", 5]), "stop_sequences.1"),
    (body(temperature=1.5), "temperature"),
    (body(temperature=-0.1), "temperature"),
    (body(temperature="0.5"), "temperature"),
    (body(temperature=True), "temperature"),
    (body(top_p=2), "top_p"),
    (body(top_k=-1), "top_k"),
    (body(top_k=1.5), "top_k"),
    (body(tools={"name": "f"}), "tools"),
    (body(tools=[1]), "tools.0"),
    (body(tools=[{"name": "", "input_schema": {}}]), "tools.0.name"),
    (body(tools=[{"name": "f", "input_schema": []}]), "tools.0.input_schema"),
    (body(tools=[{"name": "f", "input_schema": {}, "description": 5}]), "tools.0.description"),
    (body(tools=[{"type": 5, "name": "f"}]), "tools.0.type"),
    (body(tool_choice="auto"), "tool_choice"),
    (body(tool_choice={"type": "required"}), "tool_choice.type"),
    (body(tool_choice={"type": "tool", "name": ""}), "tool_choice.name"),
    (
        body(tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
        "tool_choice.disable_parallel_tool_use",
    ),
    (body(metadata=["u"]), "metadata"),
    (body(metadata={"user_id": 5}), "metadata.user_id"),
    (body(thinking=True), "thinking"),
    (body(thinking={"type": "on"}), "thinking.type"),
    (body(thinking={"type": "enabled", "budget_tokens": 1023}), "thinking.budget_tokens"),
    (body(thinking={"type": "enabled", "budget_tokens": "2048"}), "thinking.budget_tokens"),
]


@pytest.mark.parametrize("doc,param", MISSING, ids=[p for _, p in MISSING])
def test_a_missing_field_is_named(doc: JSONObject, param: str) -> None:
    with pytest.raises(MissingField) as caught:
        validate_messages(doc)
    assert caught.value.param == param
    assert caught.value.message == f"{param}: field required"


@pytest.mark.parametrize("doc,param", INVALID, ids=[p for _, p in INVALID])
def test_an_invalid_field_is_named(doc: JSONObject, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_messages(doc)
    assert not isinstance(caught.value, MissingField)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


# --- accepted -----------------------------------------------------------------------------


def test_the_model_and_stream_are_returned() -> None:
    assert validate_messages(BASE) == ("claude-x", False)
    assert validate_messages(body(stream=True)) == ("claude-x", True)
    assert validate_messages(body(stream=False)) == ("claude-x", False)


# One minimal block of every documented type whose fields translation does not read.
OTHER_BLOCKS = {
    kind: {"type": kind}
    for kind in BLOCK_TYPES - {"text", "image", "thinking", "tool_use", "tool_result"}
}

ACCEPTED = [
    body(),
    body(stream=None, system=None, tools=None, tool_choice=None, metadata=None, thinking=None),
    body(system="be brief"),
    body(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]),
    body(messages=user({"type": "text", "text": "a"}, {"type": "image", "source": PNG})),
    body(messages=user({"type": "image", "source": {"type": "url", "url": "https://x/y.png"}})),
    body(messages=user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})),
    body(messages=user(tool_result())),
    body(messages=user(tool_result(content="ok", is_error=True))),
    body(
        messages=user(
            tool_result(
                content=[
                    {"type": "text", "text": "a"},
                    {"type": "image", "source": PNG},
                    {"type": "search_result"},
                    {"type": "document"},
                ]
            )
        )
    ),
    body(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                ],
            },
        ]
    ),
    body(messages=user(*OTHER_BLOCKS.values())),
    # Prefill: the final assistant message may be empty.
    body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]),
    body(messages=[{"role": "system", "content": "later"}, {"role": "user", "content": "q"}]),
    body(stop_sequences=["END", ""], temperature=1, top_p=0.0, top_k=0),
    body(metadata={"user_id": None}),
    body(metadata={"user_id": "u-1"}),
    body(
        tools=[
            {"name": "f", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "g", "description": "G", "input_schema": {}},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "mcp_toolset", "mcp_server_name": "s"},
        ]
    ),
    *(body(tool_choice={"type": kind}) for kind in ("auto", "any", "none")),
    body(tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
    body(thinking={"type": "enabled", "budget_tokens": 1024}),
    body(thinking={"type": "disabled"}),
    body(thinking={"type": "adaptive"}),
    body(service_tier="auto", cache_control={"type": "ephemeral"}, speed="fast"),
]


@pytest.mark.parametrize("doc", ACCEPTED)
def test_documented_shapes_pass(doc: JSONObject) -> None:
    assert validate_messages(doc) == ("claude-x", False)


def test_the_block_types_are_anthropics() -> None:
    """The known types are exactly the ones of the SDK's content block params (its API
    and beta unions), the pinned SDK."""
    import typing

    import anthropic.types as types
    import anthropic.types.beta as beta

    def tags(union: Any) -> set[str]:
        """The ``type`` tags of a (possibly annotated, nested) union of block classes."""
        if typing.get_origin(union) is typing.Annotated:
            return tags(typing.get_args(union)[0])
        if typing.get_origin(union) is typing.Union:
            return set().union(*(tags(member) for member in typing.get_args(union)))
        fields = getattr(union, "model_fields", None)  # a response block, sent back
        tag = fields["type"].annotation if fields else typing.get_type_hints(union)["type"]
        return set(typing.get_args(tag))

    assert tags(types.ContentBlockParam) | tags(beta.BetaContentBlockParam) == BLOCK_TYPES


# --- count_tokens -------------------------------------------------------------------------


def test_count_tokens_needs_no_max_tokens_and_returns_the_model() -> None:
    assert validate_count_tokens(body(max_tokens=None)) == "claude-x"


@pytest.mark.parametrize(
    "doc,param",
    [
        (body(max_tokens=None, model=None), "model"),
        (body(max_tokens=None, messages=[]), "messages"),
        (body(max_tokens=None, messages=user({"type": "x"})), "messages.0.content.0.type"),
        (body(max_tokens=None, system=5), "system"),
        (body(max_tokens=None, tools=[{"name": "f"}]), "tools.0.input_schema"),
        (body(max_tokens=None, tool_choice={"type": "x"}), "tool_choice.type"),
        (
            body(max_tokens=None, thinking={"type": "enabled", "budget_tokens": 5}),
            "thinking.budget_tokens",
        ),
    ],
)
def test_count_tokens_checks_the_prompt(doc: JSONObject, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_count_tokens(doc)
    assert caught.value.param == param
