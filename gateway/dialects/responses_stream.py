"""A stream of Chat Completions chunks as an OpenAI Responses stream, for backends that
speak only chat: :class:`ChatToResponsesStream`, fed one chunk at a time, makes the Responses
SSE events, owning the item ids, output and content indexes and sequence numbers. The
translation (order of items, status, usage, echoed parameters) is the whole answer's, in
:mod:`gateway.dialects.responses_answer`.

Sans-I/O: plain values in, bytes out.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from ..abc import JSONObject, JSONValue
from ..errors import UpstreamProtocolError
from .base import utf8_json
from .chat import CallKeys, arguments_text, first_choices, text_of
from .responses_answer import (
    call_item,
    message_item,
    reasoning_item,
    reasoning_text,
    response_object,
    response_status,
    responses_usage,
)
from .responses_custom import CustomInput
from .responses_request import new_call_id, new_item_id
from .responses_tools import tool_names

__all__ = ["ChatToResponsesStream"]


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
    namespace: str | None = None  # of a tool in a namespace
    custom: CustomInput | None = None

    def snapshot(self, status: str) -> JSONObject:
        text = "".join(self.pieces)
        if self.kind == "reasoning":
            return reasoning_item(self.item_id, text)
        if self.kind == "message":
            return message_item(self.item_id, text, status)
        if self.custom is not None:
            text = self.custom.text
        return call_item(
            self.kind, self.item_id, self.call_id, self.name, text, status, self.namespace
        )


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
        self._tools = tool_names(request, custom_tools)
        self._sequence = 0
        self._started = False
        self._ended = False
        self._output: list[JSONValue] = []  # the items done
        self._open: _Item | None = None
        self._call_keys = CallKeys()
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
        return response_object(
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
            self._usage = responses_usage(chunk["usage"])
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
        status, incomplete = response_status(self._finish_reason)
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
        item.kind, item.name, item.namespace = self._tools.called(name)
        item.call_id = item.call_id or new_call_id()
        if item.kind == "custom_tool_call":
            item.item_id = new_item_id("ctc")
            item.custom = CustomInput()
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
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        out: list[bytes] = []
        if (
            item is None
            or item.kind not in ("function_call", "custom_tool_call")
            or key != item.key
            # Some servers (Ollama, SGLang) give every parallel call index 0: another id.
            or (given_id and item.call_id and given_id != item.call_id)
        ):
            self._call_keys.opening(call.get("index"), given_id, function.get("name"))
            out, item = self._next("function_call")  # its kind is known with its name
            item.key = key
        if given_id and not item.call_id:
            item.call_id = given_id
        name = function.get("name")
        arguments = function.get("arguments")
        piece = arguments_text(arguments)
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
        reasoning = reasoning_text(delta)
        if isinstance(reasoning, str) and reasoning:
            out += self._content("reasoning", reasoning)
        text = text_of(delta.get("content"))
        if text:
            out += self._content("message", text)
        calls = delta.get("tool_calls")
        if not (isinstance(calls, list) and calls) and isinstance(delta.get("function_call"), dict):
            calls = [{"index": 0, "function": delta["function_call"]}]
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out
