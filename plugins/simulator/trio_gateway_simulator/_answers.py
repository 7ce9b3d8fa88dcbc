"""The made-up answers, as bytes: sans-I/O (no trio, no clock), so they are tested alone.

:func:`plan` reads a request and the settings and decides the answer's words; a
:class:`~gateway.abc.CompletionEncoder` turns each into OpenAI's chunks
(``chat.completion.chunk`` or ``text_completion``), :func:`closing` ends the stream, and
:func:`whole` makes the one whole answer instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.abc import SSE_DONE, CompletionEncoder, Endpoint, JSONObject, UpstreamStatusError

from ._settings import SimulatorSettings


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


def closing(encoder: CompletionEncoder, plan: Plan) -> bytes:
    """The stream's end: the finish reason, usage if asked, and ``[DONE]``."""
    out = encoder.piece("", plan.finish_reason)
    if plan.include_usage:
        out += encoder.usage(plan.prompt_tokens, plan.tokens)
    return out + SSE_DONE


def whole(encoder: CompletionEncoder, plan: Plan) -> bytes:
    """The non-streamed answer."""
    return encoder.whole(
        "".join(plan.pieces()),
        plan.finish_reason,
        prompt_tokens=plan.prompt_tokens,
        completion_tokens=plan.tokens,
    )
