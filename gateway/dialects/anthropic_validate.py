"""Anthropic Messages request bodies, checked the way Anthropic's API checks them.

:func:`validate_messages` and :func:`validate_count_tokens` check a ``POST /v1/messages``
(or ``/v1/messages/count_tokens``) body and raise :class:`~gateway.errors.InvalidRequest`
(:class:`~gateway.errors.MissingField` for an absent required field) whose ``param`` is the
dotted path of the bad field (``messages.2.content.0``) and whose message starts with that
path: Anthropic's error shape has no ``param``, so the message is all a client sees. A
required field given as ``null`` is refused as a wrong value, not as an absent one.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

from ..abc import JSONObject, JSONValue
from .checks import array_at, invalid, object_at, required, string_at

__all__ = ["BLOCK_TYPES", "validate_count_tokens", "validate_messages"]

# Every block type Anthropic documents in a message's content (its API and betas).
BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "advisor_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "compaction",
        "tool_addition",
        "tool_removal",
        "mcp_tool_listing",
        "fallback",
    }
)
# What a tool result's content may hold.
TOOL_RESULT_BLOCK_TYPES = frozenset(
    {"text", "image", "search_result", "document", "tool_reference", "browser_state"}
)
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
ROLES = ("user", "assistant", "system")
THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive", "between_tools"})
TOOL_CHOICE_TYPES = frozenset({"auto", "any", "tool", "none"})


def _required(doc: JSONObject, key: str, path: str) -> JSONValue:
    return required(doc, key, path, null_is_missing=False)


def _string(doc: JSONObject, key: str, path: str, *, nonempty: bool = False) -> str:
    return string_at(doc, key, path, null_is_missing=False, nonempty=nonempty)


def _is_int_from(value: JSONValue, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_fraction(value: JSONValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _kind(block: JSONValue, path: str, known: frozenset[str]) -> str:
    """The ``type`` of a content block, which must be one of ``known``."""
    doc = object_at(block, path)
    kind = _string(doc, "type", path)
    if kind not in known:
        invalid(f"{path}.type", f"unknown content block type {kind!r}")
    return kind


def _check_image(block: JSONObject, path: str) -> None:
    source = object_at(_required(block, "source", path), f"{path}.source")
    where = f"{path}.source"
    kind = _string(source, "type", where)
    if kind == "base64":
        media = _string(source, "media_type", where)
        if media not in IMAGE_MEDIA_TYPES:
            invalid(f"{where}.media_type", f"must be one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}")
        _string(source, "data", where)
    elif kind == "url":
        _string(source, "url", where, nonempty=True)
    elif kind == "file":
        _string(source, "file_id", where, nonempty=True)
    else:
        invalid(f"{where}.type", 'must be "base64", "url" or "file"')


def _check_tool_result(block: JSONObject, path: str) -> None:
    _string(block, "tool_use_id", path, nonempty=True)
    if "is_error" in block and not isinstance(block["is_error"], bool):
        invalid(f"{path}.is_error", "must be a boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    for i, inner in enumerate(array_at(content, f"{path}.content")):
        where = f"{path}.content.{i}"
        _check_fields(_kind(inner, where, TOOL_RESULT_BLOCK_TYPES), object_at(inner, where), where)


def _check_fields(kind: str, block: JSONObject, path: str) -> None:
    """The fields of the block types that translation reads."""
    if kind == "text":
        _string(block, "text", path)
    elif kind == "image":
        _check_image(block, path)
    elif kind == "thinking":
        _string(block, "thinking", path)
    elif kind == "tool_use":
        _string(block, "id", path, nonempty=True)
        _string(block, "name", path, nonempty=True)
        object_at(_required(block, "input", path), f"{path}.input")
    elif kind == "tool_result":
        _check_tool_result(block, path)


def _check_content(content: JSONValue, path: str, *, known: frozenset[str]) -> None:
    if isinstance(content, str):
        return
    for i, block in enumerate(array_at(content, path)):
        where = f"{path}.{i}"
        _check_fields(_kind(block, where, known), object_at(block, where), where)


def _check_messages(body: JSONObject) -> None:
    messages = array_at(_required(body, "messages", ""), "messages")
    if not messages:
        invalid("messages", "must hold at least one message")
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        doc = object_at(message, path)
        role = _string(doc, "role", path)
        if role not in ROLES:
            invalid(f"{path}.role", 'must be "user", "assistant" or "system"')
        content = _required(doc, "content", path)
        known = frozenset({"text"}) if role == "system" else BLOCK_TYPES
        _check_content(content, f"{path}.content", known=known)
        last_assistant = role == "assistant" and i == len(messages) - 1
        if not content and not last_assistant:
            invalid(
                f"{path}.content",
                "must not be empty (only the final assistant message may be empty)",
            )


def _check_system(body: JSONObject) -> None:
    if body.get("system") is not None:
        _check_content(body["system"], "system", known=frozenset({"text"}))


def _check_tool(tool: JSONValue, path: str) -> None:
    doc = object_at(tool, path)
    kind = doc.get("type")
    if kind is None or kind == "custom":
        _string(doc, "name", path, nonempty=True)
        object_at(_required(doc, "input_schema", path), f"{path}.input_schema")
        if doc.get("description") is not None and not isinstance(doc["description"], str):
            invalid(f"{path}.description", "must be a string")
    elif not isinstance(kind, str) or not kind:
        invalid(f"{path}.type", "must be a non-empty string")


def _check_tools(body: JSONObject) -> None:
    if body.get("tools") is not None:
        for i, tool in enumerate(array_at(body["tools"], "tools")):
            _check_tool(tool, f"tools.{i}")
    if body.get("tool_choice") is None:
        return
    choice = object_at(body["tool_choice"], "tool_choice")
    kind = _string(choice, "type", "tool_choice")
    if kind not in TOOL_CHOICE_TYPES:
        invalid("tool_choice.type", 'must be "auto", "any", "tool" or "none"')
    if kind == "tool":
        _string(choice, "name", "tool_choice", nonempty=True)
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        invalid("tool_choice.disable_parallel_tool_use", "must be a boolean")


def _check_thinking(body: JSONObject) -> None:
    if body.get("thinking") is None:
        return
    thinking = object_at(body["thinking"], "thinking")
    kind = _string(thinking, "type", "thinking")
    if kind not in THINKING_TYPES:
        invalid("thinking.type", 'must be "enabled", "disabled", "adaptive" or "between_tools"')
    if kind == "enabled":
        budget = _required(thinking, "budget_tokens", "thinking")
        if not _is_int_from(budget, 1024):
            invalid("thinking.budget_tokens", "must be an integer >= 1024")


def _check_model(body: JSONObject) -> str:
    return _string(body, "model", "", nonempty=True)


def _check_sampling(body: JSONObject) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not _is_fraction(value):
            invalid(name, "must be a number from 0 to 1")
    top_k = body.get("top_k")
    if top_k is not None and not _is_int_from(top_k, 0):
        invalid("top_k", "must be an integer >= 0")
    if body.get("stop_sequences") is not None:
        for i, stop in enumerate(array_at(body["stop_sequences"], "stop_sequences")):
            if not isinstance(stop, str):
                invalid(f"stop_sequences.{i}", "must be a string")
    if body.get("metadata") is not None:
        user = object_at(body["metadata"], "metadata").get("user_id")
        if user is not None and not isinstance(user, str):
            invalid("metadata.user_id", "must be a string")


def _check_prompt(body: JSONObject) -> str:
    """What count_tokens and create share: the model, and everything the prompt is made of."""
    model = _check_model(body)
    _check_system(body)
    _check_messages(body)
    _check_tools(body)
    _check_thinking(body)
    return model


def validate_messages(body: JSONObject) -> tuple[str, bool]:
    """``(model, stream)`` of a ``POST /v1/messages`` body.

    Raises :class:`MissingField` for a required field that is absent (``model``,
    ``max_tokens``, ``messages`` and the fields of blocks) and :class:`InvalidRequest` for
    one that is wrong; ``param`` is the field's dotted path and the message starts with it.
    Blocks of every type Anthropic documents are accepted; the fields of those that
    translation reads (text, image, tool_use, tool_result, thinking) are checked."""
    model = _check_model(body)
    max_tokens = _required(body, "max_tokens", "")
    if not _is_int_from(max_tokens, 1):
        invalid("max_tokens", "must be an integer >= 1")
    _check_prompt(body)
    _check_sampling(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        invalid("stream", "must be a boolean")
    return model, stream is True


def validate_count_tokens(body: JSONObject) -> str:
    """The ``model`` of a ``POST /v1/messages/count_tokens`` body: the checks of
    :func:`validate_messages` for the model and the prompt (``system``, ``messages``,
    ``tools``, ``tool_choice``, ``thinking``), without ``max_tokens`` or ``stream``."""
    return _check_prompt(body)
