"""The wire dialects the gateway speaks to its clients (OpenAI Chat Completions, Anthropic
Messages): sans-I/O objects that know one protocol's bodies, errors, heartbeats and stream
grammar, and translate it to chat for backends that speak only chat. No trio here."""

from __future__ import annotations

from ..abc import Endpoint
from .base import Dialect
from .chat import CHAT
from .messages import MESSAGES
from .responses import RESPONSES

__all__ = ["CHAT", "MESSAGES", "RESPONSES", "Dialect", "dialect_of", "dialect_of_request"]

MESSAGES_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


def dialect_of(endpoint: Endpoint) -> Dialect:
    """The dialect a client of ``endpoint`` speaks."""
    if endpoint in ("messages", "messages/count_tokens"):
        return MESSAGES
    if endpoint in ("responses", "responses/input_tokens"):
        return RESPONSES
    return CHAT


def dialect_of_request(path: str, has_anthropic_version: bool) -> Dialect:
    """The dialect to answer a request in before it is known what it asks for (a refused
    body, an unknown path): Anthropic's on its paths and for its SDKs, which send an
    ``anthropic-version`` header on every call; OpenAI's otherwise."""
    messages = path in MESSAGES_PATHS or path.startswith("/v1/messages/")  # batches, ...
    return MESSAGES if has_anthropic_version or messages else CHAT
