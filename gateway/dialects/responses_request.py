"""OpenAI Responses request bodies translated to Chat Completions (the checks are in
:mod:`.responses_validate`; :func:`validate_responses` and :func:`validate_input_tokens`
are re-exported here).

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
- Tools are chat functions as :mod:`gateway.dialects.responses_tools` makes them: a custom
  (freeform) tool, such as Codex's ``apply_patch``, takes one string argument,
  :data:`CUSTOM_TOOL_ARGUMENT` (``"input"``); a tool in a ``namespace`` tool (Codex's
  ``multi_agent_v1``) is named ``<namespace>__<name>``. A ``custom_tool_call`` item is a tool
  call with arguments ``{"input": "<text>"}``, its output a ``tool`` message; a call item with a
  ``namespace`` calls the qualified name. :mod:`gateway.dialects.responses_custom` turns a call
  of a custom tool's function back into a ``custom_tool_call``.
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
from collections.abc import Iterator, Sequence
from typing import NoReturn

from ..abc import JSONObject, JSONValue
from .anthropic_request import IMAGES_FOLLOW, IMAGES_OF
from .checks import invalid, path_at
from .responses_tools import chat_tools, qualified
from .responses_validate import (
    CALL_OUTPUTS,
    CALLS,
    CUSTOM_TOOL_ARGUMENT,
    EFFORTS,
    ID_PREFIXES,
    RESPONSES_FIELDS,
    TEXT_PARTS,
    item_type,
    new_call_id,
    new_item_id,
    validate_input_tokens,
    validate_responses,
)

__all__ = [
    "CUSTOM_TOOL_ARGUMENT",
    "IMAGES_FOLLOW",
    "IMAGES_OF",
    "RESPONSES_FIELDS",
    "input_items",
    "item_type",
    "new_call_id",
    "new_item_id",
    "responses_to_chat",
    "validate_input_tokens",
    "validate_responses",
]

# --- input items --------------------------------------------------------------------------


def _listed_part(part: JSONValue, assistant: bool) -> JSONValue:
    if assistant and isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
        return {"annotations": []} | part | {"type": "output_text"}
    return part


def _listed(item: JSONObject) -> JSONObject:
    kind = item_type(item)
    given = item.get("id")
    new = new_item_id(ID_PREFIXES.get(kind, "item"))
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


# --- translation --------------------------------------------------------------------------


def _compact(value: JSONValue) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _untranslatable(path: str, what: str) -> NoReturn:
    invalid(path, f"{what} cannot be translated for this model's backend, which speaks only chat")


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
        _untranslatable(path_at(path, "file_id"), "an image given by file id")
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
            _untranslatable(path_at(where, "type"), f"images in {role} messages")
        else:
            _untranslatable(path_at(where, "type"), f"an {kind} part")
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(str(part["text"]) for part in parts)
    return list[JSONValue](parts)


def _message(item: JSONObject, path: str) -> JSONObject:
    role = str(item.get("role"))
    chat_role = "system" if role in ("system", "developer") else role
    return {
        "role": chat_role,
        "content": _content(item.get("content"), path_at(path, "content"), role),
    }


def _tool_message(item: JSONObject, path: str) -> tuple[JSONObject, list[JSONObject]]:
    """The ``tool`` message of a call's output, and the image parts it leaves over for the
    user message after the run of tool messages."""
    call_id = item.get("call_id")
    output = item.get("output")
    texts: list[str] = []
    images: list[JSONObject] = []
    for kind, where, part in _parts(output, path_at(path, "output")):
        if kind in TEXT_PARTS:
            texts.append(_text(part))
        elif kind == "input_image":
            images.append(_image_part(part, where))
        else:
            _untranslatable(path_at(where, "type"), f"an {kind} part in a tool output")
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
    namespace = item.get("namespace")
    name = qualified(namespace if isinstance(namespace, str) else None, str(item.get("name")))
    function: JSONObject = {"name": name, "arguments": arguments}
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
            _untranslatable(path_at(path, "type"), f"a {kind} item")
    if images:
        out.append({"role": "user", "content": list[JSONValue](images)})
    if not out:
        invalid("input", "must hold at least one item")
    return list[JSONValue](out)


def _tool_name(tool: JSONValue) -> str:
    assert isinstance(tool, dict)
    function = tool["function"]
    assert isinstance(function, dict)
    return str(function["name"])


def _named(choice: JSONObject, path: str, tools: list[JSONObject]) -> str:
    kind = choice.get("type")
    if kind not in ("function", "custom"):
        _untranslatable(path_at(path, "type"), f"a tool choice of type {kind!r}")
    name = str(choice.get("name"))
    if name not in {_tool_name(tool) for tool in tools}:
        invalid(path_at(path, "name"), f"no tool is named {name!r}")
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
    tools = chat_tools(body.get("tools"))
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
