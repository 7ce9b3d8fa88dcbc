"""The gateway's error tree. Every error a client can see is one of these.

Each class knows its HTTP status, its OpenAI error ``type`` and ``code``, so mapping an
error to a response is one function (:func:`error_body`) and happens in one place.

::

    GatewayError                         500 server_error
    ├── InvalidRequest                   400 invalid_request_error
    │   ├── MalformedJSON                400  code=invalid_json
    │   ├── MissingField                 400  code=missing_required_parameter
    │   ├── BodyTooLarge                 413  code=request_too_large
    │   ├── CannotCountTokens            400  code=count_tokens_unsupported
    │   ├── ContextWindowExceeded        400  code=context_length_exceeded
    │   ├── AmbiguousFraming             400  code=ambiguous_framing    (closes the connection)
    │   └── RequestTimeout               408  code=request_timeout      (closes the connection)
    ├── NotFound                         404  code=not_found            (unknown path)
    │   └── ModelNotFound                404  code=model_not_found
    ├── MethodNotAllowed                 405  code=method_not_allowed
    ├── UpgradeRequired                  426  code=upgrade_required     (a WebSocket handshake)
    ├── AuthenticationError              401 invalid_request_error code=invalid_api_key
    ├── PermissionDenied                 403 invalid_request_error code=model_not_allowed
    ├── RateLimited                      429 requests|tokens code=rate_limit_exceeded,
    │                                        with Retry-After and x-ratelimit-* headers
    ├── ShuttingDown                     503  code=shutting_down
    ├── Overloaded                       503 (or 429) code=overloaded, with Retry-After
    ├── NoBackendAvailable               503  code=no_backend_available, with Retry-After
    ├── ConfigError                      (start-up only, never sent to a client)
    └── UpstreamError                    502 upstream_error
        ├── UpstreamConnectError         502  code=upstream_connect_error
        ├── UpstreamProtocolError        502  code=upstream_protocol_error
        ├── UpstreamTimeout              504  code=upstream_timeout
        ├── UpstreamResponseTooLarge     502  code=upstream_response_too_large
        └── UpstreamStatusError          upstream's own status, its message kept

Backends raise :class:`UpstreamError` subclasses; they never build HTTP responses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .overflow_words import read_overflow

SHOWN_MAX = 200
"""Most characters of a client's own value an error message repeats (a model name, a path,
an id): a megabyte of model name is not echoed back."""


def shown(value: str) -> str:
    """``value`` as an error message quotes it: cut at :data:`SHOWN_MAX` characters."""
    if len(value) <= SHOWN_MAX:
        return value
    return f"{value[:SHOWN_MAX]}… ({len(value):,} characters)"


class GatewayError(Exception):
    """Base of every error the gateway reports. ``message`` is shown to the client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error implies (``Retry-After``, ``Allow``, ...)."""
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class MalformedJSON(InvalidRequest):
    code = "invalid_json"


class MissingField(InvalidRequest):
    code = "missing_required_parameter"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class CannotCountTokens(InvalidRequest):
    """A token count asked of a backend that has no way to count exactly: refused rather
    than guessed, because a client sizes its context by it."""

    code = "count_tokens_unsupported"


class ContextWindowExceeded(InvalidRequest):
    """The request does not fit the model's context window: the prompt alone, or the prompt
    with the room its ``max_tokens`` asks for the answer. Each backend says so in its own
    words (:mod:`.overflow_words`); clients act on one form only, so each dialect words it
    again: OpenAI's code ``context_length_exceeded`` and message (Codex tells its user it
    ran out of room), and :attr:`anthropic_message` — ``prompt is too long: N tokens > M
    maximum``, on which Claude Code compacts the conversation by the difference, or ``input
    length and `max_tokens` exceed context limit: N + K > M, …``, on which it asks again
    with a ``max_tokens`` that fits. ``tokens``, ``limit`` and ``max_tokens``: the prompt's
    size, the window's and the answer's room, when the backend gave them; without them the
    message is the backend's own."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        tokens: int | None = None,
        limit: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.tokens, self.limit = tokens, limit
        self.max_tokens = max_tokens if tokens is not None and limit is not None else None
        if tokens is not None and limit is not None:
            if max_tokens is not None and tokens < limit:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {tokens + max_tokens} tokens ({tokens} in the messages, "
                    f"{max_tokens} in the completion). Please reduce the length of the "
                    "messages or completion."
                )
            else:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, your "
                    f"messages resulted in {tokens} tokens. Please reduce the length of the "
                    "messages."
                )
        super().__init__(message)

    @property
    def answer_has_no_room(self) -> bool:
        """The prompt fits; the answer's ``max_tokens`` does not fit beside it."""
        tokens, limit = self.tokens, self.limit
        return self.max_tokens is not None and tokens is not None and tokens < (limit or 0)

    @property
    def anthropic_message(self) -> str:
        """The error's message in Anthropic's words."""
        if self.answer_has_no_room:
            return (
                f"input length and `max_tokens` exceed context limit: {self.tokens} + "
                f"{self.max_tokens} > {self.limit}, decrease input length or `max_tokens` "
                "and try again"
            )
        if self.tokens is not None and self.limit is not None:
            return f"prompt is too long: {self.tokens} tokens > {self.limit} maximum"
        return f"prompt is too long: {self.message}"


def context_window_exceeded(
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> ContextWindowExceeded | None:
    """The :class:`ContextWindowExceeded` a backend's refusal means, or ``None`` when it
    means something else (:func:`.overflow_words.read_overflow`: llama-server's, vLLM's,
    llama-cpp-python's, OpenAI's and Anthropic's words). ``type``, ``code`` and ``fields``:
    the rest of the backend's error object."""
    overflow = read_overflow(message, type=type, code=code, fields=fields)
    if overflow is None:
        return None
    return ContextWindowExceeded(
        message, tokens=overflow.tokens, limit=overflow.limit, max_tokens=overflow.max_tokens
    )


class PreviousResponseNotFound(InvalidRequest):
    """A Responses request continues (``previous_response_id``) a response that cannot be
    found: OpenAI's own code for it, on which clients (Codex, the SDKs' WebSocket helpers)
    resend the whole conversation instead."""

    code = "previous_response_not_found"


class AmbiguousFraming(InvalidRequest):
    """The request names its body's length twice (``Content-Length`` and
    ``Transfer-Encoding``): RFC 9112 §6.1 says reject it and close, since whatever follows
    on the connection cannot be told apart from a smuggled request."""

    code = "ambiguous_framing"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class RequestTimeout(InvalidRequest):
    """The client took too long sending its request body; the connection is closed."""

    status = 408
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class UpgradeRequired(GatewayError):
    """A WebSocket handshake, which no route serves: the client is to send its request as
    plain HTTP. 426 is the status coding agents (Codex) read as "fall back to HTTP".

    RFC 9110 §15.5.22 asks a 426 to name the protocols the server accepts in ``Upgrade``;
    the one it accepts is the HTTP/1.1 the handshake came on — naming ``websocket`` there
    would ask for the very thing refused. The connection is not upgraded, and closes after
    the answer. ``Upgrade`` and ``Connection`` exist in HTTP/1.1 only (HTTP/2 forbids
    connection-specific headers), so an HTTP/2 handshake gets neither."""

    status = 426
    type = "invalid_request_error"
    code = "upgrade_required"

    def __init__(self, message: str, *, http_version: str = "1.1") -> None:
        super().__init__(message)
        self.http_version = http_version

    def headers(self) -> dict[str, str]:
        if not self.http_version.startswith("1."):
            return {}
        return {"Upgrade": "HTTP/1.1", "Connection": "Upgrade, close"}


class AuthenticationError(GatewayError):
    """No API key, or one the gateway does not know. The message never repeats the key."""

    status = 401
    type = "invalid_request_error"
    code: str | None = "invalid_api_key"

    def __init__(
        self, message: str, *, code: str | None = "invalid_api_key", challenge: str = "Bearer"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class PermissionDenied(GatewayError):
    """A known key asking for something its team may not use."""

    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class RateLimited(GatewayError):
    """A team's limit is reached. ``type`` is the limit's kind, as OpenAI writes it
    (``requests`` or ``tokens``); ``limit_headers`` are the ``x-ratelimit-*`` headers."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retry_after: float,
        limit_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.type = kind
        self.retry_after = retry_after
        self.limit_headers = dict(limit_headers or {})

    def headers(self) -> dict[str, str]:
        return {**self.limit_headers, "Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ShuttingDown(GatewayError):
    status = 503
    type = "server_error"
    code = "shutting_down"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Overloaded(GatewayError):
    """No capacity now and no room to wait: a full queue. Tells the client when to retry."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, status: int = 503) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        if status == 429:
            self.type = "rate_limit_error"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class NoBackendAvailable(GatewayError):
    """Every target of the route is down, loading or ejected right now."""

    status = 503
    type = "server_error"
    code = "no_backend_available"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class ConfigError(GatewayError):
    """A configuration problem found at start-up; ``message`` names the dotted path."""

    code = "config_error"


class UpstreamError(GatewayError):
    """The backend failed. Raised by backends; the relay maps it to a status or an event."""

    status = 502
    type = "upstream_error"
    code: str | None = "upstream_error"


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamResponseTooLarge(UpstreamError):
    """A non-streamed answer is larger than the backend's ``max_response_bytes``: the
    gateway holds a whole answer in memory before it sends it, so it stops reading there.
    The request asked for that much, so another backend would answer the same: it is not
    retried and does not count against the backend."""

    code = "upstream_response_too_large"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx status. The status is kept for the client,
    and the upstream's OpenAI-style ``type``/``code``/``param`` when it sent them."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.type = type or ("invalid_request_error" if status < 500 else "upstream_error")
        self.code = code

    @classmethod
    def from_upstream(cls, status: int, body: bytes) -> UpstreamStatusError | ContextWindowExceeded:
        """What the client is told of an upstream's error answer: :meth:`from_body`, but a
        401 or 403, which refuses the gateway's own credentials (the backend's ``api_key``)
        and not the client's, is a 502 of the gateway's — another target may not share it,
        it counts against the backend, and its body (which may echo the key) stays here."""
        if status in (401, 403):
            return cls(
                502,
                f"the backend refused the gateway's credentials (HTTP {status}): "
                "its api_key is wrong or lacks access; tell the gateway's operator",
                type="upstream_error",
                code="upstream_auth_failed",
            )
        return cls.from_body(status, body)

    @classmethod
    def from_body(cls, status: int, body: bytes) -> UpstreamStatusError | ContextWindowExceeded:
        """Build from an upstream error body: OpenAI's ``{"error": {...}}``, vLLM's older
        ``{"object": "error", "message": ...}``, or anything else (kept as text). A 400 or
        413 that says the prompt is over the context window is
        :class:`ContextWindowExceeded`, whichever backend's words it is in."""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            err = doc.get("error", doc)
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                kind, code = _str_or_none(err.get("type")), _str_or_none(err.get("code"))
                if status in (400, 413):
                    overflow = context_window_exceeded(
                        err["message"], type=kind, code=code, fields=err
                    )
                    if overflow is not None:
                        return overflow
                return cls(
                    status,
                    err["message"],
                    type=kind,
                    code=code,
                    param=_str_or_none(err.get("param")),
                )
            if isinstance(err, str):
                return cls(status, err)
        text = body.decode("utf-8", "replace").strip()[:500]
        return cls(status, f"upstream returned HTTP {status}" + (f": {text}" if text else ""))


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def error_body(error: GatewayError) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_json(error: GatewayError) -> bytes:
    return json.dumps(error_body(error)).encode()


def error_head(error: GatewayError, body: bytes) -> list[tuple[bytes, bytes]]:
    """The ASGI headers of a whole error answer with ``body``: JSON, its length, and what
    the error implies (``Retry-After``, ``Allow``, ...)."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
    ]


def error_event(error: GatewayError) -> bytes:
    """The SSE event that ends a stream whose headers were already sent."""
    return b"data: " + error_json(error) + b"\n\n"
