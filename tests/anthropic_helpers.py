"""What the Anthropic Messages ↔ Chat Completions translation tests share: request
builders, chat answers and chunks, the parsing of a translated stream, and the ``anthropic``
SDK's accumulation of one."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from typing import Any

from gateway.abc import JSONObject
from gateway.dialects.anthropic_answer import ChatToMessagesStream, chat_to_message
from gateway.dialects.anthropic_request import (
    messages_to_chat,
)
from gateway.dialects.anthropic_validate import validate_messages

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


PNG_URL = "data:image/png;base64,iVBORw0KGgo="


TOOL_ID = re.compile(r"toolu_[A-Za-z0-9]{24}")


def request(**fields: Any) -> JSONObject:
    doc: JSONObject = {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    doc.update(fields)
    return doc


def chat(**fields: Any) -> dict[str, Any]:
    """The chat body for ``request(**fields)``, which must pass validation first."""
    doc = request(**fields)
    validate_messages(doc)
    before = copy.deepcopy(doc)
    out = messages_to_chat(doc)
    assert doc == before, "translation must not change the body it reads"
    return out


def messages(*turns: Any) -> dict[str, Any]:
    """The chat messages for Messages ``turns``."""
    out = chat(messages=list(turns))["messages"]
    assert isinstance(out, list)
    return {"messages": out}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def tool_result(id: str, content: Any = None, **fields: Any) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": id, **fields}
    if content is not None:
        block["content"] = content
    return block


def completion(message: Any, finish_reason: Any = "stop", **fields: Any) -> JSONObject:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, **fields}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "local-gguf",
        "choices": [choice],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def to_message(answer: JSONObject, stop_sequences: Iterable[str] = ()) -> dict[str, Any]:
    return chat_to_message(
        answer, message_id="msg_1", model="claude-x", stop_sequences=tuple(stop_sequences)
    )


STOP_REASONS = [
    ("stop", None, (), False, "end_turn", None),
    (None, None, (), False, "end_turn", None),
    ("stop", "END", ("END", "###"), False, "stop_sequence", "END"),
    ("stop", "OTHER", ("END",), False, "end_turn", None),
    ("stop", 151643, ("END",), False, "end_turn", None),  # vLLM: a stop token id
    ("length", None, (), False, "max_tokens", None),
    ("length", None, (), True, "max_tokens", None),
    ("tool_calls", None, (), True, "tool_use", None),
    ("function_call", None, (), True, "tool_use", None),
    ("tool_calls", None, (), False, "end_turn", None),  # no call to answer: no tool_use
    ("stop", None, (), True, "tool_use", None),  # vLLM's forced tool call ends with stop
    ("content_filter", None, (), False, "refusal", None),
    ("something_new", None, (), False, "end_turn", None),
]


Event = tuple[str, dict[str, Any]]


def chunk(delta: JSONObject, finish_reason: Any = None, **fields: Any) -> JSONObject:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, **fields}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def usage_chunk(prompt: int, completion: int) -> JSONObject:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


ROLE = chunk({"role": "assistant", "content": ""})


def parse(raw: bytes) -> Event:
    """One whole SSE event of Anthropic's: its name, and its data (whose type it is)."""
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1, raw
    head, data = raw[:-2].split(b"\n")
    assert head.startswith(b"event: ") and data.startswith(b"data: "), raw
    name, doc = head[7:].decode(), json.loads(data[6:])
    assert doc["type"] == name
    assert data[6:].decode() == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return name, doc


def run_stream(
    chunks: list[JSONObject], stop_sequences: tuple[str, ...] = (), raw: list[bytes] | None = None
) -> list[Event]:
    stream = ChatToMessagesStream(
        message_id="msg_1", model="claude-x", stop_sequences=stop_sequences
    )
    out: list[bytes] = []
    for item in chunks:
        out += stream.feed(item)
    out += stream.finish()
    if raw is not None:
        raw.extend(out)
    return [parse(event) for event in out]


def names(events: list[Event]) -> list[str]:
    """Event names, with the block index and delta type where they have them."""
    out = []
    for name, doc in events:
        if name == "content_block_start":
            name = f"start {doc['index']} {doc['content_block']['type']}"
        elif name == "content_block_delta":
            name = f"delta {doc['index']} {doc['delta']['type']}"
        elif name == "content_block_stop":
            name = f"stop {doc['index']}"
        out.append(name)
    return out


def tool_delta(index: int, arguments: str | None = None, **fields: Any) -> JSONObject:
    call: dict[str, Any] = {"index": index, **fields}
    function = {}
    if "name" in fields:
        function["name"] = call.pop("name")
    if arguments is not None:
        function["arguments"] = arguments
    call["function"] = function
    return chunk({"tool_calls": [call]})


INTERLEAVED = [
    {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]},
    {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
]


def sdk_final_message(raw: list[bytes]) -> Any:
    """The SDK's own SSE decoder, event types and accumulator over ``raw``."""
    import anthropic
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    seen = []
    for sse in SSEDecoder().iter_bytes(iter([b"".join(raw)])):
        event = adapter.validate_python(sse.json())
        assert event.type == sse.event
        seen.append(event.type)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert seen[0] == "message_start" and seen[-1] == "message_stop"
    return snapshot
