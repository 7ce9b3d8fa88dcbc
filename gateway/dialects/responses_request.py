"""OpenAI Responses request bodies: checked, and translated to Chat Completions.

:func:`validate_responses` and :func:`validate_input_tokens` check a ``POST /v1/responses``
(or ``/v1/responses/input_tokens``) body and raise :class:`~gateway.errors.InvalidRequest`
(:class:`~gateway.errors.MissingField` for an absent required field) whose ``param`` is the
dotted path of the bad field (``input.2.content.0.text``) and whose message starts with it.
What no backend behind this gateway can do is refused here, whatever the route: ``background:
true``, ``conversation``, saved ``prompt`` templates and ``item_reference`` items.

:func:`input_items` lists the request's ``input`` as the API's ``input_items`` list shows it
(for the gateway's store); :func:`responses_to_chat` builds the ``chat/completions`` body for
backends that speak only chat. What chat cannot carry is refused, never dropped in silence:
hosted tools (web and file search, computer use, code interpreter, MCP, image generation,
shells, ...), items of those tools, file inputs, images by file id, ``context_management``
and ``top_logprobs``. Hints that change nothing a chat backend could honour are dropped:
``include``, ``store``, ``prompt_cache_key``, ``prompt_cache_retention``, ``service_tier``,
``truncation``, ``max_tool_calls``, ``metadata``, ``text.verbosity``, ``reasoning.summary``,
Codex's ``client_metadata``, and reasoning items (their ``encrypted_content`` only OpenAI can
read; chat templates drop past reasoning anyway).

How the shapes meet, where chat has no exact counterpart:

- ``instructions`` is the first message, a ``system`` one; ``developer`` messages are
  ``system`` messages. A message of text parts alone becomes a plain string, its parts joined
  with a blank line (``"\\n\\n"``); refusal parts are text.
- ``function_call`` items are an assistant's ``tool_calls``: consecutive calls (reasoning items
  between them do not count) are one assistant message, together with the text of an
  assistant message right before them. ``function_call_output`` items are ``tool`` messages;
  images in an output go, as in the Anthropic translation, to a user message after the run of
  tool messages (:data:`IMAGES_FOLLOW`, :data:`IMAGES_OF`).
- A custom (freeform) tool, such as Codex's ``apply_patch``, becomes a chat function taking one
  string argument, :data:`CUSTOM_TOOL_ARGUMENT` (``"input"``), whose description carries the
  tool's grammar (chat backends cannot enforce a Lark or regex grammar, but the model can read
  it). A ``custom_tool_call`` item is a tool call with arguments ``{"input": "<text>"}``, its
  output a ``tool`` message; :mod:`gateway.dialects.responses_answer` turns a call of such a
  function back into a ``custom_tool_call``.
- ``tool_choice`` ``allowed_tools`` keeps only the allowed tools in the chat body;
  ``tool_choice`` and ``parallel_tool_calls`` without tools are dropped (chat servers refuse
  them).
- ``reasoning.effort`` is chat's ``reasoning_effort`` (which vLLM and llama-server read) in
  the three values chat servers accept — ``minimal`` is ``low``; ``xhigh`` and ``max`` are
  ``high`` — and sets ``chat_template_kwargs.enable_thinking``, the reasoning switch of
  llama-server's and vLLM's templates: ``none`` turns it off (and sends no effort), any
  other effort on.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator, Sequence
from typing import NoReturn

from ..abc import JSONObject, JSONValue
from ..errors import InvalidRequest, MissingField
from .anthropic_request import IMAGES_FOLLOW, IMAGES_OF

__all__ = [
    "CUSTOM_TOOL_ARGUMENT",
    "IMAGES_FOLLOW",
    "IMAGES_OF",
    "RESPONSES_FIELDS",
    "custom_tool_names",
    "input_items",
    "item_type",
    "new_call_id",
    "new_item_id",
    "responses_to_chat",
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
_ID_PREFIXES = {
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


def _invalid(path: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"{path}: {problem}", param=path)


def _missing(path: str) -> NoReturn:
    raise MissingField(f"{path}: field required", param=path)


def _unsupported(path: str, what: str) -> NoReturn:
    _invalid(path, f"{what} is not supported by this gateway")


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: JSONValue, path: str) -> JSONObject:
    if not isinstance(value, dict):
        _invalid(path, "must be an object")
    return value


def _array(value: JSONValue, path: str) -> list[JSONValue]:
    if not isinstance(value, list):
        _invalid(path, "must be an array")
    return value


def _required(doc: JSONObject, key: str, path: str) -> JSONValue:
    if doc.get(key) is None:
        _missing(_at(path, key))
    return doc[key]


def _string(doc: JSONObject, key: str, path: str, *, nonempty: bool = False) -> str:
    value = _required(doc, key, path)
    if not isinstance(value, str):
        _invalid(_at(path, key), "must be a string")
    if nonempty and not value:
        _invalid(_at(path, key), "must not be empty")
    return value


def _optional(doc: JSONObject, key: str, path: str, kind: type, what: str) -> None:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        _invalid(_at(path, key), f"must be {what}")


def _choice(doc: JSONObject, key: str, path: str, choices: Sequence[str]) -> None:
    value = doc.get(key)
    if value is not None and value not in choices:
        _invalid(_at(path, key), "must be one of " + ", ".join(f'"{c}"' for c in choices))


def _number(doc: JSONObject, key: str, low: float, high: float) -> None:
    value = doc.get(key)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        _invalid(key, f"must be a number from {low:g} to {high:g}")


def item_type(item: JSONObject) -> str:
    """The ``type`` of an input item; a typeless item with a ``role`` is a message (OpenAI's
    "easy" message), one without is an ``item_reference``."""
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    return "message" if "role" in item else "item_reference"


def _check_part(part: JSONValue, path: str, known: frozenset[str]) -> None:
    doc = _object(part, path)
    kind = _string(doc, "type", path)
    if kind not in known:
        _invalid(_at(path, "type"), f"unknown content part type {kind!r}")
    if kind in ("input_text", "output_text"):
        _string(doc, "text", path)
    elif kind == "refusal":
        _string(doc, "refusal", path)
    elif kind == "input_image":
        if doc.get("image_url") is None and doc.get("file_id") is None:
            _missing(_at(path, "image_url"))
        _optional(doc, "image_url", path, str, "a string")
        _optional(doc, "file_id", path, str, "a string")
        _optional(doc, "detail", path, str, "a string")
    elif kind == "input_file" and all(
        doc.get(key) is None for key in ("file_id", "file_data", "file_url")
    ):
        _missing(_at(path, "file_id"))


def _check_parts(content: JSONValue, path: str, known: frozenset[str]) -> None:
    if isinstance(content, str):
        return
    for i, part in enumerate(_array(content, path)):
        _check_part(part, f"{path}.{i}", known)


def _check_item(item: JSONValue, path: str) -> None:
    doc = _object(item, path)
    kind = item_type(doc)
    if kind == "item_reference":
        _unsupported(path, "an item_reference (an earlier item named by id; send the item itself)")
    if kind not in ITEM_TYPES:
        _invalid(_at(path, "type"), f"unknown item type {kind!r}")
    if kind == "message":
        if _string(doc, "role", path) not in ROLES:
            _invalid(_at(path, "role"), 'must be "user", "assistant", "system" or "developer"')
        _check_parts(_required(doc, "content", path), _at(path, "content"), CONTENT_PARTS)
    elif kind in CALLS:
        _string(doc, "call_id", path, nonempty=True)
        _string(doc, "name", path, nonempty=True)
        _string(doc, "arguments" if kind == "function_call" else "input", path)
    elif kind in CALL_OUTPUTS:
        _string(doc, "call_id", path, nonempty=True)
        _check_parts(_required(doc, "output", path), _at(path, "output"), OUTPUT_PARTS)
    elif kind == "reasoning":
        for key in ("summary", "content"):
            for i, part in enumerate(_array(doc.get(key) or [], _at(path, key))):
                _string(_object(part, f"{path}.{key}.{i}"), "text", f"{path}.{key}.{i}")
        _optional(doc, "encrypted_content", path, str, "a string")


def _check_input(body: JSONObject) -> None:
    value = body.get("input")
    if value is None:
        if body.get("previous_response_id") is None:
            _missing("input")
        return
    if not isinstance(value, str):
        for i, item in enumerate(_array(value, "input")):
            _check_item(item, f"input.{i}")


def _check_tool(tool: JSONValue, path: str) -> None:
    doc = _object(tool, path)
    kind = _string(doc, "type", path)
    if kind not in TOOL_TYPES:
        _invalid(_at(path, "type"), f"unknown tool type {kind!r}")
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
    where = _at(path, "format")
    fmt = _object(doc["format"], where)
    if _string(fmt, "type", where) not in ("text", "grammar"):
        _invalid(_at(where, "type"), 'must be "text" or "grammar"')
    if fmt["type"] == "grammar":
        if _string(fmt, "syntax", where) not in ("lark", "regex"):
            _invalid(_at(where, "syntax"), 'must be "lark" or "regex"')
        _string(fmt, "definition", where)


def _check_tool_choice(body: JSONObject) -> None:
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return
    if isinstance(choice, str):
        _invalid("tool_choice", 'must be "auto", "none", "required" or an object')
    doc = _object(choice, "tool_choice")
    kind = _string(doc, "type", "tool_choice")
    if kind not in TOOL_CHOICE_TYPES:
        _invalid("tool_choice.type", f"unknown tool choice type {kind!r}")
    if kind in ("function", "custom"):
        _string(doc, "name", "tool_choice", nonempty=True)
    elif kind == "allowed_tools":
        _string(doc, "mode", "tool_choice")
        _choice(doc, "mode", "tool_choice", ("auto", "required"))
        for i, tool in enumerate(
            _array(_required(doc, "tools", "tool_choice"), "tool_choice.tools")
        ):
            _string(_object(tool, f"tool_choice.tools.{i}"), "type", f"tool_choice.tools.{i}")


def _check_tools(body: JSONObject) -> None:
    if body.get("tools") is not None:
        for i, tool in enumerate(_array(body["tools"], "tools")):
            _check_tool(tool, f"tools.{i}")
    _check_tool_choice(body)
    _optional(body, "parallel_tool_calls", "", bool, "a boolean")


def _check_text(body: JSONObject) -> None:
    if body.get("text") is None:
        return
    text = _object(body["text"], "text")
    _choice(text, "verbosity", "text", VERBOSITIES)
    if text.get("format") is None:
        return
    fmt = _object(text["format"], "text.format")
    kind = _string(fmt, "type", "text.format")
    if kind not in ("text", "json_schema", "json_object"):
        _invalid("text.format.type", 'must be "text", "json_schema" or "json_object"')
    if kind == "json_schema":
        _string(fmt, "name", "text.format", nonempty=True)
        _object(_required(fmt, "schema", "text.format"), "text.format.schema")
        _optional(fmt, "strict", "text.format", bool, "a boolean")
        _optional(fmt, "description", "text.format", str, "a string")


def _check_reasoning(body: JSONObject) -> None:
    if body.get("reasoning") is not None:
        reasoning = _object(body["reasoning"], "reasoning")
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
    metadata = _object(body["metadata"], "metadata")
    if len(metadata) > 16:
        _invalid("metadata", "must hold at most 16 pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            _invalid(_at("metadata", key), "keys must be at most 64 characters long")
        if not isinstance(value, str) or len(value) > 512:
            _invalid(_at("metadata", key), "must be a string of at most 512 characters")


def _check_sampling(body: JSONObject) -> None:
    tokens = body.get("max_output_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1
    ):
        _invalid("max_output_tokens", "must be an integer >= 1")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    top = body.get("top_logprobs")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20
    ):
        _invalid("top_logprobs", "must be an integer from 0 to 20")
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        _optional(body, name, "", str, "a string")
    for name in ("store", "stream"):
        _optional(body, name, "", bool, "a boolean")
    _choice(body, "truncation", "", ("auto", "disabled"))
    if body.get("include") is not None:
        for i, value in enumerate(_array(body["include"], "include")):
            if not isinstance(value, str):
                _invalid(f"include.{i}", "must be a string")
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
            _invalid("background", "must be a boolean")
        _unsupported("background", "background: true (a response run in the background)")
    model = _check_prompt(body)
    _check_sampling(body)
    return model, body.get("stream") is True


def validate_input_tokens(body: JSONObject) -> str:
    """The ``model`` of a ``POST /v1/responses/input_tokens`` body: the checks of
    :func:`validate_responses` for the model and the prompt (``instructions``, ``input``,
    ``tools``, ``tool_choice``, ``text``, ``reasoning``)."""
    return _check_prompt(body)


# --- input items --------------------------------------------------------------------------


def _listed_part(part: JSONValue, assistant: bool) -> JSONValue:
    if assistant and isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
        return {"annotations": []} | part | {"type": "output_text"}
    return part


def _listed(item: JSONObject) -> JSONObject:
    kind = item_type(item)
    given = item.get("id")
    new = new_item_id(_ID_PREFIXES.get(kind, "item"))
    doc: JSONObject = {"id": given if isinstance(given, str) and given else new, "type": kind}
    doc.update((key, value) for key, value in item.items() if key not in doc)
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        assistant = item.get("role") == "assistant"
        parts = content if isinstance(content, list) else []
        doc["content"] = [_listed_part(part, assistant) for part in parts]
    if kind == "reasoning" and doc.get("summary") is None:
        doc["summary"] = []
    if kind != "reasoning":
        doc.setdefault("status", "completed")
    return doc


def input_items(body: JSONObject) -> list[JSONObject]:
    """The ``input`` of a checked request as the API's ``input_items`` list shows it: a string
    is one user message with an ``input_text`` part; every item gets its ``type`` and an
    ``id`` (a given one is kept, others are new: ``msg_…``, ``fc_…``, ``rs_…``...), a string
    content becomes parts (``output_text`` ones for the assistant), and ``status`` is
    ``completed`` where none is given. Nothing of ``body`` is changed."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [_listed({"type": "message", "role": "user", "content": value})]
    items = value if isinstance(value, list) else []
    return [_listed(item) for item in items if isinstance(item, dict)]


def custom_tool_names(body: JSONObject) -> frozenset[str]:
    """The names of the custom (freeform) tools a request declares."""
    tools = body.get("tools")
    return frozenset(
        str(tool["name"])
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict) and tool.get("type") == "custom" and "name" in tool
    )


# --- translation --------------------------------------------------------------------------


def _compact(value: JSONValue) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _untranslatable(path: str, what: str) -> NoReturn:
    _invalid(path, f"{what} cannot be translated for this model's backend, which speaks only chat")


def _parts(content: JSONValue, path: str) -> Iterator[tuple[str, str, JSONObject]]:
    """``(type, path, part)`` of each part of checked ``content`` (a string is one text)."""
    if isinstance(content, str):
        yield "input_text", path, {"type": "input_text", "text": content}
        return
    for i, part in enumerate(content if isinstance(content, list) else []):
        if isinstance(part, dict):
            yield str(part.get("type")), f"{path}.{i}", part


def _text(part: JSONObject) -> str:
    return str(part.get("refusal") if part.get("type") == "refusal" else part.get("text"))


def _image_part(part: JSONObject, path: str) -> JSONObject:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        _untranslatable(_at(path, "file_id"), "an image given by file id")
    image: JSONObject = {"url": url}
    if part.get("detail") in ("low", "high", "auto"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _content(content: JSONValue, path: str, role: str) -> JSONValue:
    """Chat content for a message's ``content``: text alone as one string."""
    if isinstance(content, str):
        return content
    parts: list[JSONObject] = []
    for kind, where, part in _parts(content, path):
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": _text(part)})
        elif kind == "input_image" and role == "user":
            parts.append(_image_part(part, where))
        elif kind == "input_image":
            _untranslatable(_at(where, "type"), f"images in {role} messages")
        else:
            _untranslatable(_at(where, "type"), f"an {kind} part")
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(str(part["text"]) for part in parts)
    return list[JSONValue](parts)


def _message(item: JSONObject, path: str) -> JSONObject:
    role = str(item.get("role"))
    chat_role = "system" if role in ("system", "developer") else role
    return {"role": chat_role, "content": _content(item.get("content"), _at(path, "content"), role)}


def _tool_message(item: JSONObject, path: str) -> tuple[JSONObject, list[JSONObject]]:
    """The ``tool`` message of a call's output, and the image parts it leaves over for the
    user message after the run of tool messages."""
    call_id = item.get("call_id")
    output = item.get("output")
    texts: list[str] = []
    images: list[JSONObject] = []
    for kind, where, part in _parts(output, _at(path, "output")):
        if kind in TEXT_PARTS:
            texts.append(_text(part))
        elif kind == "input_image":
            images.append(_image_part(part, where))
        else:
            _untranslatable(_at(where, "type"), f"an {kind} part in a tool output")
    text = "\n\n".join(texts)
    if images:
        text = f"{text}\n\n{IMAGES_FOLLOW}" if text else IMAGES_FOLLOW
        images.insert(0, {"type": "text", "text": IMAGES_OF.format(id=call_id)})
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _tool_call(item: JSONObject) -> JSONObject:
    if item.get("type") == "custom_tool_call":
        arguments = _compact({CUSTOM_TOOL_ARGUMENT: item.get("input")})
    else:
        arguments = str(item.get("arguments"))
    function: JSONObject = {"name": item.get("name"), "arguments": arguments}
    return {"id": item.get("call_id"), "type": "function", "function": function}


def _add_call(out: list[JSONObject], call: JSONObject) -> None:
    """Put a tool call on the assistant message before it (a text message, or one of tool
    calls), or on a new one."""
    last = out[-1] if out else None
    if last is None or last["role"] != "assistant":
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return
    calls = last.get("tool_calls")
    if isinstance(calls, list):
        calls.append(call)
        return
    last["tool_calls"] = [call]
    if last.get("content") == "":
        last["content"] = None


def _conversation(
    body: JSONObject, history: Sequence[JSONObject]
) -> Iterator[tuple[str, JSONObject]]:
    for i, item in enumerate(history):
        yield f"previous_response_id.{i}", item
    value = body.get("input")
    if isinstance(value, str):
        yield "input", {"type": "message", "role": "user", "content": value}
    elif isinstance(value, list):
        for i, entry in enumerate(value):
            if isinstance(entry, dict):
                yield f"input.{i}", entry


def _chat_messages(body: JSONObject, history: Sequence[JSONObject]) -> list[JSONValue]:
    out: list[JSONObject] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    images: list[JSONObject] = []  # of the tool outputs since the last other message
    for path, item in _conversation(body, history):
        kind = item_type(item)
        if kind in CALL_OUTPUTS:
            message, more = _tool_message(item, path)
            out.append(message)
            images.extend(more)
            continue
        if images:
            out.append({"role": "user", "content": list[JSONValue](images)})
            images = []
        if kind in CALLS:
            _add_call(out, _tool_call(item))
        elif kind == "message":
            out.append(_message(item, path))
        elif kind != "reasoning":
            _untranslatable(_at(path, "type"), f"a {kind} item")
    if images:
        out.append({"role": "user", "content": list[JSONValue](images)})
    if not out:
        _invalid("input", "must hold at least one item")
    return list[JSONValue](out)


def _custom_parameters(tool: JSONObject) -> JSONObject:
    about = "The tool's whole input, as free text."
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        about += f" It must follow this {fmt.get('syntax')} grammar:\n{fmt.get('definition')}"
    argument: JSONObject = {"type": "string", "description": about}
    return {
        "type": "object",
        "properties": {CUSTOM_TOOL_ARGUMENT: argument},
        "required": [CUSTOM_TOOL_ARGUMENT],
        "additionalProperties": False,
    }


def _chat_tools(tools: JSONValue) -> list[JSONObject]:
    out: list[JSONObject] = []
    names: set[str] = set()
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        assert isinstance(tool, dict)
        kind = tool.get("type")
        if kind not in ("function", "custom"):
            _invalid(
                f"tools.{i}.type",
                f"the {kind} tool cannot be translated for this model's backend, which speaks"
                " only chat (only function and custom tools can)",
            )
        name = str(tool.get("name"))
        if name in names:
            _invalid(f"tools.{i}.name", f"another tool is named {name!r}")
        names.add(name)
        function: JSONObject = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if kind == "custom":
            function["parameters"] = _custom_parameters(tool)
        else:
            function["parameters"] = tool.get("parameters") or EMPTY_PARAMETERS
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_name(tool: JSONValue) -> str:
    assert isinstance(tool, dict)
    function = tool["function"]
    assert isinstance(function, dict)
    return str(function["name"])


def _named(choice: JSONObject, path: str, tools: list[JSONObject]) -> str:
    kind = choice.get("type")
    if kind not in ("function", "custom"):
        _untranslatable(_at(path, "type"), f"a tool choice of type {kind!r}")
    name = str(choice.get("name"))
    if name not in {_tool_name(tool) for tool in tools}:
        _invalid(_at(path, "name"), f"no tool is named {name!r}")
    return name


def _tool_choice(choice: JSONValue, tools: list[JSONObject], chat: JSONObject) -> None:
    if isinstance(choice, str):
        chat["tool_choice"] = choice
        return
    assert isinstance(choice, dict)
    if choice.get("type") != "allowed_tools":
        name = _named(choice, "tool_choice", tools)
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
        return
    allowed = choice.get("tools")
    names = {
        _named(tool, f"tool_choice.tools.{i}", tools)
        for i, tool in enumerate(allowed if isinstance(allowed, list) else [])
        if isinstance(tool, dict)
    }
    chat["tools"] = [tool for tool in tools if _tool_name(tool) in names]
    chat["tool_choice"] = "required" if choice.get("mode") == "required" else "auto"


def _tools(body: JSONObject, chat: JSONObject) -> None:
    tools = _chat_tools(body.get("tools"))
    if not tools:
        return
    chat["tools"] = list[JSONValue](tools)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], tools, chat)
    if isinstance(body.get("parallel_tool_calls"), bool):
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]


def _response_format(text: JSONValue) -> JSONObject | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    schema: JSONObject = {"name": fmt.get("name"), "schema": fmt.get("schema")}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"type": "json_schema", "json_schema": schema}


def _reasoning(body: JSONObject, chat: JSONObject) -> None:
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if not isinstance(effort, str):
        return
    if effort in EFFORTS:
        chat["reasoning_effort"] = EFFORTS[effort]
    chat["chat_template_kwargs"] = {"enable_thinking": effort != "none"}


def _sampling(body: JSONObject, chat: JSONObject) -> None:
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        chat["user"] = user


def _passthrough(body: JSONObject, chat: JSONObject) -> None:
    for name, value in body.items():
        if name in RESPONSES_FIELDS:
            continue
        given = chat.get(name)
        if name == "chat_template_kwargs" and isinstance(value, dict) and isinstance(given, dict):
            chat[name] = given | value  # the client's own switches win
        elif name not in chat:
            chat[name] = value


def responses_to_chat(body: JSONObject, history: Sequence[JSONObject] = ()) -> JSONObject:
    """The ``chat/completions`` body for ``body``, a Responses body that
    :func:`validate_responses` accepted, for a backend that speaks only chat.

    ``history`` holds the items of the earlier turns when the request names a
    ``previous_response_id`` (the gateway expands it: each earlier response's input items and
    output items, in order); they come before this request's ``input``, after
    ``instructions`` (which, as in OpenAI's API, are not carried over from earlier turns).

    Raises :class:`InvalidRequest` (``param``: the field's dotted path; an item of ``history``
    is ``previous_response_id.N``) for what chat cannot carry — see the module's docstring —
    and for a conversation with nothing in it. Fields that are no Responses field
    (:data:`RESPONSES_FIELDS`) go on as they are, for the backend (a client's own
    ``chat_template_kwargs`` are merged over the gateway's). ``model`` is copied as is."""
    if body.get("context_management") is not None:
        _untranslatable("context_management", "context_management (server-side compaction)")
    if body.get("top_logprobs"):
        _untranslatable("top_logprobs", "top_logprobs")
    chat: JSONObject = {"model": body["model"], "messages": _chat_messages(body, history)}
    _tools(body, chat)
    _sampling(body, chat)
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    _reasoning(body, chat)
    stream = body.get("stream") is True
    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}
    _passthrough(body, chat)
    return chat
