"""Upstream scripts and expectations shared by the Python and the Node SDK tests."""

from __future__ import annotations

import json
from typing import Any

from gateway.sse import SSEFramer

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}

# Upstream statuses and the SDK error class both SDKs map them to (same names in each).
# An upstream's own 401/403 refuses the gateway's key, not the client's: a 502 of the
# gateway's (test_python_sdk.py), so none of them is here.
STATUS_ERRORS = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "InternalServerError",
}


def status_script(status: int) -> dict[str, Any]:
    return {
        "status": status,
        "message": f"scripted {status}",
        "type": "scripted_error",
        "code": f"code_{status}",
    }


# Upstream failures after the gateway committed 200 + headers (early_headers on). Each must
# reach the application as the SDK's APIError carrying the gateway's error event, after
# the tokens that did arrive: (fake script, tokens the application sees before the error).
IN_STREAM_FAILURES: dict[str, tuple[dict[str, Any], int]] = {
    # the 429 comes after the first heartbeat (interval 1 s) committed 200 + SSE headers;
    # a sooner one keeps its real status instead (see STATUS_ERRORS)
    "status_429_after_headers": ({"status": 429, "message": "slow down", "headers_delay": 1.3}, 0),
    # paced, so the gateway has read every byte before the reset discards unread ones
    "reset_mid_stream": ({"tokens": 6, "pace": 0.05, "fault": "reset_mid_stream"}, 4),
    "closed_before_done": ({"tokens": 4, "fault": "no_done"}, 4),
}


def tokens_text(n: int) -> str:
    """The text of ``n`` streamed deltas, as the fake upstream generates them."""
    return "".join(f"tok{i} " for i in range(n))


def chunk_docs(body: bytes) -> list[dict[str, Any]]:
    """The JSON documents of an SSE body's data events, ``[DONE]`` left out."""
    return [json.loads(e.data) for e in SSEFramer().feed(body) if e.is_data and not e.is_done]


def split_heartbeats(raw: bytes, heartbeat: bytes) -> tuple[bytes, int]:
    """The bytes a client received minus whole heartbeat events, and how many there were.
    A heartbeat inside an upstream event would be left in place and break the comparison
    with what the upstream sent."""
    kept = bytearray()
    beats = 0
    for event in SSEFramer().feed(raw):
        if event.raw == heartbeat:
            beats += 1
        else:
            kept += event.raw
    return bytes(kept), beats


def tool_call_stream() -> tuple[list[str], list[dict[str, Any]], list[tuple[str, str, str]]]:
    """A chat stream with two parallel tool calls whose arguments arrive in pieces.

    Returns (the fake's ``chunks``: the UTF-8 body cut at odd byte offsets, several inside
    multi-byte characters and inside ``data:`` lines, as latin-1 strings), the chunk
    documents, and the calls as (id, name, arguments)."""
    calls = [
        (
            "call_a",
            "get_weather",
            json.dumps(
                {"city": "Zürich", "note": "data: [DONE]\n\nnot an event", "q": '"quoted" \\ back'},
                ensure_ascii=False,
            ),
        ),
        (
            "call_b",
            "read_file",
            json.dumps(
                {"path": "C:\\tmp\\ü.txt", "emoji": "🙂", "lines": [1, 2, 3]}, ensure_ascii=False
            ),
        ),
    ]
    base = {
        "id": "chatcmpl-tools",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "upstream-m",
    }

    def doc(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    docs = [doc({"role": "assistant", "content": None})]
    for index, (call_id, name, arguments) in enumerate(calls):
        docs.append(
            doc(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        for start in range(0, len(arguments), 9):
            piece = arguments[start : start + 9]
            docs.append(doc({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    docs.append(doc({}, "tool_calls"))
    body = (
        b"".join(b"data: " + json.dumps(d, ensure_ascii=False).encode() + b"\n\n" for d in docs)
        + b"data: [DONE]\n\n"
    )
    chunks, at, sizes = [], 0, (1, 7, 13, 29, 3, 61)
    while at < len(body):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(body[at : at + size].decode("latin-1"))
        at += size
    return chunks, docs, calls


def assembled_tool_calls(deltas: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """What an application accumulates from tool-call deltas: (id, name, arguments)."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls") or ():
            entry = calls.setdefault(call["index"], ["", "", ""])
            entry[0] = call.get("id") or entry[0]
            function = call.get("function") or {}
            entry[1] = function.get("name") or entry[1]
            entry[2] += function.get("arguments") or ""
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


def chat_tool_calls(
    calls: list[tuple[str, str, str]],
    reasoning: str = "",
    usage: dict[str, int] | None = None,
) -> list[str]:
    """A chat stream (the fake's raw ``chunks``) calling ``calls`` — (id, name, arguments)
    — in parallel, the arguments in pieces of 7 characters; the model's ``reasoning``
    first, if any, as ``reasoning_content`` (as llama-server and vLLM stream it); with
    ``usage``, a usage chunk (no choices) last, as ``stream_options.include_usage`` asks."""
    base = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 0, "model": "x"}

    def doc(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = json.dumps({**base, "choices": [choice]})
        return f"data: {data}\n\n".encode().decode("latin-1")

    first: dict[str, Any] = {"role": "assistant", "content": None}
    if reasoning:
        first["reasoning_content"] = reasoning
    pieces = [doc(first)]
    for index, (call_id, name, arguments) in enumerate(calls):
        function = {"name": name, "arguments": ""}
        pieces.append(
            doc(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": function}
                    ]
                }
            )
        )
        for at in range(0, len(arguments), 7):
            piece = {"index": index, "function": {"arguments": arguments[at : at + 7]}}
            pieces.append(doc({"tool_calls": [piece]}))
    pieces.append(doc({}, "tool_calls"))
    if usage is not None:
        pieces.append(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n")
    return [*pieces, "data: [DONE]\n\n"]


def chat_tool_answer(calls: list[tuple[str, str, str]]) -> str:
    """A whole ``chat.completion`` (the fake's raw ``body``) calling ``calls`` — (id, name,
    arguments) — at once."""
    tool_calls = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]
    message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return json.dumps({"id": "chatcmpl-t", "object": "chat.completion", "choices": [choice]})
