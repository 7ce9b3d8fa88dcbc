"""Chat Completions answers as OpenAI Responses answers, for backends that speak only chat.

:func:`chat_to_response` turns a whole ``chat.completion`` into a ``response`` object; the
builders of that object and of its items are shared with
:class:`~gateway.dialects.responses_stream.ChatToResponsesStream`, which does the same for a
stream.

Output is ordered as the model wrote it: a ``reasoning`` item (from ``reasoning_content``, or
vLLM's newer ``reasoning``; its text as a ``reasoning_text`` part), a ``message`` item with one
``output_text`` part, then one item per tool call — a ``function_call``, or a
``custom_tool_call`` for a call of a custom (freeform) tool, whose ``input`` is unwrapped from
the chat arguments (:mod:`gateway.dialects.responses_custom`).

Status: ``finish_reason`` ``length`` makes the response ``incomplete`` with
``incomplete_details.reason`` ``max_output_tokens`` (and the item it cut ``incomplete``),
``content_filter`` likewise with reason ``content_filter``; anything else is ``completed``.

Usage: chat's ``prompt_tokens`` are Responses' ``input_tokens`` (both count cached tokens
too), ``completion_tokens`` its ``output_tokens``; ``cached_tokens`` and ``reasoning_tokens``
come from chat's details (0 when absent), ``cache_write_tokens`` is 0 (chat does not say).
An answer without usage gets ``usage: null``.

The request's parameters are echoed as OpenAI echoes them (given values, else OpenAI's
defaults — except ``temperature`` and ``top_p``, which are ``null`` unless given, since the
backend's own defaults are not OpenAI's).

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Collection

from ..abc import JSONObject, JSONValue
from ..errors import UpstreamProtocolError
from ..usage import token_count
from .chat import arguments_text, text_of
from .responses_custom import custom_input
from .responses_request import new_call_id, new_item_id
from .responses_tools import ChatTools, tool_names

__all__ = [
    "call_item",
    "chat_to_response",
    "failed_response",
    "message_item",
    "reasoning_item",
    "reasoning_text",
    "response_object",
    "response_status",
    "responses_usage",
    "warm_up_response",
]

# finish_reason → the reason of an incomplete response
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _detail(doc: JSONObject, key: str, name: str) -> int:
    details = doc.get(key)
    return (token_count(details.get(name)) if isinstance(details, dict) else None) or 0


def responses_usage(usage: JSONValue) -> JSONObject | None:
    """Responses' ``usage`` for chat's (``None`` for none)."""
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens")) or 0
    completion = token_count(usage.get("completion_tokens")) or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens"),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _detail(usage, "completion_tokens_details", "reasoning_tokens")
        },
        "total_tokens": prompt + completion,
    }


def response_status(finish_reason: JSONValue) -> tuple[str, str | None]:
    """``(status, incomplete_details.reason)`` for a chat ``finish_reason``."""
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", reason) if reason else ("completed", None)


def _given(request: JSONObject, key: str, kinds: tuple[type, ...], default: JSONValue) -> JSONValue:
    value = request.get(key)
    if isinstance(value, bool) and bool not in kinds:
        return default
    return value if isinstance(value, kinds) else default


def warm_up_response(
    request: JSONObject, *, response_id: str, model: str, created_at: int
) -> JSONObject:
    """The answer to a WebSocket ``response.create`` with ``generate: false``: a completed
    response with no output, which the next turn may continue."""
    return response_object(
        request,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status="completed",
        output=[],
    )


def failed_response(
    error: JSONObject, *, response_id: str, model: str, created_at: int
) -> tuple[JSONObject, JSONObject]:
    """A response of the gateway's for a stream that failed before the upstream said
    anything of its own: as created (in progress, no output) and as failed with ``error``
    (``{code, message}``)."""
    created = response_object(
        {},
        response_id=response_id,
        model=model,
        created_at=created_at,
        status="in_progress",
        output=[],
    )
    return created, {**created, "status": "failed", "error": error}


def response_object(
    request: JSONObject,
    *,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[JSONValue],
    usage: JSONObject | None = None,
    incomplete: str | None = None,
    error: JSONObject | None = None,
) -> JSONObject:
    """A ``response`` object, with the request's parameters echoed."""
    text = request.get("text")
    echoed_text: JSONObject = {"format": {"type": "text"}}
    if isinstance(text, dict):
        echoed_text.update(text)
    number, string = (int, float), (str,)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": _given(request, "instructions", string, None),
        "max_output_tokens": _given(request, "max_output_tokens", (int,), None),
        "max_tool_calls": _given(request, "max_tool_calls", (int,), None),
        "model": model,
        "output": output,
        "parallel_tool_calls": _given(request, "parallel_tool_calls", (bool,), True),
        "previous_response_id": _given(request, "previous_response_id", string, None),
        "prompt_cache_key": _given(request, "prompt_cache_key", string, None),
        "reasoning": _given(request, "reasoning", (dict,), None),
        "safety_identifier": _given(request, "safety_identifier", string, None),
        "store": _given(request, "store", (bool,), True),
        "temperature": _given(request, "temperature", number, None),
        "text": echoed_text,
        "tool_choice": _given(request, "tool_choice", (str, dict), "auto"),
        "tools": _given(request, "tools", (list,), []),
        "top_p": _given(request, "top_p", number, None),
        "truncation": _given(request, "truncation", string, "disabled"),
        "usage": usage,
        "user": _given(request, "user", string, None),
        "metadata": _given(request, "metadata", (dict,), {}),
    }


# --- items and whole answers ---------------------------------------------------------------


def reasoning_text(message: JSONObject) -> JSONValue:
    """The reasoning of a chat message or delta: ``reasoning_content``, or vLLM's newer
    ``reasoning``."""
    reasoning = message.get("reasoning_content")
    return reasoning if reasoning is not None else message.get("reasoning")


def reasoning_item(item_id: str, text: str) -> JSONObject:
    """A ``reasoning`` output item, its text as one ``reasoning_text`` part."""
    part: JSONObject = {"type": "reasoning_text", "text": text}
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [part]}


def message_item(item_id: str, text: str, status: str) -> JSONObject:
    """An assistant ``message`` output item with one ``output_text`` part."""
    part: JSONObject = {"type": "output_text", "annotations": [], "text": text}
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [part],
        "role": "assistant",
    }


def call_item(
    kind: str,
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    namespace: str | None = None,
) -> JSONObject:
    """A ``function_call`` item (``arguments``) or a ``custom_tool_call`` item (its
    ``input``), by ``kind``; with the ``namespace`` of a tool in one."""
    item: JSONObject = {"id": item_id, "type": kind, "status": status}
    item["input" if kind == "custom_tool_call" else "arguments"] = arguments
    item |= {"call_id": call_id, "name": name}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def _whole_call(call: JSONValue, tools: ChatTools) -> JSONObject:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise UpstreamProtocolError("upstream sent a tool call without a function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamProtocolError("upstream sent a tool call without a name")
    given = call.get("id")
    call_id = given if isinstance(given, str) and given else new_call_id()
    arguments = arguments_text(function.get("arguments"))
    kind, tool, namespace = tools.called(name)
    if kind == "custom_tool_call":
        item_id, arguments = new_item_id("ctc"), custom_input(arguments)
    else:
        item_id = new_item_id("fc")
    return call_item(kind, item_id, call_id, tool, arguments, "completed", namespace)


def _tool_calls(message: JSONObject) -> list[JSONValue]:
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return calls
    legacy = message.get("function_call")  # the deprecated single call
    return [{"function": legacy}] if isinstance(legacy, dict) else []


def chat_to_response(
    answer: JSONObject,
    *,
    response_id: str,
    model: str,
    request: JSONObject,
    created_at: int,
    custom_tools: Collection[str] = (),
) -> JSONObject:
    """The ``response`` for a whole ``chat.completion``, with id ``response_id``, ``model``
    (the public name the client asked for) and the parameters of ``request`` (the Responses
    body) echoed. Calls of the tools named in ``custom_tools``, and of the custom tools that
    ``request`` declares, are ``custom_tool_call`` items; a call of a tool in a namespace
    names the tool and its ``namespace`` (:mod:`gateway.dialects.responses_tools`).

    Raises :class:`UpstreamProtocolError` for an answer without ``choices[0].message`` and
    for a tool call without a function name."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamProtocolError("upstream answered without choices[0].message")
    tools = tool_names(request, custom_tools)
    output: list[JSONValue] = []
    reasoning = reasoning_text(message)
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(new_item_id("rs"), reasoning))
    text = text_of(message.get("content"))
    if text:
        output.append(message_item(new_item_id("msg"), text, "completed"))
    output.extend(_whole_call(call, tools) for call in _tool_calls(message))
    status, incomplete = response_status(choice.get("finish_reason"))
    last = output[-1] if output else None
    if incomplete and isinstance(last, dict) and "status" in last:
        last["status"] = "incomplete"
    return response_object(
        request,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status=status,
        output=output,
        usage=responses_usage(answer.get("usage")),
        incomplete=incomplete,
    )
