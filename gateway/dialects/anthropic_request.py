"""Anthropic Messages request bodies: checked, and translated to Chat Completions.

:func:`validate_messages` and :func:`validate_count_tokens` check a ``POST /v1/messages``
(or ``/v1/messages/count_tokens``) body the way Anthropic's API does, and raise
:class:`~gateway.errors.InvalidRequest` (:class:`~gateway.errors.MissingField` for an absent
required field) whose ``param`` is the dotted path of the bad field (``messages.2.content.0``)
and whose message starts with that path: Anthropic's error shape has no ``param``, so the
message is all a client sees.

:func:`messages_to_chat` builds the ``chat/completions`` body for a checked Messages body,
for backends that speak only chat. What chat cannot carry is refused, never dropped in
silence: document, search-result and server-tool blocks, server tools, images by file id,
``mcp_servers``, ``container`` and context edits other than clearing (each an
:class:`~gateway.errors.InvalidRequest` naming the field). Hints that change nothing a local
model could honour (``cache_control``, ``service_tier``, ``speed``, ``output_config.effort``,
thinking budgets, signatures and redacted thinking) are dropped, and so are the
``context_management`` edits that only clear old tool results or thinking (Claude Code sends
them): the model then reads the whole conversation, as below the edits' trigger.

How the shapes meet, where chat has no exact counterpart:

- Text blocks of one turn are joined with a blank line (``"\\n\\n"``); a user turn of text
  alone becomes a plain string.
- A user turn's ``tool_result`` blocks become ``tool`` messages placed first, before the
  rest of the turn, since chat wants them right after the assistant's ``tool_calls``.
- ``is_error: true`` prefixes the tool message with :data:`TOOL_ERROR_PREFIX` (``"Error: "``;
  a failed result without text is ``"Error"``).
- Images in a tool result cannot ride in a ``tool`` message (text only): the tool message
  ends with :data:`IMAGES_FOLLOW`, and a user message after the tool messages carries
  :data:`IMAGES_OF` the call's id, then the images (then the rest of the user turn).
- ``tool_choice`` without tools is dropped: nothing to choose, and chat servers refuse it.
- ``thinking`` maps to ``chat_template_kwargs.enable_thinking``, the reasoning switch that
  llama-server and vLLM read; assistant ``thinking`` blocks to ``reasoning_content``.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import NoReturn

from ..abc import JSONObject, JSONValue
from ..errors import InvalidRequest, MissingField

__all__ = [
    "IMAGES_FOLLOW",
    "IMAGES_OF",
    "TOOL_ERROR_PREFIX",
    "messages_to_chat",
    "validate_count_tokens",
    "validate_messages",
]

TOOL_ERROR_PREFIX = "Error: "
"""Put before a failed tool result's text (``is_error: true``), so the model sees it failed."""
IMAGES_FOLLOW = "[the images of this result follow in the next user message]"
"""Ends the ``tool`` message of a tool result that had images."""
IMAGES_OF = "[images of the result of tool call {id}]"
"""The text part before the images of tool result ``{id}`` in the user message after it."""

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
# Top-level fields that are Anthropic-service features with an effect chat cannot have.
REFUSED_FIELDS = ("mcp_servers", "container")
# Context edits that only clear old tool results or thinking once the context is long: a
# backend that gets the whole conversation answers as it would below their trigger. Any
# other edit (compaction) changes what the answer is built on.
CLEARING_EDITS = ("clear_tool_uses_", "clear_thinking_")
# Every top-level field of Anthropic's Messages request (its API and betas). A field not
# among them is no Anthropic field at all but the client's word to the backend (llama.cpp's
# ``cache_prompt``, ``grammar``, ...), and goes on as it is, as on the chat endpoint.
MESSAGES_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "output_format",
        "output_config",
        "speed",
        "inference_geo",
        "diagnostics",
        "betas",
        "cache_control",
    }
)


# --- checks -------------------------------------------------------------------------------


def _invalid(path: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"{path}: {problem}", param=path)


def _missing(path: str) -> NoReturn:
    raise MissingField(f"{path}: field required", param=path)


def _is_int_from(value: JSONValue, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_fraction(value: JSONValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _object(value: JSONValue, path: str) -> JSONObject:
    if not isinstance(value, dict):
        _invalid(path, "must be an object")
    return value


def _array(value: JSONValue, path: str) -> list[JSONValue]:
    if not isinstance(value, list):
        _invalid(path, "must be an array")
    return value


def _required(doc: JSONObject, key: str, path: str) -> JSONValue:
    if key not in doc:
        _missing(f"{path}.{key}" if path else key)
    return doc[key]


def _string(doc: JSONObject, key: str, path: str, *, nonempty: bool = False) -> str:
    where = f"{path}.{key}" if path else key
    value = _required(doc, key, path)
    if not isinstance(value, str):
        _invalid(where, "must be a string")
    if nonempty and not value:
        _invalid(where, "must not be empty")
    return value


def _kind(block: JSONValue, path: str, known: frozenset[str]) -> str:
    """The ``type`` of a content block, which must be one of ``known``."""
    doc = _object(block, path)
    kind = _string(doc, "type", path)
    if kind not in known:
        _invalid(f"{path}.type", f"unknown content block type {kind!r}")
    return kind


def _check_image(block: JSONObject, path: str) -> None:
    source = _object(_required(block, "source", path), f"{path}.source")
    where = f"{path}.source"
    kind = _string(source, "type", where)
    if kind == "base64":
        media = _string(source, "media_type", where)
        if media not in IMAGE_MEDIA_TYPES:
            _invalid(
                f"{where}.media_type", f"must be one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}"
            )
        _string(source, "data", where)
    elif kind == "url":
        _string(source, "url", where, nonempty=True)
    elif kind == "file":
        _string(source, "file_id", where, nonempty=True)
    else:
        _invalid(f"{where}.type", 'must be "base64", "url" or "file"')


def _check_tool_result(block: JSONObject, path: str) -> None:
    _string(block, "tool_use_id", path, nonempty=True)
    if "is_error" in block and not isinstance(block["is_error"], bool):
        _invalid(f"{path}.is_error", "must be a boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    for i, inner in enumerate(_array(content, f"{path}.content")):
        where = f"{path}.content.{i}"
        _check_fields(_kind(inner, where, TOOL_RESULT_BLOCK_TYPES), _object(inner, where), where)


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
        _object(_required(block, "input", path), f"{path}.input")
    elif kind == "tool_result":
        _check_tool_result(block, path)


def _check_content(content: JSONValue, path: str, *, known: frozenset[str]) -> None:
    if isinstance(content, str):
        return
    for i, block in enumerate(_array(content, path)):
        where = f"{path}.{i}"
        _check_fields(_kind(block, where, known), _object(block, where), where)


def _check_messages(body: JSONObject) -> None:
    messages = _array(_required(body, "messages", ""), "messages")
    if not messages:
        _invalid("messages", "must hold at least one message")
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        doc = _object(message, path)
        role = _string(doc, "role", path)
        if role not in ROLES:
            _invalid(f"{path}.role", 'must be "user", "assistant" or "system"')
        content = _required(doc, "content", path)
        known = frozenset({"text"}) if role == "system" else BLOCK_TYPES
        _check_content(content, f"{path}.content", known=known)
        last_assistant = role == "assistant" and i == len(messages) - 1
        if not content and not last_assistant:
            _invalid(
                f"{path}.content",
                "must not be empty (only the final assistant message may be empty)",
            )


def _check_system(body: JSONObject) -> None:
    if body.get("system") is not None:
        _check_content(body["system"], "system", known=frozenset({"text"}))


def _check_tool(tool: JSONValue, path: str) -> None:
    doc = _object(tool, path)
    kind = doc.get("type")
    if kind is None or kind == "custom":
        _string(doc, "name", path, nonempty=True)
        _object(_required(doc, "input_schema", path), f"{path}.input_schema")
        if doc.get("description") is not None and not isinstance(doc["description"], str):
            _invalid(f"{path}.description", "must be a string")
    elif not isinstance(kind, str) or not kind:
        _invalid(f"{path}.type", "must be a non-empty string")


def _check_tools(body: JSONObject) -> None:
    if body.get("tools") is not None:
        for i, tool in enumerate(_array(body["tools"], "tools")):
            _check_tool(tool, f"tools.{i}")
    if body.get("tool_choice") is None:
        return
    choice = _object(body["tool_choice"], "tool_choice")
    kind = _string(choice, "type", "tool_choice")
    if kind not in TOOL_CHOICE_TYPES:
        _invalid("tool_choice.type", 'must be "auto", "any", "tool" or "none"')
    if kind == "tool":
        _string(choice, "name", "tool_choice", nonempty=True)
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        _invalid("tool_choice.disable_parallel_tool_use", "must be a boolean")


def _check_thinking(body: JSONObject) -> None:
    if body.get("thinking") is None:
        return
    thinking = _object(body["thinking"], "thinking")
    kind = _string(thinking, "type", "thinking")
    if kind not in THINKING_TYPES:
        _invalid("thinking.type", 'must be "enabled", "disabled", "adaptive" or "between_tools"')
    if kind == "enabled":
        budget = _required(thinking, "budget_tokens", "thinking")
        if not _is_int_from(budget, 1024):
            _invalid("thinking.budget_tokens", "must be an integer >= 1024")


def _check_model(body: JSONObject) -> str:
    return _string(body, "model", "", nonempty=True)


def _check_sampling(body: JSONObject) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not _is_fraction(value):
            _invalid(name, "must be a number from 0 to 1")
    top_k = body.get("top_k")
    if top_k is not None and not _is_int_from(top_k, 0):
        _invalid("top_k", "must be an integer >= 0")
    if body.get("stop_sequences") is not None:
        for i, stop in enumerate(_array(body["stop_sequences"], "stop_sequences")):
            if not isinstance(stop, str):
                _invalid(f"stop_sequences.{i}", "must be a string")
    if body.get("metadata") is not None:
        user = _object(body["metadata"], "metadata").get("user_id")
        if user is not None and not isinstance(user, str):
            _invalid("metadata.user_id", "must be a string")


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
        _invalid("max_tokens", "must be an integer >= 1")
    _check_prompt(body)
    _check_sampling(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _invalid("stream", "must be a boolean")
    return model, stream is True


def validate_count_tokens(body: JSONObject) -> str:
    """The ``model`` of a ``POST /v1/messages/count_tokens`` body: the checks of
    :func:`validate_messages` for the model and the prompt (``system``, ``messages``,
    ``tools``, ``tool_choice``, ``thinking``), without ``max_tokens`` or ``stream``."""
    return _check_prompt(body)


# --- translation --------------------------------------------------------------------------


def _compact(value: JSONValue) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _context_edits(value: JSONValue) -> None:
    """Refuse a ``context_management`` that asks for more than :data:`CLEARING_EDITS`."""
    if value is None:
        return
    edits = value.get("edits") if isinstance(value, dict) else None
    if not isinstance(edits, list):
        _untranslatable("context_management", "context_management (an Anthropic service feature)")
    for i, edit in enumerate(edits):
        kind = edit.get("type") if isinstance(edit, dict) else None
        if not (isinstance(kind, str) and kind.startswith(CLEARING_EDITS)):
            _untranslatable(
                f"context_management.edits.{i}",
                f"the context edit {kind!r} (an Anthropic service feature)",
            )


def _untranslatable(path: str, what: str) -> NoReturn:
    _invalid(path, f"{what} cannot be translated for this model's backend, which speaks only chat")


def _blocks(content: JSONValue, path: str) -> Iterator[tuple[str, str, JSONObject]]:
    """``(type, path, block)`` of each block of checked ``content`` (a string is one text)."""
    if isinstance(content, str):
        yield "text", path, {"type": "text", "text": content}
        return
    assert isinstance(content, list)
    for i, block in enumerate(content):
        assert isinstance(block, dict)
        yield str(block["type"]), f"{path}.{i}", block


def _joined_text(content: JSONValue, path: str) -> str:
    """The text of a checked ``system`` or system message: a string, or text blocks."""
    return "\n\n".join(str(block["text"]) for _, _, block in _blocks(content, path))


def _image_part(block: JSONObject, path: str) -> JSONObject:
    source = block["source"]
    assert isinstance(source, dict)
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source["type"] == "url":
        url = str(source["url"])
    else:
        _untranslatable(f"{path}.source.type", "an image given by file id (source type file)")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: JSONObject, path: str) -> tuple[JSONObject, list[JSONObject]]:
    """The ``tool`` message of a ``tool_result`` block, and the image parts it leaves over
    for the user message after it."""
    texts: list[str] = []
    images: list[JSONObject] = []
    for kind, where, inner in _blocks(block.get("content") or [], f"{path}.content"):
        if kind == "text":
            texts.append(str(inner["text"]))
        elif kind == "image":
            images.append(_image_part(inner, where))
        else:
            _untranslatable(f"{where}.type", f"a {kind} block in a tool result")
    text = "\n\n".join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text if text else TOOL_ERROR_PREFIX.rstrip(": ")
    if images:
        text = f"{text}\n\n{IMAGES_FOLLOW}" if text else IMAGES_FOLLOW
        images.insert(0, {"type": "text", "text": IMAGES_OF.format(id=block["tool_use_id"])})
    message: JSONObject = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}
    return message, images


def _user_content(parts: list[JSONObject]) -> JSONValue:
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(str(part["text"]) for part in parts)
    return list[JSONValue](parts)


def _user_messages(content: JSONValue, path: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[JSONObject] = []
    carried: list[JSONObject] = []
    parts: list[JSONObject] = []
    for kind, where, block in _blocks(content, path):
        if kind == "tool_result":
            message, images = _tool_message(block, where)
            tools.append(message)
            carried.extend(images)
        elif kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, where))
        else:
            _refuse_block(kind, where, "user")
    rest = carried + parts
    return tools + ([{"role": "user", "content": _user_content(rest)}] if rest else [])


def _tool_call(block: JSONObject) -> JSONObject:
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": _compact(block["input"])},
    }


def _assistant_message(content: JSONValue, path: str) -> JSONObject:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSONValue] = []
    for kind, where, block in _blocks(content, path):
        if kind == "text":
            texts.append(str(block["text"]))
        elif kind == "tool_use":
            calls.append(_tool_call(block))
        elif kind == "thinking":
            thoughts.append(str(block["thinking"]))
        elif kind != "redacted_thinking":  # encrypted: no backend but Anthropic reads it
            _refuse_block(kind, where, "assistant")
    message: JSONObject = {"role": "assistant", "content": "\n\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
        if not texts:
            message["content"] = None
    if thoughts:
        message["reasoning_content"] = "\n\n".join(thoughts)
    return message


def _refuse_block(kind: str, path: str, role: str) -> NoReturn:
    if kind in ("image", "tool_result", "tool_use", "thinking"):  # translated, elsewhere
        _invalid(f"{path}.type", f"a {kind} block cannot be in a {role} message")
    _untranslatable(f"{path}.type", f"a {kind} block")


def _chat_messages(body: JSONObject) -> list[JSONValue]:
    out: list[JSONValue] = []
    if body.get("system") is not None:
        out.append({"role": "system", "content": _joined_text(body["system"], "system")})
    messages = body["messages"]
    assert isinstance(messages, list)
    for i, message in enumerate(messages):
        assert isinstance(message, dict)
        path = f"messages.{i}.content"
        role, content = message["role"], message["content"]
        if role == "user":
            out.extend(_user_messages(content, path))
        elif role == "assistant":
            out.append(_assistant_message(content, path))
        else:
            out.append({"role": "system", "content": _joined_text(content, path)})
    return out


def _chat_tools(tools: JSONValue) -> list[JSONValue]:
    assert isinstance(tools, list)
    out: list[JSONValue] = []
    for i, tool in enumerate(tools):
        assert isinstance(tool, dict)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            _untranslatable(f"tools.{i}.type", f"the server tool {kind!r}")
        function: JSONObject = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: JSONValue, chat: JSONObject) -> None:
    assert isinstance(choice, dict)
    kind = choice["type"]
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[str(kind)]
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _output_format(body: JSONObject) -> JSONObject | None:
    """Structured output (``output_config.format``, or the older top-level
    ``output_format``) as chat's ``response_format``."""
    config = body.get("output_config")
    given = config.get("format") if isinstance(config, dict) else None
    path = "output_config.format"
    if given is None:
        given, path = body.get("output_format"), "output_format"
    if given is None:
        return None
    doc = _object(given, path)
    if doc.get("type") != "json_schema" or not isinstance(doc.get("schema"), dict):
        _invalid(path, 'must be {"type": "json_schema", "schema": {...}}')
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": doc["schema"], "strict": True},
    }


def _sampling(body: JSONObject, chat: JSONObject) -> None:
    chat["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]


def messages_to_chat(body: JSONObject) -> JSONObject:
    """The ``chat/completions`` body for ``body``, a Messages body that
    :func:`validate_messages` accepted, for a backend that speaks only chat.

    Raises :class:`InvalidRequest` (``param``: the field's dotted path) for what chat cannot
    carry: document, search-result, server-tool and other Anthropic-service blocks, images
    by file id, server tools, ``mcp_servers``, ``container``, context edits other than
    clearing ones (:data:`CLEARING_EDITS`, dropped).
    Other Anthropic fields the gateway does not translate are dropped; fields that are no
    Anthropic field (:data:`MESSAGES_FIELDS`) go on as they are, for the backend.
    ``model`` is copied as is."""
    for name in REFUSED_FIELDS:
        if body.get(name) is not None:
            _untranslatable(name, f"{name} (an Anthropic service feature)")
    _context_edits(body.get("context_management"))
    chat: JSONObject = {"model": body["model"], "messages": _chat_messages(body)}
    _sampling(body, chat)
    if body.get("tools"):
        chat["tools"] = _chat_tools(body["tools"])
    if body.get("tool_choice") is not None and "tools" in chat:  # chat wants tools with it
        _tool_choice(body["tool_choice"], chat)
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        enabled = thinking.get("type") != "disabled"
        chat["chat_template_kwargs"] = {"enable_thinking": enabled}
    response_format = _output_format(body)
    if response_format is not None:
        chat["response_format"] = response_format
    stream = body.get("stream") is True
    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}
    for name, value in body.items():
        if name not in MESSAGES_FIELDS and name not in chat:
            chat[name] = value
    return chat
