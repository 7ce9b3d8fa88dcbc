"""OpenAI's dialect (Chat Completions, and the legacy completions and embeddings beside it):
``{"error": {...}}`` bodies, ``data: {"error": ...}`` with no ``[DONE]`` for a stream that
fails, SSE comments as heartbeats, and answers passed through as the upstream sent them."""

from __future__ import annotations

from ..config import KeepaliveSettings
from ..errors import GatewayError, error_event, error_json
from ..sse import SSEFramer
from ..usage import parse_usage
from .base import NOTHING, Dialect, Fed, Shape, StreamPipe, Tokens

__all__ = ["CHAT", "ChatDialect", "ChatPassthrough", "comment_heartbeat", "note_usage"]


def comment_heartbeat(policy: KeepaliveSettings) -> bytes:
    """An SSE comment event: ``: <comment>`` (a bare ``:`` for an empty comment)."""
    return (f": {policy.comment}\n\n" if policy.comment else ":\n\n").encode()


class ChatDialect(Dialect):
    name = "chat"

    def status(self, error: GatewayError) -> int:
        return error.status

    def error_json(self, error: GatewayError) -> bytes:
        return error_json(error)

    def error_event(self, error: GatewayError) -> bytes:
        return error_event(error)

    def heartbeat(self, policy: KeepaliveSettings) -> bytes:
        return comment_heartbeat(policy)


CHAT = ChatDialect()


def note_usage(document: str | bytes, tokens: Tokens) -> bool:
    """Take token counts from the document's OpenAI ``usage``, if any; true for a usage-only
    chunk (``stream_options.include_usage``'s last)."""
    usage = parse_usage(document)
    if usage is None:
        return False
    if usage.prompt_tokens is not None:
        tokens.prompt = usage.prompt_tokens
    if usage.completion_tokens is not None:
        tokens.completion = usage.completion_tokens
    return usage.only


class _ChatStream(StreamPipe):
    """The upstream's events unchanged, whole, up to ``[DONE]``; usage-only chunks dropped
    when the gateway asked for them and the client did not."""

    __slots__ = ("_framer", "_hide_usage")

    unfinished = "upstream closed the stream before [DONE]"

    def __init__(self, hide_usage: bool) -> None:
        super().__init__()
        self._framer = SSEFramer()
        self._hide_usage = hide_usage

    def feed(self, chunk: bytes) -> Fed:
        events = self._framer.feed(chunk)
        if not events:
            return NOTHING
        out: list[bytes] = []
        data = end = False
        for event in events:
            text = event.data
            if text is not None:
                if '"usage"' in text and note_usage(text, self.tokens) and self._hide_usage:
                    continue
                data = True
                if text == "[DONE]":
                    out.append(event.raw)
                    end = True
                    break  # nothing after the terminal event is relayed
            out.append(event.raw)
        return Fed(b"".join(out), data, end)

    @property
    def pending(self) -> bool:
        return self._framer.pending

    @property
    def pending_bytes(self) -> int:
        return self._framer.pending_bytes


class ChatPassthrough(Shape):
    """An OpenAI answer to an OpenAI client: bytes unchanged, usage noted."""

    __slots__ = ("hide_usage",)

    def __init__(self, hide_usage: bool = False) -> None:
        self.hide_usage = hide_usage

    def stream(self) -> StreamPipe:
        return _ChatStream(self.hide_usage)

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        if b'"usage"' in body:
            note_usage(body, tokens)
        return body
