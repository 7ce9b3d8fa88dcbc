"""OpenAI Responses request bodies, checked: :func:`validate_responses` and
:func:`validate_input_tokens` raise :class:`~gateway.errors.InvalidRequest`
(:class:`~gateway.errors.MissingField` for an absent required field) whose ``param`` is the
dotted path of the bad field (``input.2.content.0.text``) and whose message starts with it.
What no backend behind this gateway can do is refused here, whatever the route:
``background: true``, ``conversation``, saved ``prompt`` templates and ``item_reference``
items. Also the vocabulary the translation shares (item, part and tool types, ids).

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from typing import NoReturn

from ..abc import JSONObject, JSONValue
from .checks import array_at, invalid, missing, object_at, path_at, required, string_at

__all__ = [
    "CUSTOM_TOOL_ARGUMENT",
    "ITEM_TYPES",
    "RESPONSES_FIELDS",
    "TOOL_TYPES",
    "item_type",
    "new_call_id",
    "new_item_id",
    "validate_input_tokens",
    "validate_responses",
]

CUSTOM_TOOL_ARGUMENT = "input"
"""The one string argument of the chat function that stands for a custom (freeform) tool."""


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})
CONTENT_PARTS = TEXT_PARTS | {"input_image", "input_file"}
OUTPUT_PARTS = frozenset({"input_text", "input_image", "input_file"})  # of a tool's output
CALLS = frozenset({"function_call", "custom_tool_call"})
CALL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
# Every item type OpenAI documents in `input` (item_reference is refused apart).
ITEM_TYPES = (
    CALLS
    | CALL_OUTPUTS
    | _names(
        "message reasoning item_reference file_search_call computer_call computer_call_output "
        "web_search_call tool_search_call tool_search_output additional_tools "
        "configuration_update compaction compaction_trigger image_generation_call "
        "code_interpreter_call local_shell_call local_shell_call_output shell_call "
        "shell_call_output apply_patch_call apply_patch_call_output mcp_list_tools "
        "mcp_approval_request mcp_approval_response mcp_call program program_output"
    )
)
# Every tool type OpenAI documents; only function and custom tools translate to chat.
TOOL_TYPES = _names(
    "function custom file_search computer computer_use_preview web_search "
    "web_search_2025_08_26 web_search_preview web_search_preview_2025_03_11 mcp "
    "code_interpreter programmatic_tool_calling image_generation local_shell shell "
    "namespace tool_search apply_patch"
)
TOOL_CHOICE_TYPES = (TOOL_TYPES - {"namespace", "tool_search"}) | {"allowed_tools"}
# reasoning.effort → chat's reasoning_effort ("none" turns thinking off instead).
EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")
# Top-level fields no backend behind this gateway serves: refused for every route.
UNSUPPORTED = ("conversation", "prompt")
# Every top-level field of a Responses request (OpenAI's API, and Codex's client_metadata).
# A field not among them is no Responses field but the client's word to the backend
# (llama.cpp's `cache_prompt`, vLLM's `top_k`, ...), and goes on as it is.
RESPONSES_FIELDS = _names(
    "model input instructions stream stream_options background background_options "
    "conversation context_management include max_output_tokens max_tool_calls metadata "
    "parallel_tool_calls previous_response_id prompt prompt_cache_key prompt_cache_options "
    "prompt_cache_retention reasoning safety_identifier service_tier store temperature text "
    "tool_choice tools top_logprobs top_p truncation user access_programs image moderation "
    "personality client_metadata"
)
EMPTY_PARAMETERS: JSONObject = {"type": "object", "properties": {}}
_ALPHABET = string.ascii_letters + string.digits
ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
}


def new_item_id(prefix: str) -> str:
    """An id in OpenAI's form: ``prefix``, ``_`` and 48 hex digits (``msg_``, ``fc_``...)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def new_call_id() -> str:
    """A tool call id in OpenAI's form (``call_`` and 24 letters and digits)."""
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


# --- checks -------------------------------------------------------------------------------


def _unsupported(path: str, what: str) -> NoReturn:
    invalid(path, f"{what} is not supported by this gateway")


def _required(doc: JSONObject, key: str, path: str) -> JSONValue:
    return required(doc, key, path, null_is_missing=True)


def _string(doc: JSONObject, key: str, path: str, *, nonempty: bool = False) -> str:
    return string_at(doc, key, path, null_is_missing=True, nonempty=nonempty)


def _optional(doc: JSONObject, key: str, path: str, kind: type, what: str) -> None:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        invalid(path_at(path, key), f"must be {what}")


def _choice(doc: JSONObject, key: str, path: str, choices: Sequence[str]) -> None:
    value = doc.get(key)
    if value is not None and value not in choices:
        invalid(path_at(path, key), "must be one of " + ", ".join(f'"{c}"' for c in choices))


def _number(doc: JSONObject, key: str, low: float, high: float) -> None:
    value = doc.get(key)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        invalid(key, f"must be a number from {low:g} to {high:g}")


def item_type(item: JSONObject) -> str:
    """The ``type`` of an input item; a typeless item with a ``role`` is a message (OpenAI's
    "easy" message), one without is an ``item_reference``."""
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    return "message" if "role" in item else "item_reference"


def _check_part(part: JSONValue, path: str, known: frozenset[str]) -> None:
    doc = object_at(part, path)
    kind = _string(doc, "type", path)
    if kind not in known:
        invalid(path_at(path, "type"), f"unknown content part type {kind!r}")
    if kind in ("input_text", "output_text"):
        _string(doc, "text", path)
    elif kind == "refusal":
        _string(doc, "refusal", path)
    elif kind == "input_image":
        if doc.get("image_url") is None and doc.get("file_id") is None:
            missing(path_at(path, "image_url"))
        _optional(doc, "image_url", path, str, "a string")
        _optional(doc, "file_id", path, str, "a string")
        _optional(doc, "detail", path, str, "a string")
    elif kind == "input_file" and all(
        doc.get(key) is None for key in ("file_id", "file_data", "file_url")
    ):
        missing(path_at(path, "file_id"))


def _check_parts(content: JSONValue, path: str, known: frozenset[str]) -> None:
    if isinstance(content, str):
        return
    for i, part in enumerate(array_at(content, path)):
        _check_part(part, f"{path}.{i}", known)


def _check_item(item: JSONValue, path: str) -> None:
    doc = object_at(item, path)
    _optional(doc, "type", path, str, "a string")
    kind = item_type(doc)
    if kind == "item_reference":
        _unsupported(path, "an item_reference (an earlier item named by id; send the item itself)")
    if kind not in ITEM_TYPES:
        invalid(path_at(path, "type"), f"unknown item type {kind!r}")
    if kind == "message":
        if _string(doc, "role", path) not in ROLES:
            invalid(path_at(path, "role"), 'must be "user", "assistant", "system" or "developer"')
        _check_parts(_required(doc, "content", path), path_at(path, "content"), CONTENT_PARTS)
    elif kind in CALLS:
        _string(doc, "call_id", path, nonempty=True)
        _string(doc, "name", path, nonempty=True)
        _optional(doc, "namespace", path, str, "a string")
        _string(doc, "arguments" if kind == "function_call" else "input", path)
    elif kind in CALL_OUTPUTS:
        _string(doc, "call_id", path, nonempty=True)
        _check_parts(_required(doc, "output", path), path_at(path, "output"), OUTPUT_PARTS)
    elif kind == "reasoning":
        for key in ("summary", "content"):
            parts = doc.get(key)
            for i, part in enumerate([] if parts is None else array_at(parts, path_at(path, key))):
                _string(object_at(part, f"{path}.{key}.{i}"), "text", f"{path}.{key}.{i}")
        _optional(doc, "encrypted_content", path, str, "a string")


def _check_input(body: JSONObject) -> None:
    value = body.get("input")
    if value is None:
        if body.get("previous_response_id") is None:
            missing("input")
        return
    if not isinstance(value, str):
        for i, item in enumerate(array_at(value, "input")):
            _check_item(item, f"input.{i}")


def _check_namespace(doc: JSONObject, path: str) -> None:
    """A ``namespace`` tool: a name, and function and custom tools under it."""
    _string(doc, "name", path, nonempty=True)
    _optional(doc, "description", path, str, "a string")
    where = path_at(path, "tools")
    for i, tool in enumerate(array_at(_required(doc, "tools", path), where)):
        inner = object_at(tool, f"{where}.{i}")
        kind = _string(inner, "type", f"{where}.{i}")
        if kind not in ("function", "custom"):
            invalid(f"{where}.{i}.type", "a namespace holds function and custom tools only")
        _check_tool(inner, f"{where}.{i}")


def _check_tool(tool: JSONValue, path: str) -> None:
    doc = object_at(tool, path)
    kind = _string(doc, "type", path)
    if kind not in TOOL_TYPES:
        invalid(path_at(path, "type"), f"unknown tool type {kind!r}")
    if kind == "namespace":
        _check_namespace(doc, path)
        return
    if kind not in ("function", "custom"):
        return
    _string(doc, "name", path, nonempty=True)
    _optional(doc, "description", path, str, "a string")
    if kind == "function":
        _optional(doc, "parameters", path, dict, "an object")
        _optional(doc, "strict", path, bool, "a boolean")
        return
    if doc.get("format") is None:
        return
    where = path_at(path, "format")
    fmt = object_at(doc["format"], where)
    if _string(fmt, "type", where) not in ("text", "grammar"):
        invalid(path_at(where, "type"), 'must be "text" or "grammar"')
    if fmt["type"] == "grammar":
        if _string(fmt, "syntax", where) not in ("lark", "regex"):
            invalid(path_at(where, "syntax"), 'must be "lark" or "regex"')
        _string(fmt, "definition", where)


def _check_tool_choice(body: JSONObject) -> None:
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return
    if isinstance(choice, str):
        invalid("tool_choice", 'must be "auto", "none", "required" or an object')
    doc = object_at(choice, "tool_choice")
    kind = _string(doc, "type", "tool_choice")
    if kind not in TOOL_CHOICE_TYPES:
        invalid("tool_choice.type", f"unknown tool choice type {kind!r}")
    if kind in ("function", "custom"):
        _string(doc, "name", "tool_choice", nonempty=True)
    elif kind == "allowed_tools":
        _string(doc, "mode", "tool_choice")
        _choice(doc, "mode", "tool_choice", ("auto", "required"))
        for i, tool in enumerate(
            array_at(_required(doc, "tools", "tool_choice"), "tool_choice.tools")
        ):
            _string(object_at(tool, f"tool_choice.tools.{i}"), "type", f"tool_choice.tools.{i}")


def _check_tools(body: JSONObject) -> None:
    if body.get("tools") is not None:
        for i, tool in enumerate(array_at(body["tools"], "tools")):
            _check_tool(tool, f"tools.{i}")
    _check_tool_choice(body)
    _optional(body, "parallel_tool_calls", "", bool, "a boolean")


def _check_text(body: JSONObject) -> None:
    if body.get("text") is None:
        return
    text = object_at(body["text"], "text")
    _choice(text, "verbosity", "text", VERBOSITIES)
    if text.get("format") is None:
        return
    fmt = object_at(text["format"], "text.format")
    kind = _string(fmt, "type", "text.format")
    if kind not in ("text", "json_schema", "json_object"):
        invalid("text.format.type", 'must be "text", "json_schema" or "json_object"')
    if kind == "json_schema":
        _string(fmt, "name", "text.format", nonempty=True)
        object_at(_required(fmt, "schema", "text.format"), "text.format.schema")
        _optional(fmt, "strict", "text.format", bool, "a boolean")
        _optional(fmt, "description", "text.format", str, "a string")


def _check_reasoning(body: JSONObject) -> None:
    if body.get("reasoning") is not None:
        reasoning = object_at(body["reasoning"], "reasoning")
        _choice(reasoning, "effort", "reasoning", ("none", *EFFORTS))
        _choice(reasoning, "summary", "reasoning", SUMMARIES)


def _check_prompt(body: JSONObject) -> str:
    """What input_tokens and create share: the model, the gateway's refusals, and everything
    the prompt is made of."""
    model = _string(body, "model", "", nonempty=True)
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            _unsupported(name, name)
    _optional(body, "previous_response_id", "", str, "a string")
    _optional(body, "instructions", "", str, "a string")
    _check_input(body)
    _check_tools(body)
    _check_text(body)
    _check_reasoning(body)
    return model


def _check_metadata(body: JSONObject) -> None:
    if body.get("metadata") is None:
        return
    metadata = object_at(body["metadata"], "metadata")
    if len(metadata) > 16:
        invalid("metadata", "must hold at most 16 pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            invalid(path_at("metadata", key), "keys must be at most 64 characters long")
        if not isinstance(value, str) or len(value) > 512:
            invalid(path_at("metadata", key), "must be a string of at most 512 characters")


def _check_sampling(body: JSONObject) -> None:
    tokens = body.get("max_output_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1
    ):
        invalid("max_output_tokens", "must be an integer >= 1")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    top = body.get("top_logprobs")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20
    ):
        invalid("top_logprobs", "must be an integer from 0 to 20")
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        _optional(body, name, "", str, "a string")
    for name in ("store", "stream"):
        _optional(body, name, "", bool, "a boolean")
    _choice(body, "truncation", "", ("auto", "disabled"))
    if body.get("include") is not None:
        for i, value in enumerate(array_at(body["include"], "include")):
            if not isinstance(value, str):
                invalid(f"include.{i}", "must be a string")
    _check_metadata(body)


def validate_responses(body: JSONObject) -> tuple[str, bool]:
    """``(model, stream)`` of a ``POST /v1/responses`` body.

    Raises :class:`MissingField` for a required field that is absent (``model``; ``input``
    unless ``previous_response_id`` is given; the fields of items, parts and tools) and
    :class:`InvalidRequest` for one that is wrong, or that the gateway does not serve
    (``background: true``, ``conversation``, ``prompt``, ``item_reference`` items); ``param``
    is the field's dotted path and the message starts with it. Items and tools of every type
    OpenAI documents are accepted; the fields of those that translation reads are checked.
    ``max_output_tokens`` may be anything from 1 (OpenAI's own floor is 16, a limit of its
    service rather than of the API)."""
    if body.get("background") not in (None, False):
        if body["background"] is not True:
            invalid("background", "must be a boolean")
        _unsupported("background", "background: true (a response run in the background)")
    model = _check_prompt(body)
    _check_sampling(body)
    return model, body.get("stream") is True


def validate_input_tokens(body: JSONObject) -> str:
    """The ``model`` of a ``POST /v1/responses/input_tokens`` body: the checks of
    :func:`validate_responses` for the model and the prompt (``instructions``, ``input``,
    ``tools``, ``tool_choice``, ``text``, ``reasoning``)."""
    return _check_prompt(body)
