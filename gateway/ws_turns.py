"""A WebSocket turn's messages and frames (:mod:`gateway.websocket`): the
``response.create`` message read into a request body and its envelope, and the turn's
relayed HTTP response sent as text frames."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .abc import JSONObject
from .errors import InvalidRequest
from .inbound import parse_json_object
from .sse import SSEFramer


class TurnSend:
    """The ASGI ``send`` of one turn's relay: its HTTP response as WebSocket frames. A
    ``200`` is a stream of whole SSE events (the relay writes nothing else): each event's
    ``data`` is one text frame; SSE comments (upstream ones) have no frame. Any other
    status is an error answer, sent as the socket's ``error`` event with that status."""

    __slots__ = ("_error", "_framer", "_headers", "_send_frame", "_status", "_stream_id")

    def __init__(
        self, send_frame: Callable[[str], Awaitable[None]], stream_id: str | None = None
    ) -> None:
        self._send_frame = send_frame
        self._stream_id = stream_id
        self._framer = SSEFramer()
        self._status = 200
        self._headers: list[tuple[bytes, bytes]] = []
        self._error = b""

    async def __call__(self, message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]  # type: ignore[assignment]
            self._headers = message["headers"]  # type: ignore[assignment]
            return
        body: bytes = message.get("body", b"")  # type: ignore[assignment]
        if self._status == 200:
            for event in self._framer.feed(body):
                if event.data is not None:
                    await self._send_frame(self._laned(event.data))
            return
        self._error += body
        if not message.get("more_body", False):
            error = _error_event(self._status, self._headers, self._error)
            if self._stream_id is not None:
                error["stream_id"] = self._stream_id
            await self._send_frame(json.dumps(error))

    def _laned(self, data: str) -> str:
        """``data`` with the turn's ``stream_id``, when it has one (an event's JSON object
        is read and written again only then)."""
        if self._stream_id is None:
            return data
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        if not isinstance(doc, dict):
            return data
        return json.dumps({**doc, "stream_id": self._stream_id}, ensure_ascii=False)


_SURROGATE = re.compile("[\ud800-\udfff]")


def stream_id_of(text: str) -> str | None:
    """The ``stream_id`` of a message that could not be taken, if one can be read: leniently,
    for the error event of a message the checks refused (NaN in it, too deep...) to come
    back on its lane."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    stream_id = doc.get("stream_id") if isinstance(doc, dict) else None
    if not isinstance(stream_id, str) or _SURROGATE.search(stream_id):
        return None  # (a lone surrogate could not be sent back)
    return stream_id


def _error_event(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, object]:
    """The socket's ``error`` event for an HTTP error answer: its status, its OpenAI error
    object, and the headers that tell a client when to come back (``retry-after``, the
    rate-limit ones) in the error's ``headers``, where the SDKs' event models read them."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        error = {"type": "server_error", "code": None, "param": None, "message": "error"}
    kept = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name == b"retry-after" or name.startswith((b"x-ratelimit-", b"anthropic-ratelimit-"))
    }
    return {
        "type": "error",
        "status": status,
        "error": {**error, **({"headers": kept} if kept else {})},
    }


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a ``response.create`` carries for the socket, not for the request body:
    ``stream_id`` (a lane the client names; every event of the turn carries it back) and
    ``generate`` (``false``: a warm-up, answered without a backend)."""

    stream_id: str | None = None
    generate: bool = True


def create_body(text: str) -> tuple[JSONObject, Envelope]:
    """The Responses request body of a ``response.create`` message — its fields but
    ``type`` and the envelope's, streamed (the socket carries events) — and its envelope.
    Raises :class:`InvalidRequest` for anything else (:class:`MalformedJSON` for what is
    not JSON, or not JSON an upstream could be sent)."""
    doc = parse_json_object(text, "The message")  # as a request body is, over HTTP
    kind = doc.get("type")
    if kind != "response.create":
        raise InvalidRequest(
            f"Unsupported message type {kind!r}: this endpoint takes `response.create`",
            param="type",
        )
    stream_id, generate = doc.get("stream_id"), doc.get("generate", True)
    if stream_id is not None and not isinstance(stream_id, str):
        raise InvalidRequest("stream_id must be a string", param="stream_id")
    if not isinstance(generate, bool):
        raise InvalidRequest("generate must be a boolean", param="generate")
    body = {n: v for n, v in doc.items() if n not in ("type", "stream_id", "generate")}
    if body.get("background") is False:
        del body["background"]  # true stays, for the validator to refuse
    body["stream"] = True
    return body, Envelope(stream_id, generate)
