"""Anthropic Messages request bodies translated to Chat Completions (checked first by
:mod:`gateway.dialects.anthropic_validate`).

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
from .checks import invalid, object_at

__all__ = [
    "IMAGES_FOLLOW",
    "IMAGES_OF",
    "TOOL_ERROR_PREFIX",
    "messages_to_chat",
]

TOOL_ERROR_PREFIX = "Error: "
"""Put before a failed tool result's text (``is_error: true``), so the model sees it failed."""
IMAGES_FOLLOW = "[the images of this result follow in the next user message]"
"""Ends the ``tool`` message of a tool result that had images."""
IMAGES_OF = "[images of the result of tool call {id}]"
"""The text part before the images of tool result ``{id}`` in the user message after it."""

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
    invalid(path, f"{what} cannot be translated for this model's backend, which speaks only chat")


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
        invalid(f"{path}.type", f"a {kind} block cannot be in a {role} message")
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
    doc = object_at(given, path)
    if doc.get("type") != "json_schema" or not isinstance(doc.get("schema"), dict):
        invalid(path, 'must be {"type": "json_schema", "schema": {...}}')
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
