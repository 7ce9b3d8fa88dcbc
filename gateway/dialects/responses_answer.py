"""Chat Completions answers as OpenAI Responses answers, for backends that speak only chat.

:func:`chat_to_response` turns a whole ``chat.completion`` into a ``response`` object;
:class:`ChatToResponsesStream` turns a stream of ``chat.completion.chunk`` objects, fed one
at a time, into the Responses SSE events, owning the item ids, output and content indexes
and sequence numbers.

Output is ordered as the model wrote it: a ``reasoning`` item (from ``reasoning_content``, or
vLLM's newer ``reasoning``; its text as a ``reasoning_text`` part), a ``message`` item with one
``output_text`` part, then one item per tool call — a ``function_call``, or a
``custom_tool_call`` for a call of a custom (freeform) tool, whose ``input`` is unwrapped from
the chat arguments ``{"input": "<text>"}`` (see :mod:`gateway.dialects.responses_request`).
Should a model pass other arguments, an object of one string is taken for that string, and
anything else is passed on as the raw text.

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

Sans-I/O: plain values in, plain values (and bytes) out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from ..abc import JSONObject, JSONValue
from ..errors import UpstreamProtocolError
from .base import utf8_json
from .chat import count, first_choices
from .responses_request import CUSTOM_TOOL_ARGUMENT, custom_tool_names, new_call_id, new_item_id

__all__ = ["ChatToResponsesStream", "chat_to_response", "custom_input"]

# finish_reason → the reason of an incomplete response
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_WRAPPED = re.compile(r'\s*\{\s*"' + CUSTOM_TOOL_ARGUMENT + r'"\s*:\s*"')
_HEAD_MAX = 256  # arguments that have not opened the wrapper's string by then never will
_SPECIAL = re.compile(r'["\\]')


def _detail(doc: JSONObject, key: str, name: str) -> int:
    details = doc.get(key)
    return (count(details.get(name)) if isinstance(details, dict) else None) or 0


def _usage(usage: JSONValue) -> JSONObject | None:
    """Responses' ``usage`` for chat's (``None`` for none)."""
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens")) or 0
    completion = count(usage.get("completion_tokens")) or 0
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


def _status(finish_reason: JSONValue) -> tuple[str, str | None]:
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
    return _response(
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
    created = _response(
        {},
        response_id=response_id,
        model=model,
        created_at=created_at,
        status="in_progress",
        output=[],
    )
    return created, {**created, "status": "failed", "error": error}


def _response(
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


# --- custom tool input ---------------------------------------------------------------------


class _CustomInput:
    """The ``input`` of a custom tool call, decoded as the chat arguments that wrap it
    (``{"input": "<JSON string>"}``) arrive in pieces: :meth:`feed` returns the text decoded
    so far that it had not returned yet, and :meth:`finish` the rest, so the pieces add up to
    the whole input. A JSON escape split between pieces waits for its end (a surrogate pair
    for both halves); only the undecoded rest is kept. Arguments of another shape give
    nothing until :meth:`finish`; a string that is no JSON after all goes on as it is."""

    __slots__ = ("_head", "_sent", "_state", "_tail")

    def __init__(self) -> None:
        self._head: list[str] = []  # the pieces before the string (all of them, for others)
        self._tail = ""  # the string's undecoded rest
        self._sent: list[str] = []
        self._state: Literal["head", "other", "string", "closed", "literal"] = "head"

    def feed(self, piece: str) -> str:
        if self._state == "literal":
            self._sent.append(piece)
            return piece
        if self._state in ("other", "closed"):
            self._head.append(piece)
            return ""
        if self._state == "head":
            self._head.append(piece)
            head = "".join(self._head)
            opening = _WRAPPED.match(head)
            if opening is None:
                self._state = "other" if len(head) > _HEAD_MAX else "head"
                return ""
            self._state, piece = "string", head[opening.end() :]
        self._tail += piece
        end = self._decodable()
        chunk, self._tail = self._tail[:end], self._tail[end:]
        try:
            text = str(json.loads(f'"{chunk}"', strict=False))
        except ValueError:
            text, self._tail, self._state = chunk + self._tail, "", "literal"
        self._sent.append(text)
        return text

    def _decodable(self) -> int:
        """How much of the tail decodes: up to the string's closing quote, or to an escape
        not yet whole."""
        tail, i = self._tail, 0
        while (special := _SPECIAL.search(tail, i)) is not None:
            i = special.start()
            if tail[i] == '"':
                self._state = "closed"
                return i
            escape = tail[i + 1 : i + 2]
            if escape != "u":
                if not escape:
                    return i
                i += 2
                continue
            if i + 6 > len(tail):
                return i
            if "d800" <= tail[i + 2 : i + 6].lower() <= "dbff" and tail[i + 6 : i + 8] in (
                "",
                "\\",
                "\\u",
            ):
                if i + 12 > len(tail):
                    return i  # the other half of a surrogate pair may follow
                i += 6
            i += 6
        return len(tail)

    def finish(self) -> str:
        """The rest of the input: for arguments of another shape, all of it (an escape left
        unfinished at the end of a string cut short is dropped)."""
        if self._state not in ("head", "other"):
            return ""
        rest = _other_shape("".join(self._head))
        self._sent.append(rest)
        return rest

    @property
    def text(self) -> str:
        """The input decoded so far."""
        return "".join(self._sent)


def _other_shape(arguments: str) -> str:
    """A custom tool's input from arguments that are not ``{"input": "..."}``: the one
    string of a one-key object, else the arguments as they are."""
    try:
        doc = json.loads(arguments, strict=False)
    except ValueError:
        return arguments
    if isinstance(doc, dict) and len(doc) == 1:
        (value,) = doc.values()
        if isinstance(value, str):
            return value
    return arguments


def custom_input(arguments: str) -> str:
    """The ``input`` of a custom tool call for the chat ``arguments`` of its call."""
    unwrapped = _CustomInput()
    return unwrapped.feed(arguments) + unwrapped.finish()


# --- whole answers -------------------------------------------------------------------------


def _reasoning_text(message: JSONObject) -> JSONValue:
    reasoning = message.get("reasoning_content")
    return reasoning if reasoning is not None else message.get("reasoning")


def _reasoning_item(item_id: str, text: str) -> JSONObject:
    part: JSONObject = {"type": "reasoning_text", "text": text}
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [part]}


def _message_item(item_id: str, text: str, status: str) -> JSONObject:
    part: JSONObject = {"type": "output_text", "annotations": [], "text": text}
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [part],
        "role": "assistant",
    }


def _call_item(
    kind: str, item_id: str, call_id: str, name: str, arguments: str, status: str
) -> JSONObject:
    item: JSONObject = {"id": item_id, "type": kind, "status": status}
    item["input" if kind == "custom_tool_call" else "arguments"] = arguments
    item |= {"call_id": call_id, "name": name}
    return item


def _arguments(value: JSONValue) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _whole_call(call: JSONValue, custom: Collection[str]) -> JSONObject:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise UpstreamProtocolError("upstream sent a tool call without a function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamProtocolError("upstream sent a tool call without a name")
    given = call.get("id")
    call_id = given if isinstance(given, str) and given else new_call_id()
    arguments = _arguments(function.get("arguments"))
    if name in custom:
        item_id, arguments = new_item_id("ctc"), custom_input(arguments)
        return _call_item("custom_tool_call", item_id, call_id, name, arguments, "completed")
    return _call_item("function_call", new_item_id("fc"), call_id, name, arguments, "completed")


def _text_of(content: JSONValue) -> str:
    if isinstance(content, list):  # content parts, as some servers send them
        return "".join(
            str(part.get("text")) for part in content if isinstance(part, dict) and "text" in part
        )
    return content if isinstance(content, str) else ""


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
    ``request`` declares, are ``custom_tool_call`` items.

    Raises :class:`UpstreamProtocolError` for an answer without ``choices[0].message`` and
    for a tool call without a function name."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamProtocolError("upstream answered without choices[0].message")
    custom = frozenset(custom_tools) | custom_tool_names(request)
    output: list[JSONValue] = []
    reasoning = _reasoning_text(message)
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(new_item_id("rs"), reasoning))
    text = _text_of(message.get("content"))
    if text:
        output.append(_message_item(new_item_id("msg"), text, "completed"))
    output.extend(_whole_call(call, custom) for call in _tool_calls(message))
    status, incomplete = _status(choice.get("finish_reason"))
    last = output[-1] if output else None
    if incomplete and isinstance(last, dict) and "status" in last:
        last["status"] = "incomplete"
    return _response(
        request,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status=status,
        output=output,
        usage=_usage(answer.get("usage")),
        incomplete=incomplete,
    )


# --- streams -------------------------------------------------------------------------------


def _encode(doc: JSONObject) -> bytes:
    """One SSE event: ``doc['type']`` as the event name, ``doc`` as compact JSON
    (:func:`~gateway.dialects.base.utf8_json`)."""
    return f"event: {doc['type']}\ndata: ".encode() + utf8_json(doc) + b"\n\n"


_Kind = Literal["reasoning", "message", "function_call", "custom_tool_call"]


@dataclass(slots=True)
class _Item:
    """The output item being streamed."""

    kind: _Kind
    index: int  # its output_index
    item_id: str = ""
    pieces: list[str] = field(default_factory=list)  # text, or argument pieces
    key: JSONValue = None  # the upstream's index (or id) of a tool call
    call_id: str = ""
    name: str = ""  # a tool call's; it is announced once the name is known
    custom: _CustomInput | None = None

    def snapshot(self, status: str) -> JSONObject:
        text = "".join(self.pieces)
        if self.kind == "reasoning":
            return _reasoning_item(self.item_id, text)
        if self.kind == "message":
            return _message_item(self.item_id, text, status)
        if self.custom is not None:
            text = self.custom.text
        return _call_item(self.kind, self.item_id, self.call_id, self.name, text, status)


class ChatToResponsesStream:
    """Chat chunks in, Responses stream events out.

    :meth:`start` gives ``response.created`` and ``response.in_progress`` (their response
    ``in_progress``, with no output); :meth:`feed` takes each upstream ``data:`` event's parsed
    JSON object, in order, and returns the whole events (``event: <type>\\ndata: <json>\\n\\n``,
    as bytes) it makes; :meth:`finish` is called once, at the upstream's ``[DONE]``, and ends
    with ``response.completed`` or ``response.incomplete``; :meth:`failed` ends a stream with
    ``response.failed`` instead. Every event carries a ``sequence_number``, from 0 and up by
    one across everything this object makes, :meth:`keepalive` events included.

    Per output item: ``response.output_item.added``, then for a message
    ``response.content_part.added``, ``response.output_text.delta``…, ``.done`` and
    ``response.content_part.done``; for reasoning the same with ``response.reasoning_text.*``
    and a ``reasoning_text`` part; for a function call ``response.function_call_arguments.delta``…
    and ``.done`` (each argument piece as it arrived); for a custom tool call
    ``response.custom_tool_call_input.delta``… and ``.done``; then
    ``response.output_item.done``. A change of kind (reasoning → text → tool calls) or a new
    tool call closes the open item; a tool call is announced once its name is known.

    Raises :class:`UpstreamProtocolError` for a chunk carrying an ``error`` and for a tool
    call that never gets a name; ``RuntimeError`` for a call out of order (a feed before
    :meth:`start` or after the end, a keepalive before :meth:`start` or after the end).

    :attr:`response` is the response as it stands: after the end, the whole final one.
    """

    def __init__(
        self,
        *,
        response_id: str,
        model: str,
        request: JSONObject,
        created_at: int,
        custom_tools: Collection[str] = (),
    ) -> None:
        self.response_id = response_id
        self.model = model
        self.request = request
        self.created_at = created_at
        self._custom = frozenset(custom_tools) | custom_tool_names(request)
        self._sequence = 0
        self._started = False
        self._ended = False
        self._output: list[JSONValue] = []  # the items done
        self._open: _Item | None = None
        self._usage: JSONObject | None = None
        self._finish_reason: JSONValue = None
        self.response: JSONObject = self._response("in_progress", [])

    def _response(
        self,
        status: str,
        output: list[JSONValue],
        incomplete: str | None = None,
        error: JSONObject | None = None,
    ) -> JSONObject:
        return _response(
            self.request,
            response_id=self.response_id,
            model=self.model,
            created_at=self.created_at,
            status=status,
            output=output,
            usage=self._usage,
            incomplete=incomplete,
            error=error,
        )

    def _event(self, kind: str, **fields: JSONValue) -> bytes:
        doc: JSONObject = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return _encode(doc)

    def _item_event(self, kind: str, item: _Item, **fields: JSONValue) -> bytes:
        return self._event(kind, item_id=item.item_id, output_index=item.index, **fields)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress`` (sequence numbers 0 and 1)."""
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def keepalive(self) -> bytes:
        """A ``keepalive`` event, numbered into the stream (only between :meth:`start` and
        the end: never before ``response.created``, never after the last event)."""
        if not self._started or self._ended:
            raise RuntimeError("keepalive() outside the stream")
        return self._event("keepalive")

    def feed(self, chunk: JSONObject) -> list[bytes]:
        """The events for one chat chunk (often none). Raises
        :class:`UpstreamProtocolError` for a chunk that carries an ``error``."""
        if not self._started or self._ended:
            raise RuntimeError("feed() outside the stream")
        choices = first_choices(chunk)
        if chunk.get("usage") is not None:
            self._usage = _usage(chunk["usage"])
        out: list[bytes] = []
        for choice in choices:
            out += self._choice(choice)
        return out

    def finish(self) -> list[bytes]:
        """The events that end the response, at the upstream's ``[DONE]``: the open item's
        end, then ``response.completed`` (or ``response.incomplete``) with the whole response,
        which :attr:`response` keeps."""
        if not self._started or self._ended:
            raise RuntimeError("finish() outside the stream")
        status, incomplete = _status(self._finish_reason)
        out = self._close(status)
        self._ended = True
        self.response = self._response(status, list(self._output), incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=self.response)]

    def failed(self, code: str, message: str) -> list[bytes]:
        """``response.failed`` with ``error`` ``{code, message}``, ending the stream; its
        response holds the items done and the open one as far as it got (``incomplete``).
        ``code`` goes out as given: the SDKs read it as a string, though their models list
        only OpenAI's own codes (``server_error``, ``rate_limit_exceeded``, ...). Before
        :meth:`start` nothing of the response is out, and the dialect's ``error`` event is
        the one to send instead."""
        if self._ended:
            raise RuntimeError("failed() after the end")
        self._ended = True
        output = list(self._output)
        if self._open is not None and self._open.item_id:
            output.append(self._open.snapshot("incomplete"))
        error: JSONObject = {"code": code, "message": message}
        self.response = self._response("failed", output, error=error)
        return [self._event("response.failed", response=self.response)]

    # --- items --------------------------------------------------------------------------------

    def _next(self, kind: _Kind) -> tuple[list[bytes], _Item]:
        """Close the open item and make a new one the open one."""
        out = self._close("completed")
        item = self._open = _Item(kind, len(self._output))
        return out, item

    def _close(self, status: str) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        if not item.item_id:
            raise UpstreamProtocolError("upstream sent a tool call without a name")
        self._open = None
        out: list[bytes] = []
        if item.custom is not None:
            rest = item.custom.finish()
            if rest:
                out.append(
                    self._item_event("response.custom_tool_call_input.delta", item, delta=rest)
                )
        snapshot = item.snapshot(status)
        if item.kind in ("message", "reasoning"):
            content = snapshot["content"]
            assert isinstance(content, list) and isinstance(content[0], dict)
            part = content[0]
            done = f"response.{part['type']}.done"  # output_text or reasoning_text
            extra: JSONObject = {"logprobs": []} if item.kind == "message" else {}
            out.append(self._item_event(done, item, content_index=0, text=part["text"], **extra))
            out.append(
                self._item_event("response.content_part.done", item, content_index=0, part=part)
            )
        elif item.custom is not None:
            done_input = snapshot["input"]
            out.append(
                self._item_event("response.custom_tool_call_input.done", item, input=done_input)
            )
        else:
            arguments = snapshot["arguments"]
            out.append(
                self._item_event("response.function_call_arguments.done", item, arguments=arguments)
            )
        self._output.append(snapshot)
        out.append(self._event("response.output_item.done", output_index=item.index, item=snapshot))
        return out

    def _content(self, kind: Literal["reasoning", "message"], piece: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._open
        if item is None or item.kind != kind:
            out, item = self._next(kind)
            item.item_id = new_item_id("msg" if kind == "message" else "rs")
            added = item.snapshot("in_progress") | {"content": []}
            part: JSONObject = {"type": "output_text", "annotations": [], "text": ""}
            if kind == "reasoning":
                part = {"type": "reasoning_text", "text": ""}
            out.append(
                self._event("response.output_item.added", output_index=item.index, item=added)
            )
            out.append(
                self._item_event("response.content_part.added", item, content_index=0, part=part)
            )
        item.pieces.append(piece)
        if kind == "message":
            out.append(
                self._item_event(
                    "response.output_text.delta", item, content_index=0, delta=piece, logprobs=[]
                )
            )
        else:
            out.append(
                self._item_event(
                    "response.reasoning_text.delta", item, content_index=0, delta=piece
                )
            )
        return out

    def _arguments(self, item: _Item, piece: str) -> list[bytes]:
        if item.custom is None:
            return [self._item_event("response.function_call_arguments.delta", item, delta=piece)]
        text = item.custom.feed(piece)
        if not text:
            return []
        return [self._item_event("response.custom_tool_call_input.delta", item, delta=text)]

    def _announce(self, item: _Item, name: str) -> list[bytes]:
        """The ``output_item.added`` of a tool call, now that its name is known, and the
        argument pieces that came before it."""
        item.name = name
        item.call_id = item.call_id or new_call_id()
        if name in self._custom:
            item.kind = "custom_tool_call"
            item.item_id = new_item_id("ctc")
            item.custom = _CustomInput()
        else:
            item.item_id = new_item_id("fc")
        held, item.pieces = item.pieces, []
        added = item.snapshot("in_progress")
        out = [self._event("response.output_item.added", output_index=item.index, item=added)]
        for piece in held:
            item.pieces.append(piece)
            out += self._arguments(item, piece)
        return out

    def _tool_call(self, call: JSONObject) -> list[bytes]:
        given = call.get("id")
        given_id = given if isinstance(given, str) and given else ""
        item = self._open
        key = call.get("index")
        if not isinstance(key, int):  # no index: a new id is a new call
            key = given_id or (item.key if item is not None else None)
        out: list[bytes] = []
        if (
            item is None
            or item.kind not in ("function_call", "custom_tool_call")
            or key != item.key
            # Some servers (Ollama, SGLang) give every parallel call index 0: another id.
            or (given_id and item.call_id and given_id != item.call_id)
        ):
            out, item = self._next("function_call")  # its kind is known with its name
            item.key = key
        if given_id and not item.call_id:
            item.call_id = given_id
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        piece = arguments if isinstance(arguments, str) else ""
        if item.item_id:
            if piece:
                item.pieces.append(piece)
                out += self._arguments(item, piece)
            return out
        if piece:
            item.pieces.append(piece)
        if isinstance(name, str) and name:
            out += self._announce(item, name)
        return out

    def _choice(self, choice: JSONObject) -> list[bytes]:
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return []
        out: list[bytes] = []
        reasoning = _reasoning_text(delta)
        if isinstance(reasoning, str) and reasoning:
            out += self._content("reasoning", reasoning)
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._content("message", text)
        calls = delta.get("tool_calls")
        if not (isinstance(calls, list) and calls) and isinstance(delta.get("function_call"), dict):
            calls = [{"index": 0, "function": delta["function_call"]}]
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out
