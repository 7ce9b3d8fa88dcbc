"""Chat Completions answers as Anthropic Messages answers, for backends that speak only chat.

:func:`chat_to_message` turns a whole ``chat.completion`` into a ``message`` object;
:class:`ChatToMessagesStream` turns a stream of ``chat.completion.chunk`` objects, fed one
at a time, into Anthropic's SSE events, owning the block indexes and tool-call ids.

Content is ordered as the model wrote it: thinking (from ``reasoning_content``, or vLLM's
newer ``reasoning``), then text, then one ``tool_use`` block per tool call.

Stop reasons: ``stop`` → ``end_turn`` (``stop_sequence`` when vLLM's ``stop_reason`` names
one of the request's stop sequences; ``tool_use`` when the answer holds tool calls, since
vLLM ends a forced tool call with ``stop``), ``length`` → ``max_tokens``, ``tool_calls`` and
``function_call`` → ``tool_use``, ``content_filter`` → ``refusal``, none → ``end_turn``.

Usage: Anthropic counts a prompt as ``input_tokens + cache_read_input_tokens`` (its
``input_tokens`` are the tokens *not* read from cache), while chat's ``prompt_tokens``
includes the cached ones; so ``input_tokens`` is ``prompt_tokens`` less
``prompt_tokens_details.cached_tokens``, and the cached ones are
``cache_read_input_tokens``.

Sans-I/O: plain values in, plain values (and bytes) out.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from typing import Literal

from ..abc import JSONObject, JSONValue
from ..errors import UpstreamProtocolError
from ..usage import token_count
from .base import utf8_json
from .chat import CallKeys, arguments_text, first_choices, text_of

__all__ = ["ChatToMessagesStream", "chat_to_message", "new_tool_use_id"]

_ALPHABET = string.ascii_letters + string.digits
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def new_tool_use_id() -> str:
    """A tool call id in Anthropic's form, for an upstream that gave none."""
    return "toolu_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def _counts(usage: JSONValue) -> tuple[int, int, int | None]:
    """``(input_tokens, output_tokens, cache_read_input_tokens)`` in Anthropic's sense for
    chat's ``usage`` object; absent counts are 0, an absent cache count ``None``."""
    doc = usage if isinstance(usage, dict) else {}
    prompt = token_count(doc.get("prompt_tokens")) or 0
    details = doc.get("prompt_tokens_details")
    cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return max(prompt - (cached or 0), 0), token_count(doc.get("completion_tokens")) or 0, cached


def _usage(input_tokens: int, output_tokens: int, cached: int | None) -> JSONObject:
    usage: JSONObject = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cached is not None:
        usage["cache_read_input_tokens"] = cached
    return usage


def _stop(
    finish_reason: JSONValue, matched: JSONValue, stop_sequences: Sequence[str], tools: bool
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` for a choice's ``finish_reason`` and vLLM's
    ``stop_reason`` (the stop string that ended it, when one did)."""
    if finish_reason in (None, "stop"):
        if isinstance(matched, str) and matched in stop_sequences:
            return "stop_sequence", matched
        return ("tool_use" if tools else "end_turn"), None
    reason = _STOP_REASONS.get(str(finish_reason), "end_turn")
    if reason == "tool_use" and not tools:  # "tool_calls" without a call: a client would
        reason = "end_turn"  # look for the tool_use block to answer, and find none
    return reason, None


def _reasoning(message: JSONObject) -> JSONValue:
    reasoning = message.get("reasoning_content")
    return reasoning if reasoning is not None else message.get("reasoning")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # (Python reads NaN and Infinity; clients do not)


def _input(arguments: JSONValue, name: JSONValue) -> JSONObject:
    """A tool call's arguments (a JSON text) as the ``input`` object of a ``tool_use``."""
    if arguments in (None, ""):
        return {}
    try:
        parsed = (
            json.loads(arguments, parse_constant=_no_constant)
            if isinstance(arguments, str)
            else arguments
        )
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError(
            f"upstream called tool {name!r} with arguments that are not a JSON object: "
            f"{str(arguments)[:200]!r}"
        )
    return parsed


def _tool_use(call: JSONValue) -> JSONObject:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise UpstreamProtocolError("upstream sent a tool call without a function")
    function = call["function"]
    assert isinstance(function, dict)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamProtocolError("upstream sent a tool call without a name")
    given = call.get("id")
    return {
        "type": "tool_use",
        "id": given if isinstance(given, str) and given else new_tool_use_id(),
        "name": name,
        "input": _input(function.get("arguments"), name),
    }


def _tool_calls(message: JSONObject) -> list[JSONValue]:
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return calls
    legacy = message.get("function_call")  # the deprecated single call
    return [{"function": legacy}] if isinstance(legacy, dict) else []


def _content(message: JSONObject) -> list[JSONValue]:
    blocks: list[JSONValue] = []
    reasoning = _reasoning(message)
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(_tool_use(call) for call in _tool_calls(message))
    return blocks


def _first_choice(answer: JSONObject) -> JSONObject | None:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def chat_to_message(
    answer: JSONObject, *, message_id: str, model: str, stop_sequences: Sequence[str] = ()
) -> JSONObject:
    """The Anthropic ``message`` for a whole ``chat.completion``, with id ``message_id``
    and ``model`` (the public name the client asked for).

    Raises :class:`UpstreamProtocolError` for an answer without ``choices[0].message``,
    and for a tool call without a name or whose arguments are not a JSON object."""
    choice = _first_choice(answer)
    message = choice.get("message") if choice is not None else None
    if choice is None or not isinstance(message, dict):
        raise UpstreamProtocolError("upstream answered without choices[0].message")
    content = _content(message)
    has_tools = any(isinstance(b, dict) and b["type"] == "tool_use" for b in content)
    reason, sequence = _stop(
        choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences, has_tools
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(*_counts(answer.get("usage"))),
    }


def _event(doc: JSONObject) -> bytes:
    """One SSE event of Anthropic's: its ``type`` as the event name, ``doc`` as compact JSON
    (:func:`~gateway.dialects.base.utf8_json`)."""
    return f"event: {doc['type']}\ndata: ".encode() + utf8_json(doc) + b"\n\n"


_Kind = Literal["thinking", "text", "tool_use"]


class ChatToMessagesStream:
    """Chat chunks in, Anthropic's stream events out.

    :meth:`feed` takes each upstream ``data:`` event's parsed JSON object, in order, and
    returns the whole events (``event: <type>\\ndata: <json>\\n\\n``, as bytes) it makes;
    :meth:`finish` is called once, at the upstream's ``[DONE]``. ``message_start`` comes
    with the first content block (or from :meth:`finish`), so chunks without content (the
    role chunk, the usage chunk) give nothing. Blocks are numbered 0, 1, 2… in order; a
    change of kind (reasoning → text → tool calls) or a new tool call closes the open block.
    ``input_json_delta`` carries each argument piece exactly as it arrived.

    Raises :class:`UpstreamProtocolError` for a chunk carrying an ``error`` and for a tool
    call that never gets a name; ``RuntimeError`` for a feed or a finish after the finish.

    ``input_tokens``, ``output_tokens`` and ``cache_read_input_tokens`` are the counts
    known so far (from the usage chunk, in Anthropic's sense: see the module's docstring).
    """

    def __init__(self, *, message_id: str, model: str, stop_sequences: Sequence[str] = ()) -> None:
        self.message_id = message_id
        self.model = model
        self.stop_sequences = tuple(stop_sequences)
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_input_tokens: int | None = None
        self._started = False
        self._finished = False
        self._blocks = 0  # blocks opened so far; the open one is self._blocks - 1
        self._open: _Kind | None = None
        self._tool_key: JSONValue = None  # the upstream's index (or id) of the open tool call
        self._call_keys = CallKeys()
        self._tool_id = ""  # the id the upstream gave the open tool call, if it did
        self._pending_tool: tuple[str, list[str]] | None = None  # id and pieces, no name yet
        self._tool_name = ""  # the open tool call's, once known
        self._tool_pieces: list[str] = []  # its argument pieces sent so far
        self._has_tools = False
        self._finish_reason: JSONValue = None
        self._matched_stop: JSONValue = None

    # --- events ---------------------------------------------------------------------------

    def _message_start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: JSONObject = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self.input_tokens, 0, self.cache_read_input_tokens),
        }
        return [_event({"type": "message_start", "message": message})]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        if self._pending_tool is not None:
            raise UpstreamProtocolError("upstream sent a tool call without a name")
        if self._open == "tool_use":  # its input must be an object, as in a whole answer
            _input("".join(self._tool_pieces), self._tool_name)
            self._tool_pieces = []
        self._open = None
        self._tool_key = None
        self._tool_id = ""
        return [_event({"type": "content_block_stop", "index": self._blocks - 1})]

    def _next_block(self, kind: _Kind) -> list[bytes]:
        """Close the open block and make the next one the open one; its
        ``content_block_start`` is the caller's to send."""
        out = self._message_start() + self._close()
        self._open = kind
        self._blocks += 1
        return out

    def _block_start(self, block: JSONObject) -> bytes:
        index = self._blocks - 1
        return _event({"type": "content_block_start", "index": index, "content_block": block})

    def _start(self, kind: _Kind, block: JSONObject) -> list[bytes]:
        return [*self._next_block(kind), self._block_start(block)]

    def _delta(self, delta: JSONObject) -> bytes:
        return _event({"type": "content_block_delta", "index": self._blocks - 1, "delta": delta})

    # --- content --------------------------------------------------------------------------

    def _thinking(self, piece: str) -> list[bytes]:
        out = []
        if self._open != "thinking":
            out = self._start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        return [*out, self._delta({"type": "thinking_delta", "thinking": piece})]

    def _text(self, piece: str) -> list[bytes]:
        out = []
        if self._open != "text":
            out = self._start("text", {"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": piece})]

    def _arguments(self, piece: str) -> bytes:
        self._tool_pieces.append(piece)
        return self._delta({"type": "input_json_delta", "partial_json": piece})

    def _tool_call(self, call: JSONObject) -> list[bytes]:
        given = call.get("id")
        given_id = given if isinstance(given, str) and given else ""
        key = call.get("index")
        if not isinstance(key, int):  # no index: a new id is a new call
            key = given_id or self._tool_key
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        out: list[bytes] = []
        if (
            self._open != "tool_use"
            or key != self._tool_key
            # Some servers (Ollama, SGLang) give every parallel call index 0: another id.
            or (given_id and self._tool_id and given_id != self._tool_id)
        ):
            self._call_keys.opening(call.get("index"), given_id, function.get("name"))
            out = self._next_block("tool_use")  # started once its name is known
            self._tool_key = key
            self._tool_id = given_id
            self._pending_tool = (given_id, [])
        name = function.get("name")
        arguments = function.get("arguments")
        piece = arguments_text(arguments)
        if self._pending_tool is None:
            return out + ([self._arguments(piece)] if piece else [])
        if given_id:
            self._tool_id = given_id
            self._pending_tool = (given_id, self._pending_tool[1])
        if piece:
            self._pending_tool[1].append(piece)
        if isinstance(name, str) and name:
            out += self._named_tool(name)
        return out

    def _named_tool(self, name: str) -> list[bytes]:
        """The ``content_block_start`` of the open tool call, now that its name is known,
        and the argument pieces that came before it."""
        assert self._pending_tool is not None
        given, pieces = self._pending_tool
        self._pending_tool = None
        self._has_tools = True
        self._tool_name = name
        block: JSONObject = {
            "type": "tool_use",
            "id": given or new_tool_use_id(),
            "name": name,
            "input": {},
        }
        return [self._block_start(block), *(self._arguments(piece) for piece in pieces)]

    # --- chunks ---------------------------------------------------------------------------

    def _note_usage(self, usage: JSONValue) -> None:
        self.input_tokens, self.output_tokens, cached = _counts(usage)
        if cached is not None:
            self.cache_read_input_tokens = cached

    def _choice(self, choice: JSONObject) -> list[bytes]:
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = choice.get("stop_reason")
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return []
        out: list[bytes] = []
        reasoning = _reasoning(delta)
        if isinstance(reasoning, str) and reasoning:
            out += self._thinking(reasoning)
        text = text_of(delta.get("content"))
        if text:
            out += self._text(text)
        calls = delta.get("tool_calls")
        if not (isinstance(calls, list) and calls) and isinstance(delta.get("function_call"), dict):
            calls = [{"index": 0, "function": delta["function_call"]}]
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out

    def feed(self, chunk: JSONObject) -> list[bytes]:
        """The events for one chat chunk (often none). Raises
        :class:`UpstreamProtocolError` for a chunk that carries an ``error``."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        choices = first_choices(chunk)
        if chunk.get("usage") is not None:
            self._note_usage(chunk["usage"])
        out: list[bytes] = []
        for choice in choices:
            out += self._choice(choice)
        return out

    def finish(self) -> list[bytes]:
        """The events that end the message: the open block's stop, ``message_delta`` (stop
        reason and usage) and ``message_stop`` (and ``message_start`` first, for an answer
        without content). Called once, at the upstream's ``[DONE]``."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        out = self._message_start() + self._close()
        reason, sequence = _stop(
            self._finish_reason, self._matched_stop, self.stop_sequences, self._has_tools
        )
        usage = _usage(self.input_tokens, self.output_tokens, self.cache_read_input_tokens)
        delta: JSONObject = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(_event({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_event({"type": "message_stop"}))
        return out
