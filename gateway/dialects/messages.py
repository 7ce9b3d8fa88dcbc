"""Anthropic's Messages dialect: ``{"type": "error", "error": {...}}`` bodies with
Anthropic's error types and statuses (529 for "no capacity"), ``event: error`` ending a
stream that fails (never ``message_stop``), ``event: ping`` heartbeats, ``request-id`` and
``anthropic-ratelimit-*`` headers; answers passed through from backends that speak Messages
(:class:`MessagesPassthrough`) or translated from chat (:class:`MessagesFromChat`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from ..errors import (
    ContextWindowExceeded,
    GatewayError,
    NoBackendAvailable,
    Overloaded,
    UpstreamStatusError,
)
from ..keepalive import KeepaliveSettings
from ..usage import token_count
from .anthropic_answer import ChatToMessagesStream, chat_to_message
from .base import NOTHING, Dialect, Fed, Shape, StreamPipe, Tokens, whole_object
from .chat import FromChatStream, chat_answer, comment_heartbeat, translated_body

__all__ = ["MESSAGES", "MessagesDialect", "MessagesFromChat", "MessagesPassthrough"]

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
"""Anthropic's own keepalive event, which its SDKs drop wherever it appears."""

# Anthropic's error type for each status it documents; other 4xx are invalid requests and
# other 5xx api errors.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_TYPES = frozenset(_TYPES.values())
_STATUS_OF_TYPE = {kind: status for status, kind in _TYPES.items()}

# OpenAI's rate-limit header → Anthropic's.
_LIMIT_NAMES = {
    f"x-ratelimit-{part}-{kind}": f"anthropic-ratelimit-{kind}-{part}"
    for part in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
}
_DURATION = re.compile(r"(?:(\d+)m)?(?:([\d.]+)s)?(?:(\d+)ms)?")


def reset_seconds(text: str) -> float | None:
    """Seconds in one of the gateway's ``x-ratelimit-reset-*`` values (``1m0.5s``,
    ``3s``, ``20ms``), or ``None`` for anything else."""
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        return None
    minutes, seconds, millis = match.groups()
    return int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000


def rfc3339(unix: float) -> str:
    """``unix`` as Anthropic writes times in headers: RFC 3339, UTC, whole seconds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MessagesDialect(Dialect):
    name = "messages"

    def status(self, error: GatewayError) -> int:
        # No backend can take the request now (full queue, all down): Anthropic's
        # "overloaded", which its SDKs retry with back-off.
        if isinstance(error, Overloaded | NoBackendAvailable):
            return 529
        return error.status

    def error_type(self, error: GatewayError) -> str:
        if isinstance(error, UpstreamStatusError) and error.type in ERROR_TYPES:
            return error.type  # a native upstream's own
        status = self.status(error)
        if status in _TYPES:
            return _TYPES[status]
        return "invalid_request_error" if status < 500 else "api_error"

    def error_document(self, error: GatewayError) -> dict[str, object]:
        message = (
            error.anthropic_message if isinstance(error, ContextWindowExceeded) else error.message
        )
        return {"type": "error", "error": {"type": self.error_type(error), "message": message}}

    def error_json(self, error: GatewayError) -> bytes:
        return json.dumps(self.error_document(error)).encode()

    def error_event(self, error: GatewayError, model: str = "") -> bytes:
        return b"event: error\ndata: " + self.error_json(error) + b"\n\n"

    def heartbeat(self, policy: KeepaliveSettings) -> bytes:
        return PING if policy.messages == "ping" else comment_heartbeat(policy)

    def limit_headers(self, headers: Mapping[str, str], now: float) -> dict[str, str]:
        named: dict[str, str] = {}
        for name, value in headers.items():
            anthropic = _LIMIT_NAMES.get(name)
            if anthropic is None:
                named[name] = value
            elif anthropic.endswith("-reset"):
                seconds = reset_seconds(value)
                if seconds is not None:
                    named[anthropic] = rfc3339(now + seconds)
            else:
                named[anthropic] = value
        return named

    def id_headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        return [(b"request-id", request_id.encode())]


MESSAGES = MessagesDialect()


def _note_anthropic_usage(usage: object, tokens: Tokens) -> None:
    """Token counts from an Anthropic ``usage`` object: the prompt is every input token,
    cached or not."""
    if not isinstance(usage, dict):
        return
    parts = [
        token_count(usage.get(name))
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    if parts[0] is not None:
        tokens.prompt = sum(n for n in parts if n is not None)
    output = token_count(usage.get("output_tokens"))
    if output is not None:
        tokens.completion = output


def _upstream_error(data: str | None) -> UpstreamStatusError:
    """An upstream's ``event: error``, as the error the client is told."""
    try:
        doc = json.loads(data or "")
        error = doc["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return UpstreamStatusError(502, f"upstream sent an unreadable error event: {data!r}"[:500])
    return UpstreamStatusError(_STATUS_OF_TYPE.get(kind, 500), message, type=kind)


# The events that carry the answer: once one reached the client there is no failover.
_CONTENT = frozenset(
    {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"}
)


class _NativeStream(StreamPipe):
    """The upstream's Messages events unchanged, up to ``message_stop``. What comes before
    the first content event (``message_start``, the upstream's pings) is held back and
    written with it: a failover before content then shows the client one message, not two
    ``message_start`` events (which the SDKs refuse)."""

    __slots__ = ("_held",)

    unfinished = "upstream closed the stream before message_stop"

    def __init__(self) -> None:
        super().__init__()
        self._held: list[bytes] | None = []  # None once content went out

    def feed(self, chunk: bytes) -> Fed:
        events = self._framer.feed(chunk)
        if not events:
            return NOTHING
        out: list[bytes] = []
        data = end = False
        for event in events:
            kind = event.event
            if kind == "error":
                raise _upstream_error(event.data)
            if kind == "message_start":
                self._note(event.data, "message")
            elif kind == "message_delta":
                self._note(event.data, None)
            if self._held is not None:
                self._held.append(event.raw)
                if kind not in _CONTENT and kind != "message_stop":
                    continue
                out.extend(self._held)
                self._held = None
            else:
                out.append(event.raw)
            data = True
            if kind == "message_stop":
                end = True
                break  # nothing after the terminal event is relayed
        return Fed(b"".join(out), data, end)

    def _note(self, data: str | None, inside: str | None) -> None:
        try:
            doc = json.loads(data or "")
        except ValueError:
            return
        if inside is not None:
            doc = doc.get(inside) if isinstance(doc, dict) else None
        if isinstance(doc, dict):
            _note_anthropic_usage(doc.get("usage"), self.tokens)
            self.tokens.note_model(doc)  # message_start's message names it


class MessagesPassthrough(Shape):
    """A Messages answer from a backend that speaks Messages: bytes unchanged, usage noted."""

    def stream(self) -> StreamPipe:
        return _NativeStream()

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        doc = whole_object(body)
        _note_anthropic_usage(doc.get("usage"), tokens)
        tokens.note_model(doc)
        return body


class _TranslatedStream(FromChatStream):
    """Chat chunks in, Messages events out (:class:`ChatToMessagesStream`), with
    ``message_start`` held until the first content event."""

    __slots__ = ()

    def releases(self, held: list[bytes]) -> bool:
        return not all(piece.startswith(b"event: message_start\n") for piece in held)


class MessagesFromChat(Shape):
    """A chat answer translated to Messages for a backend that speaks only chat. Answers
    carry the model name the client asked for and an id of the gateway's."""

    __slots__ = ("message_id", "model", "stop_sequences")

    def __init__(self, message_id: str, model: str, stop_sequences: Sequence[str] = ()) -> None:
        self.message_id = message_id
        self.model = model
        self.stop_sequences = tuple(stop_sequences)

    def stream(self) -> StreamPipe:
        return _TranslatedStream(
            ChatToMessagesStream(
                message_id=self.message_id, model=self.model, stop_sequences=self.stop_sequences
            ),
            held=[],
        )

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        message = chat_to_message(
            chat_answer(body, tokens),
            message_id=self.message_id,
            model=self.model,
            stop_sequences=self.stop_sequences,
        )
        return translated_body(message)
