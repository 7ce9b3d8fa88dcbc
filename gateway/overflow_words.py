"""What the backends say when a request does not fit the model's context window, read into
numbers (sans I/O). The gateway words it again in each client's dialect
(:class:`~gateway.errors.ContextWindowExceeded`), because clients act on one form only.

Read, by backend:

* llama-server (b11434): ``type: exceed_context_size_error`` with ``n_prompt_tokens`` and
  ``n_ctx`` beside the message, ``request (724 tokens) exceeds the available context size
  (512 tokens), try increasing it``; older builds only ``the request exceeds the available
  context size, try increasing it``.
* vLLM: ``This model's maximum context length is 512 tokens. However, your request has 724
  input tokens. …`` for the prompt, and ``'max_tokens' or 'max_completion_tokens' is too
  large: 5000. This model's maximum context length is 512 tokens and your request has 24
  input tokens (5000 > 512 - 24).`` for a prompt that fits with no room for the answer.
* OpenAI, and servers copying it (older vLLM, llama-cpp-python's server): code
  ``context_length_exceeded``; ``… However, your messages resulted in 724 tokens. …``, or
  ``… However, you requested 724 tokens (700 in the messages, 24 in the completion). …``.
* llama-cpp-python in process: ``Requested tokens (724) exceed context window of 512``.
* Anthropic: ``prompt is too long: 724 tokens > 512 maximum``, and ``input length and
  `max_tokens` exceed context limit: 500 + 24 > 512, decrease input length or `max_tokens`
  and try again``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Overflow", "read_overflow"]


@dataclass(frozen=True, slots=True)
class Overflow:
    """``tokens`` (the prompt) and ``limit`` (the window) when the backend said them;
    ``max_tokens`` when what does not fit is the prompt with the answer it asked room for."""

    tokens: int | None = None
    limit: int | None = None
    max_tokens: int | None = None


# Each with named groups: tokens, limit, and max_tokens where the answer's room is the cause.
# The forms naming the completion come before the ones they would also match.
_WORDS = (
    re.compile(
        r"is too large: (?P<max_tokens>\d+)\. This model's maximum context length is "
        r"(?P<limit>\d+) tokens and your request has (?P<tokens>\d+) input tokens"
    ),
    re.compile(
        r"maximum context length is (?P<limit>\d+) tokens\. However, you requested \d+ tokens "
        r"\((?P<tokens>\d+) in the messages, (?P<max_tokens>\d+) in the completion\)"
    ),
    re.compile(
        r"maximum context length is (?P<limit>\d+) tokens\. However, (?:your messages "
        r"resulted in|you requested|your request has) (?P<tokens>\d+)"
    ),
    re.compile(
        r"request \((?P<tokens>\d+) tokens\) exceeds the available context size "
        r"\((?P<limit>\d+) tokens\)"
    ),
    re.compile(r"Requested tokens \((?P<tokens>\d+)\) exceed context window of (?P<limit>\d+)"),
    re.compile(r"prompt is too long: (?P<tokens>\d+) tokens > (?P<limit>\d+) maximum"),
    re.compile(
        r"input length and `max_tokens` exceed context limit: (?P<tokens>\d+) \+ "
        r"(?P<max_tokens>\d+) > (?P<limit>\d+)"
    ),
)


def read_overflow(
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Overflow | None:
    """The numbers of a backend's refusal for a request over the context window (all
    ``None`` when it said none), or ``None`` when the refusal is about something else.
    ``type``, ``code`` and ``fields``: the rest of the backend's error object."""
    fields = fields or {}
    tokens, limit = fields.get("n_prompt_tokens"), fields.get("n_ctx")
    if type == "exceed_context_size_error" and isinstance(tokens, int) and isinstance(limit, int):
        return Overflow(tokens, limit)
    for words in _WORDS:
        found = words.search(message)
        if found:
            numbers = found.groupdict()
            room = numbers.get("max_tokens")
            return Overflow(
                int(numbers["tokens"]), int(numbers["limit"]), None if room is None else int(room)
            )
    if type == "exceed_context_size_error" or code == "context_length_exceeded":
        return Overflow()
    return None
