"""What a dialect is to the relay: the client-facing shape of errors and heartbeats, and,
per attempt, a :class:`Shape` that turns the upstream's answer into the client's.

The relay knows only these interfaces. A stream goes through a :class:`StreamPipe`: upstream
bytes in, whole client events out, with two facts the relay acts on — whether content has
reached the client (no failover after it) and whether the stream's end has arrived (the
response ends with it, nothing after it is relayed). Sans-I/O: no trio, no sockets.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..abc import JSONObject
from ..errors import GatewayError, UpstreamProtocolError
from ..keepalive import KeepaliveSettings
from ..sse import SSEFramer
from ..usage import parse_json

__all__ = ["Dialect", "Fed", "Shape", "StreamPipe", "Tokens", "Unchanged", "utf8_json"]

Headers = Sequence[tuple[bytes, bytes]]


def utf8_json(doc: object) -> bytes:
    """``doc`` as compact JSON in UTF-8, as the APIs write their answers. A string holding a
    lone surrogate (a detokenizer's cut character, relayed as the upstream escaped it)
    cannot be UTF-8: such a document is written with ASCII escapes instead, which every
    JSON reader takes."""
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(slots=True)
class Tokens:
    """Token counts read from an answer so far, and the model the upstream named in it
    (``None``: not reported)."""

    prompt: int | None = None
    completion: int | None = None
    model: str | None = None

    def note_model(self, document: JSONObject) -> None:
        """Take the ``model`` a parsed answer (or chunk, or Responses ``response``) names."""
        model = document.get("model")
        if isinstance(model, str) and model:
            self.model = model


@dataclass(frozen=True, slots=True)
class Fed:
    """What one piece of upstream bytes gave the client.

    ``out``: whole events to write now, in order. ``data``: some of them are content (the
    client has the answer's start: no failover from here on). ``end``: the last of them
    ends a complete stream; the response ends with it and nothing after it is relayed.
    ``failure``: the upstream failed after ``out`` (in the same piece): the error to raise
    once ``out`` is written."""

    out: bytes = b""
    data: bool = False
    end: bool = False
    failure: GatewayError | None = None


NOTHING = Fed()


class StreamPipe(abc.ABC):
    """One attempt's stream: upstream bytes in, whole client events out. Every upstream
    stream is SSE: ``_framer`` cuts it into whole events for :meth:`feed`."""

    __slots__ = ("_framer", "tokens")

    unfinished = "upstream closed the stream before its end"
    """Why a stream that stops before its end event is a failure, for the client's error."""

    def __init__(self) -> None:
        self.tokens = Tokens()
        self._framer = SSEFramer()

    @property
    def result(self) -> JSONObject | None:
        """The whole answer, once the stream's end arrived, for dialects that keep answers
        (stored Responses); ``None`` otherwise."""
        return None

    def heartbeat(self) -> bytes | None:
        """A heartbeat that belongs in this stream now (one that takes a place in its
        numbering), or ``None`` for the dialect's own."""
        return None

    def error_event(self, error: GatewayError) -> bytes | None:
        """The event that ends this stream with ``error`` where that depends on what the
        client has of it, or ``None`` for the dialect's own."""
        return None

    @abc.abstractmethod
    def feed(self, chunk: bytes) -> Fed:
        """Take the next upstream bytes. Raises
        :class:`~gateway.errors.UpstreamProtocolError` for what cannot be relayed."""

    @property
    def pending(self) -> bool:
        """An event is begun and not finished (the upstream stopped inside it)."""
        return self._framer.pending

    @property
    def pending_bytes(self) -> int:
        """Bytes held back while an event is unfinished."""
        return self._framer.pending_bytes

    @property
    def data_events(self) -> int:
        """The upstream's events with data so far (about one per token)."""
        return self._framer.data_events


class Shape(abc.ABC):
    """How one attempt's answer reaches the client: passed through or translated.
    ``result``: the whole answer of the last :meth:`whole`, for dialects that keep
    answers (stored Responses); ``None`` otherwise."""

    result: JSONObject | None = None

    @abc.abstractmethod
    def stream(self) -> StreamPipe:
        """A pipe for a streamed answer (one per attempt)."""

    @abc.abstractmethod
    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        """The client's body for a whole (non-streamed) 2xx answer ``body``; token counts
        it reports go into ``tokens``. Raises :class:`~gateway.errors.UpstreamProtocolError`
        for an answer that cannot be read."""


def whole_object(body: bytes) -> JSONObject:
    """A whole 2xx answer parsed: it must be a JSON object (an empty body, SSE text or a
    broken document from a backend that answered 200 is the upstream's protocol error, not
    the client's to find out). Raises :class:`~gateway.errors.UpstreamProtocolError`."""
    try:
        doc = parse_json(body)
    except ValueError:
        what = "an empty body" if not body.strip() else f"a body that is not JSON ({body[:40]!r})"
        raise UpstreamProtocolError(f"upstream answered with {what}") from None
    if not isinstance(doc, dict):
        raise UpstreamProtocolError("upstream answered with JSON that is not an object")
    return doc


class Unchanged(Shape):
    """A whole answer passed on as it is, with nothing to read in it: a token count. Counts
    are never streamed."""

    def stream(self) -> StreamPipe:
        raise RuntimeError("a token count is never streamed")

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        return body


class Dialect(abc.ABC):
    """One wire protocol's client-facing shapes: error bodies and statuses, the mid-stream
    error event, heartbeat bytes and the headers of its answers."""

    name: str
    """The dialect's name in config and docs: ``chat`` or ``messages``."""

    @abc.abstractmethod
    def status(self, error: GatewayError) -> int:
        """The HTTP status this dialect answers ``error`` with."""

    @abc.abstractmethod
    def error_json(self, error: GatewayError) -> bytes:
        """The body of a whole error answer."""

    @abc.abstractmethod
    def error_event(self, error: GatewayError, model: str = "") -> bytes:
        """The SSE event that ends a stream whose headers were sent, with ``error``, when no
        attempt's stream has a say (none began); ``model``: the one the client asked for."""

    @abc.abstractmethod
    def heartbeat(self, policy: KeepaliveSettings) -> bytes:
        """One SSE heartbeat event in this dialect, by the route's ``policy``."""

    def limit_headers(self, headers: Mapping[str, str], now: float) -> dict[str, str]:
        """A team's rate-limit headers (OpenAI's ``x-ratelimit-*``, and ``Retry-After``) as
        this dialect names them; ``now`` is the wall clock (Unix seconds)."""
        return dict(headers)

    def id_headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """Headers that carry the request id, besides ``x-request-id``."""
        return []

    def error_head(self, error: GatewayError, body: bytes, now: float) -> list[tuple[bytes, bytes]]:
        """The ASGI headers of a whole error answer with ``body``: JSON, its length, and
        what the error implies (``Retry-After``, ``Allow``, ...), named for this dialect."""
        return [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(
                (name.lower().encode(), value.encode())
                for name, value in self.limit_headers(error.headers(), now).items()
            ),
        ]
