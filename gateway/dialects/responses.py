"""OpenAI's Responses dialect: OpenAI error bodies with their real statuses before the
commit; after it, a stream ends with ``response.failed`` (never ``response.completed``);
heartbeats are SSE comments, or — where a route asks — Responses' own ``keepalive`` events,
sent only after ``response.created`` and numbered into the stream's ``sequence_number``s.

Answers come passed through from backends that speak Responses (:class:`ResponsesPassthrough`,
renumbered only when keepalive events were inserted) or translated from chat
(:class:`ResponsesFromChat`). Either way nothing of an attempt reaches the client before its
first output item (``response.created`` waits for it), so a failover before it is invisible;
and the whole response is kept (:attr:`StreamPipe.result`) for the gateway's store.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Collection
from typing import Any

from ..abc import JSONObject
from ..errors import (
    ContextWindowExceeded,
    GatewayError,
    UpstreamProtocolError,
    UpstreamStatusError,
    error_body,
    error_json,
)
from ..keepalive import KeepaliveSettings
from ..sse import SSEEvent
from ..usage import token_count
from .base import NOTHING, Dialect, Fed, Shape, StreamPipe, Tokens, utf8_json, whole_object
from .chat import FromChatStream, chat_answer, comment_heartbeat, translated_body
from .responses_answer import chat_to_response, failed_response
from .responses_stream import ChatToResponsesStream

__all__ = [
    "RESPONSES",
    "RESPONSES_SOCKET",
    "ResponsesDialect",
    "ResponsesFromChat",
    "ResponsesPassthrough",
    "ResponsesSocketDialect",
    "socket_error",
    "warm_up_stream",
]

# The events that end a complete Responses stream.
TERMINAL = frozenset({"response.completed", "response.incomplete"})
# The events before the first output item: held back until it comes.
_OPENING = frozenset({"response.created", "response.in_progress", "response.queued"})
# The events whose data the passthrough reads; the others (the output's deltas and items:
# nearly every event) are relayed by their ``event:`` name alone, unless keepalive events
# are on and every sequence number counts.
_READ = TERMINAL | _OPENING | {"error", "response.failed"}


def _event(doc: JSONObject) -> bytes:
    return b"event: " + str(doc["type"]).encode() + b"\ndata: " + utf8_json(doc) + b"\n\n"


def error_code(error: GatewayError) -> str:
    """The ``code`` of a Responses error object for ``error``: the upstream's own when it
    gave one, ``context_length_exceeded`` for a request over the context window whichever
    backend said so (Codex then tells its user it ran out of room), else one of the codes
    OpenAI's SDKs know (the detail is in the message)."""
    if isinstance(error, UpstreamStatusError | ContextWindowExceeded) and error.code:
        return error.code
    if error.status == 429:
        return "rate_limit_exceeded"
    return "server_error" if error.status >= 500 else "invalid_prompt"


class ResponsesDialect(Dialect):
    name = "responses"

    def status(self, error: GatewayError) -> int:
        return error.status

    def error_json(self, error: GatewayError) -> bytes:
        return error_json(error)

    def error_event(self, error: GatewayError, model: str = "") -> bytes:
        # Nothing of the response is out, nor known (queued, connecting, or the upstream
        # failed first): a response of the gateway's is created and failed, since the SDKs'
        # stream helpers take nothing before response.created.
        created, failed = failed_response(
            {"code": error_code(error), "message": error.message},
            response_id="resp_" + secrets.token_hex(16),
            model=model,
            created_at=int(time.time()),
        )
        return _event({"type": "response.created", "response": created, "sequence_number": 0}) + (
            _event({"type": "response.failed", "response": failed, "sequence_number": 1})
        )

    def heartbeat(self, policy: KeepaliveSettings) -> bytes:
        return comment_heartbeat(policy)


RESPONSES = ResponsesDialect()


class ResponsesSocketDialect(ResponsesDialect):
    """Responses on a WebSocket (:mod:`gateway.websocket`): the same events, one per text
    frame; an error before ``response.created`` is the socket's ``error`` event, which
    carries the HTTP status it stands for (``{"type": "error", "status", "error": {...}}``,
    as the official SDKs' WebSocket event models read it)."""

    def error_event(self, error: GatewayError, model: str = "") -> bytes:
        return _event(socket_error(error))


def _failed(response: JSONObject, error: GatewayError) -> JSONObject:
    """``response`` failed with ``error``."""
    return {
        **response,
        "status": "failed",
        "error": {"code": error_code(error), "message": error.message},
    }


def warm_up_stream(response: JSONObject) -> bytes:
    """A warm-up's events (``generate: false`` on a WebSocket): ``response.created`` and
    ``response.completed`` for ``response``, a completed response with no output."""
    created = {**response, "status": "in_progress"}
    return _event({"type": "response.created", "response": created, "sequence_number": 0}) + (
        _event({"type": "response.completed", "response": response, "sequence_number": 1})
    )


def socket_error(error: GatewayError) -> JSONObject:
    """The WebSocket ``error`` event for ``error``: its OpenAI error object and status."""
    body: JSONObject = dict(error_body(error)["error"])
    retry = error.headers().get("Retry-After")
    if retry is not None:
        body["headers"] = {"retry-after": retry}
    return {"type": "error", "status": error.status, "error": body}


RESPONSES_SOCKET = ResponsesSocketDialect()


def _note_response_usage(response: object, tokens: Tokens) -> None:
    if isinstance(response, dict):
        tokens.note_model(response)
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return
    for name, field in (("input_tokens", "prompt"), ("output_tokens", "completion")):
        value = token_count(usage.get(name))
        if value is not None:
            setattr(tokens, field, value)


def _upstream_error(doc: JSONObject) -> UpstreamStatusError:
    """An upstream's ``error`` event or ``response.failed`` before any output."""
    error = doc.get("error") if doc.get("type") == "response.failed" else doc
    response = doc.get("response")
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        error = response["error"]
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return UpstreamStatusError(
        502,
        str(message or "upstream failed the response"),
        type="upstream_error",
        code=str(code) if code is not None else None,
    )


class _NativeStream(StreamPipe):
    """The upstream's Responses events, unchanged unless keepalive events were inserted
    (then every later ``sequence_number`` is moved up by their count), up to
    ``response.completed``/``response.incomplete``."""

    __slots__ = ("_events", "_held", "_last", "_offset", "_opened", "_result", "_tail")

    unfinished = "upstream closed the stream before response.completed"

    def __init__(self, keepalive_events: bool) -> None:
        super().__init__()
        self._events = keepalive_events
        self._held: list[bytes] | None = []  # None once the first output item went out
        self._opened: JSONObject | None = None  # the response of response.created
        self._offset = 0  # keepalive events inserted so far
        self._last = -1  # the last sequence number the client has
        self._result: JSONObject | None = None
        # The last event relayed unread, whose number the client has: read only if a
        # response.failed must follow it.
        self._tail: SSEEvent | None = None

    def feed(self, chunk: bytes) -> Fed:
        events = self._framer.feed(chunk)
        if not events:
            return NOTHING
        out: list[bytes] = []
        end = False
        for event in events:
            if event.data is None:
                (self._held if self._held is not None else out).append(event.raw)
                continue
            kind: object = event.event
            doc: JSONObject | None = None
            raw = event.raw
            if kind is None or kind in _READ or self._events:
                doc = self._parse(event)
                kind = doc.get("type")
                if kind == "error" or (kind == "response.failed" and self._held is not None):
                    raise _upstream_error(doc)
                raw = self._renumbered(event, doc)
            self._tail = event if doc is None else None
            if self._held is not None:
                self._held.append(raw)
                if kind in _OPENING:
                    opened = doc.get("response") if doc is not None else None
                    if kind == "response.created" and isinstance(opened, dict):
                        self._opened = opened
                    continue
                out.extend(self._held)
                self._held = None
            else:
                out.append(raw)
            if kind in TERMINAL or kind == "response.failed":
                response = doc.get("response") if doc is not None else None
                if kind in TERMINAL and isinstance(response, dict):
                    self._result = response
                    _note_response_usage(response, self.tokens)
                end = True
                break
        if not out:
            return NOTHING
        return Fed(b"".join(out), True, end)

    def _parse(self, event: SSEEvent) -> JSONObject:
        try:
            doc = json.loads(event.data or "")
        except ValueError:
            raise UpstreamProtocolError(
                f"upstream sent an event that is not JSON: {(event.data or '')[:200]!r}"
            ) from None
        if not isinstance(doc, dict):
            raise UpstreamProtocolError("upstream sent an event that is not a JSON object")
        return doc

    def _renumbered(self, event: SSEEvent, doc: JSONObject) -> bytes:
        number = doc.get("sequence_number")
        if not isinstance(number, int) or isinstance(number, bool):
            return event.raw
        self._last = number + self._offset
        if not self._offset:
            return event.raw
        return _event({**doc, "sequence_number": self._last})

    def heartbeat(self) -> bytes | None:
        if not self._events or self._held is not None:
            return None  # comments until response.created is out
        if self._last < 0:
            return None  # an upstream that numbers nothing (llama-server): comments
        self._offset += 1
        self._last += 1
        return _event({"type": "keepalive", "sequence_number": self._last})

    def error_event(self, error: GatewayError) -> bytes | None:
        if self._opened is None:
            if self._held is not None:
                return None  # nothing out, nothing known: the dialect's own
            # Output went out without a response.created: no response to fail.
            self._last += 1
            return _event(
                {
                    "type": "error",
                    "code": error_code(error),
                    "message": error.message,
                    "param": error.param,
                    "sequence_number": self._last,
                }
            )
        # What was held back goes out first (response.created, the upstream's own), then
        # its failure.
        held, self._held = self._held or [], None
        if self._tail is not None:
            with contextlib.suppress(UpstreamProtocolError):  # unreadable: no number to follow
                self._renumbered(self._tail, self._parse(self._tail))
            self._tail = None
        self._last += 1
        failed = _failed(self._opened, error)
        return b"".join(held) + _event(
            {"type": "response.failed", "response": failed, "sequence_number": self._last}
        )

    @property
    def result(self) -> JSONObject | None:
        return self._result


class ResponsesPassthrough(Shape):
    """A Responses answer from a backend that speaks Responses."""

    def __init__(self, keepalive_events: bool = False) -> None:
        self.keepalive_events = keepalive_events
        self.result: JSONObject | None = None

    def stream(self) -> StreamPipe:
        return _NativeStream(self.keepalive_events)

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        doc = whole_object(body)
        if doc.get("object") == "response":
            self.result = doc
            _note_response_usage(doc, tokens)
        return body


class _TranslatedStream(FromChatStream):
    """Chat chunks in, Responses events out (:class:`ChatToResponsesStream`, which numbers
    every event it makes, keepalives included); ``response.created`` and
    ``response.in_progress`` held until the first output item."""

    __slots__ = ("_events",)

    translator: ChatToResponsesStream

    def __init__(self, translator: ChatToResponsesStream, keepalive_events: bool) -> None:
        super().__init__(translator, held=translator.start())
        self._events = keepalive_events

    def heartbeat(self) -> bytes | None:
        if not self._events or not self.opened:
            return None
        return self.translator.keepalive()

    def error_event(self, error: GatewayError) -> bytes | None:
        # What was held back (response.created, response.in_progress) goes out first.
        return self.release_held() + b"".join(
            self.translator.failed(error_code(error), error.message)
        )

    @property
    def result(self) -> JSONObject | None:
        return self.translator.response


class ResponsesFromChat(Shape):
    """A chat answer translated to a Responses answer for a backend that speaks only chat:
    the public model name, an id of the gateway's, the request's parameters echoed."""

    def __init__(
        self,
        *,
        response_id: str,
        model: str,
        request: JSONObject,
        created_at: int,
        custom_tools: Collection[str] = (),
        keepalive_events: bool = False,
    ) -> None:
        self._args: dict[str, Any] = {
            "response_id": response_id,
            "model": model,
            "request": request,
            "created_at": created_at,
            "custom_tools": tuple(custom_tools),
        }
        self.keepalive_events = keepalive_events
        self.result: JSONObject | None = None

    def stream(self) -> StreamPipe:
        return _TranslatedStream(ChatToResponsesStream(**self._args), self.keepalive_events)

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        self.result = chat_to_response(chat_answer(body, tokens), **self._args)
        return translated_body(self.result)
