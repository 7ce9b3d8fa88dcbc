"""The made-up answers, as bytes: sans-I/O (no trio, no clock), so they are tested alone.

:func:`plan` reads a request and the settings and decides the answer's words;
:class:`Formatter` turns them into OpenAI's chunks (``chat.completion.chunk`` or
``text_completion``), or into one whole answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.abc import Endpoint, JSONObject, UpstreamStatusError

from ._settings import SimulatorSettings

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one answer will say: ``tokens`` pieces, the words in turn (made one at a time,
    so an endless answer costs nothing up front)."""

    words: tuple[str, ...]
    tokens: int
    prompt_tokens: int
    finish_reason: str
    include_usage: bool

    def piece(self, index: int) -> str:
        return f"{self.words[index % len(self.words)]} "

    def pieces(self) -> Iterator[str]:
        return (self.piece(i) for i in range(self.tokens))


def plan(endpoint: Endpoint, body: JSONObject, settings: SimulatorSettings) -> Plan:
    """Decide the answer to ``body``. Raises UpstreamStatusError (400) for a request the
    simulator cannot answer, as an upstream would."""
    if endpoint == "embeddings":
        raise UpstreamStatusError(
            400,
            "the simulator does not serve embeddings",
            type="invalid_request_error",
            code="unsupported_endpoint",
        )
    limit = settings.max_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UpstreamStatusError(
                400, f"{name} must be a positive integer", type="invalid_request_error", param=name
            )
        limit = min(limit, value)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return Plan(
        words=tuple(settings.text.split()),
        tokens=limit,
        prompt_tokens=len(_prompt_text(body).split()),
        finish_reason="length" if limit < settings.max_tokens else "stop",
        include_usage=include_usage,
    )


def _prompt_text(body: JSONObject) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(
            str(m.get("content")) for m in messages if isinstance(m, dict) and m.get("content")
        )
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


@dataclass(frozen=True, slots=True)
class Formatter:
    """OpenAI's shapes for the answer ``id`` to ``model`` on ``endpoint``."""

    endpoint: Endpoint
    id: str
    model: str
    created: int

    @property
    def _chat(self) -> bool:
        return self.endpoint == "chat/completions"

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            doc["usage"] = usage
        return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

    def _choice(self, piece: str, finish: str | None) -> dict[str, Any]:
        if self._chat:
            delta = {"content": piece} if piece else {}
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}

    def opening(self) -> bytes:
        """The event before any token: chat's role delta; nothing for completions."""
        if not self._chat:
            return b""
        return self._chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def token(self, piece: str) -> bytes:
        return self._chunk([self._choice(piece, None)])

    def closing(self, plan: Plan) -> bytes:
        """The finish reason, usage if asked, and ``[DONE]``."""
        out = self._chunk([self._choice("", plan.finish_reason)])
        if plan.include_usage:
            out += self._chunk([], usage=_usage(plan))
        return out + DONE

    def whole(self, plan: Plan) -> bytes:
        """The non-streamed answer."""
        text = "".join(plan.pieces())
        choice: dict[str, Any] = {"index": 0, "finish_reason": plan.finish_reason}
        if self._chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        doc = {
            "id": self.id,
            "object": "chat.completion" if self._chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": _usage(plan),
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def _usage(plan: Plan) -> dict[str, int]:
    completion = plan.tokens
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }
