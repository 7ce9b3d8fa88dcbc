"""What an OpenAI-compatible answer must look like: checks for streamed and whole answers.

Sans-I/O: bytes or parsed JSON in, an :class:`Answer` out, or :class:`ShapeError` naming
the first thing that is wrong. Used by the conformance suite on what a backend yields and
on what a client receives through the gateway; backend authors may use it in their own
tests too.

A streamed answer (``text/event-stream``) is a sequence of ``data:`` events, each one JSON
chunk (``chat.completion.chunk`` or ``text_completion``), then ``data: [DONE]`` as the last
data event. Comment events (heartbeats, upstream pings) may appear anywhere and are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..abc import Endpoint, JSONObject
from ..sse import SSEEvent, SSEFramer

__all__ = ["Answer", "ShapeError", "check_stream", "check_unary", "parse_sse"]


class ShapeError(AssertionError):
    """The answer is not what an OpenAI client expects."""


@dataclass(frozen=True, slots=True)
class Answer:
    text: str  # the content (chat) or text (completions), concatenated
    pieces: int  # how many chunks carried a non-empty piece of it (1 for a whole answer)
    finish_reason: str | None
    usage: JSONObject | None  # the usage object as sent, when the answer has one


def parse_sse(raw: bytes) -> list[SSEEvent]:
    """Every event of a complete SSE body; a trailing partial event is an error."""
    framer = SSEFramer()
    events = framer.feed(raw)
    if framer.pending:
        raise ShapeError(f"the stream ends inside an event: {raw[-80:]!r}")
    return events


_OBJECTS = {"chat/completions": "chat.completion", "completions": "text_completion"}
_CHUNK_OBJECTS = {"chat/completions": "chat.completion.chunk", "completions": "text_completion"}


def _usage(doc: dict[str, Any], where: str) -> JSONObject:
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        raise ShapeError(f"{where}: no usage object")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if not isinstance(usage.get(key), int) or isinstance(usage.get(key), bool):
            raise ShapeError(f"{where}: usage.{key} is not an integer: {usage!r}")
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        raise ShapeError(f"{where}: usage.total_tokens is not prompt + completion: {usage!r}")
    return usage


def check_stream(endpoint: Endpoint, events: Sequence[SSEEvent], *, usage: bool) -> Answer:
    """Check a streamed answer. ``usage``: the request asked for it
    (``stream_options.include_usage``) and the backend reports it."""
    data = [e.data for e in events if e.data is not None]
    if not data:
        raise ShapeError("the stream has no data events")
    if data[-1] != "[DONE]":
        raise ShapeError(f"the last data event is not [DONE] but {data[-1][:200]!r}")
    if data.count("[DONE]") != 1:
        raise ShapeError("[DONE] appears more than once")
    object_name = _CHUNK_OBJECTS[endpoint]
    text: list[str] = []
    pieces = 0
    finish: list[str] = []
    usage_doc: JSONObject | None = None
    ids: set[str] = set()
    for item in data[:-1]:
        try:
            doc = json.loads(item)
        except ValueError:
            raise ShapeError(f"a data event is not JSON: {item[:200]!r}") from None
        if not isinstance(doc, dict):
            raise ShapeError(f"a data event is not a JSON object: {item[:200]!r}")
        if "error" in doc:
            raise ShapeError(f"an error event inside a successful stream: {item[:200]!r}")
        if doc.get("object") != object_name:
            raise ShapeError(f"chunk object is {doc.get('object')!r}, not {object_name!r}")
        if isinstance(doc.get("id"), str):
            ids.add(doc["id"])
        choices = doc.get("choices")
        if not isinstance(choices, list):
            raise ShapeError(f"a chunk has no choices list: {item[:200]!r}")
        if doc.get("usage") is not None:
            usage_doc = _usage(doc, "the usage chunk")
        for choice in choices:
            if not isinstance(choice, dict):
                raise ShapeError(f"a choice is not an object: {item[:200]!r}")
            if endpoint == "chat/completions":
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    raise ShapeError(f"a chat chunk's choice has no delta: {item[:200]!r}")
                piece = delta.get("content")
            else:
                piece = choice.get("text")
                if not isinstance(piece, str):
                    raise ShapeError(f"a completions chunk's choice has no text: {item[:200]!r}")
            if piece:
                if not isinstance(piece, str):
                    raise ShapeError(f"content is not a string: {item[:200]!r}")
                text.append(piece)
                pieces += 1
            if choice.get("finish_reason") is not None:
                finish.append(str(choice["finish_reason"]))
    if len(ids) > 1:
        raise ShapeError(f"chunks of one answer carry different ids: {sorted(ids)}")
    if len(finish) != 1:
        raise ShapeError(f"expected one finish_reason in the stream, got {finish}")
    if usage and usage_doc is None:
        raise ShapeError("include_usage was asked for, but no chunk carries usage")
    return Answer("".join(text), pieces, finish[0], usage_doc)


def check_unary(endpoint: Endpoint, body: bytes, *, usage: bool) -> Answer:
    """Check a whole (non-streamed) answer's JSON body."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ShapeError(f"the answer is not JSON: {body[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ShapeError(f"the answer is not a JSON object: {body[:200]!r}")
    if doc.get("object") != _OBJECTS[endpoint]:
        raise ShapeError(f"object is {doc.get('object')!r}, not {_OBJECTS[endpoint]!r}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ShapeError(f"no choices: {body[:200]!r}")
    choice = choices[0]
    if endpoint == "chat/completions":
        message = choice.get("message")
        if not isinstance(message, dict) or message.get("role") != "assistant":
            raise ShapeError(f"choices[0].message is not an assistant message: {message!r}")
        text = message.get("content")
    else:
        text = choice.get("text")
    if not isinstance(text, str) or not text:
        raise ShapeError(f"the answer has no text: {choice!r}")
    if choice.get("finish_reason") is None:
        raise ShapeError("choices[0].finish_reason is missing")
    usage_doc = _usage(doc, "the answer") if usage else None
    return Answer(text, 1, str(choice["finish_reason"]), usage_doc)
