"""What the fake upstream answers, as bytes and JSON objects, with no I/O: OpenAI chat and
completions streams, Anthropic Messages and OpenAI Responses streams of named events, whole
answers, error objects and token counts (:mod:`gateway.testing.fake_openai` serves them).
"""

from __future__ import annotations

import json
from typing import Any

from ..abc import SSE_DONE, CompletionEncoder

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "MODELS_ANTHROPIC",
    "PING",
    "anthropic_error",
    "chat_events",
    "completion_events",
    "completion_object",
    "count_tokens",
    "message_object",
    "messages_events",
    "named_event",
    "response_object",
    "responses_events",
]

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MODELS_ANTHROPIC = {
    "data": [
        {
            "type": "model",
            "id": "fake",
            "display_name": "Fake",
            "created_at": "2025-01-01T00:00:00Z",
        }
    ],
    "has_more": False,
    "first_id": "fake",
    "last_id": "fake",
}


def chat_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """A chat stream as OpenAI sends it: role, ``n`` content deltas, finish, usage, [DONE]."""
    encoder = CompletionEncoder("chat/completions", "chatcmpl-fake", model, 0)
    return _stream(encoder, n, text)


def completion_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """A legacy completions stream as OpenAI sends it: ``n`` text chunks, the last one with
    its finish reason, usage, [DONE]."""
    return _stream(CompletionEncoder("completions", "cmpl-fake", model, 0), n, text)


def _stream(encoder: CompletionEncoder, n: int, text: str) -> list[bytes]:
    opening = encoder.opening()
    return [
        *([opening] if opening else []),
        *(encoder.piece(f"{text}{i} ") for i in range(n)),
        encoder.piece("", "stop"),
        encoder.usage(5, n),
        SSE_DONE,
    ]


def messages_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """An Anthropic Messages stream, one named event per item: ``message_start``, one
    text block of ``n`` ``text_delta`` events, ``message_delta`` (end_turn), ``message_stop``."""
    start = message_object(model, "", 0)
    start["content"], start["stop_reason"] = [], None
    return [
        named_event({"type": "message_start", "message": start}),
        named_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        *(
            named_event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"{text}{i} "},
                }
            )
            for i in range(n)
        ),
        named_event({"type": "content_block_stop", "index": 0}),
        named_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            }
        ),
        named_event({"type": "message_stop"}),
    ]


def responses_events(
    n: int, *, model: str = "fake", text: str = "tok", id: str = "resp_fake"
) -> list[bytes]:
    """An OpenAI Responses stream, one named event per item, numbered from 0:
    ``response.created``, ``response.in_progress``, one message item of one output_text part
    made of ``n`` deltas, its ``.done`` events, ``response.completed``."""
    whole = "".join(f"{text}{i} " for i in range(n))
    opening = {
        **response_object(model, "", 0, id),
        "status": "in_progress",
        "output": [],
        "usage": None,
    }
    item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "in_progress"}
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    docs: list[dict[str, Any]] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **at, "part": part},
        *(
            {"type": "response.output_text.delta", **at, "delta": f"{text}{i} ", "logprobs": []}
            for i in range(n)
        ),
        {"type": "response.output_text.done", **at, "text": whole, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": whole}},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": response_object(model, whole, n, id)["output"][0],
        },
        {"type": "response.completed", "response": response_object(model, whole, n, id)},
    ]
    return [named_event({**doc, "sequence_number": i}) for i, doc in enumerate(docs)]


def response_object(model: str, text: str, n: int, id: str = "resp_fake") -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_fake",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 5,
            "output_tokens": n,
            "total_tokens": 5 + n,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def named_event(data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (
        data["type"].encode(),
        json.dumps(data, separators=(",", ":")).encode(),
    )


def message_object(model: str, text: str, n: int) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": n},
    }


def anthropic_error(script: dict[str, Any], error_type: str, message: str) -> bytes:
    """An Anthropic error object; the script's ``type`` and ``message`` win."""
    error = {"type": script.get("type", error_type), "message": script.get("message", message)}
    return json.dumps({"type": "error", "error": error}).encode()


def count_tokens(body: dict[str, Any]) -> int:
    """The words of the text in ``system`` and ``messages`` (strings or text blocks), + 10."""
    texts: list[str] = []
    for content in [body.get("system"), *(m.get("content") for m in body.get("messages", []))]:
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [b["text"] for b in content if isinstance(b.get("text"), str)]
    return sum(len(t.split()) for t in texts) + 10


def completion_object(body: dict[str, Any], n: int) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(n))
    usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
    if "messages" in body:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "usage": usage,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
        }
    if "input" in body:
        return {
            "object": "list",
            "model": body.get("model"),
            "usage": usage,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
        }
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": body.get("model"),
        "usage": usage,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
    }
