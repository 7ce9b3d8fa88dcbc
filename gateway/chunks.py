"""OpenAI's answer shapes, encoded: SSE data events, ``[DONE]``, completion chunks.

Sans-I/O and dependency-free (no trio, nothing else of the gateway), so a backend's
translation code and the gateway's own can share it; plugins import it from
:mod:`gateway.abc`.

Every encoder writes compact, ASCII-only JSON (``{"a":1}``; non-ASCII text as ``\\uXXXX``
escapes): the bytes are the same whatever a string holds (a lone surrogate from a model's
detokenizer included), and an SSE event can be cut anywhere without splitting a UTF-8
character. ``NaN`` and infinities raise ``ValueError``: JSON cannot carry them, and a client
would fail on them later and less clearly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["SSE_DONE", "CompletionEncoder", "json_bytes", "sse_data"]

SSE_DONE: Final = b"data: [DONE]\n\n"
"""The event that ends a complete OpenAI stream (Chat and text completions)."""


def json_bytes(doc: Mapping[str, object]) -> bytes:
    """``doc`` as compact ASCII JSON: a non-streamed answer's whole body."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def sse_data(doc: Mapping[str, object]) -> bytes:
    """One SSE event whose data is ``doc``: ``data: {...}`` and the blank line that ends it.

    The JSON holds no line break (strings' newlines are escaped), so one ``data:`` line is
    always the whole event."""
    return b"data: " + json_bytes(doc) + b"\n\n"


@dataclass(frozen=True, slots=True)
class CompletionEncoder:
    """The bytes of one answer ``id`` from ``model``, in OpenAI's shapes for ``endpoint``.

    ``chat/completions`` streams ``chat.completion.chunk`` events whose choice has a
    ``delta``, and answers whole as ``chat.completion`` with a ``message``;
    ``completions`` uses ``text_completion`` for both, with ``text`` and ``logprobs``.
    One choice (index 0) per answer. A stream is :meth:`opening`, :meth:`piece` per piece
    of text, a last :meth:`piece` with the finish reason, :meth:`usage` when the request
    asked for it (``stream_options.include_usage``), then :data:`SSE_DONE`.

    Raises ``ValueError`` for any other endpoint (embeddings have no chunks).
    """

    endpoint: str
    id: str
    model: str
    created: int

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat/completions", "completions"):
            raise ValueError(f"no completion chunks for endpoint {self.endpoint!r}")

    @property
    def _chat(self) -> bool:
        return self.endpoint == "chat/completions"

    def _head(self, kind: str) -> dict[str, object]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, choices: list[dict[str, object]]) -> dict[str, object]:
        kind = "chat.completion.chunk" if self._chat else "text_completion"
        return {**self._head(kind), "choices": choices}

    def opening(self) -> bytes:
        """The event before the first piece: chat's ``assistant`` role with empty content;
        nothing (``b""``) for text completions, which have no roles."""
        if not self._chat:
            return b""
        delta = {"role": "assistant", "content": ""}
        return sse_data(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def piece(self, text: str, finish_reason: str | None = None) -> bytes:
        """One chunk carrying ``text``; the last one carries ``finish_reason`` (``"stop"``,
        ``"length"``, ...). An empty chat piece has an empty ``delta``."""
        choice: dict[str, object]
        if self._chat:
            delta = {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return sse_data(self._chunk([choice]))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The chunk with no choices that reports the answer's token counts."""
        chunk = self._chunk([])
        chunk["usage"] = _usage(prompt_tokens, completion_tokens)
        return sse_data(chunk)

    def whole(
        self, text: str, finish_reason: str, *, prompt_tokens: int, completion_tokens: int
    ) -> bytes:
        """The non-streamed answer: one JSON body with the whole ``text`` and its usage."""
        choice: dict[str, object] = {"index": 0, "finish_reason": finish_reason}
        if self._chat:
            choice["message"] = {"role": "assistant", "content": text}
            kind = "chat.completion"
        else:
            choice.update(text=text, logprobs=None)
            kind = "text_completion"
        answer = {
            **self._head(kind),
            "choices": [choice],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        return json_bytes(answer)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
