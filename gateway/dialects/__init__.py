"""The wire dialects the gateway speaks to its clients (OpenAI Chat Completions, Anthropic
Messages): sans-I/O objects that know one protocol's bodies, errors, heartbeats and stream
grammar, and translate it to chat for backends that speak only chat. No trio here."""

from __future__ import annotations

from ..abc import Endpoint
from .base import Dialect
from .chat import CHAT
from .messages import MESSAGES

__all__ = ["CHAT", "MESSAGES", "Dialect", "dialect_of"]


def dialect_of(endpoint: Endpoint) -> Dialect:
    """The dialect a client of ``endpoint`` speaks."""
    return MESSAGES if endpoint in ("messages", "messages/count_tokens") else CHAT
