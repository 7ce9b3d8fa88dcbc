"""What a client sent, checked: sans-I/O parsing and validation of requests (no Quart, no
trio), so every rule here is a plain function with a plain test."""

from __future__ import annotations

import json
import os
import re

from .abc import Endpoint, JSONObject
from .dialects.anthropic_validate import validate_count_tokens, validate_messages
from .dialects.responses_validate import validate_input_tokens, validate_responses
from .errors import InvalidRequest, MalformedJSON, MissingField

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACE_ID = re.compile(r"(?!0{32})[0-9a-f]{32}")  # a request id that can be a trace id
# The relayed endpoints: path → the endpoint the backends are asked for.
RELAYED: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages/count_tokens",
    "/v1/responses": "responses",
    "/v1/responses/input_tokens": "responses/input_tokens",
}
_ENDPOINTS = {
    **RELAYED,
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/": "status",
    "/status/events": "status",
    "/admin/usage": "admin",
}


def endpoint_label(path: str) -> str:
    """A bounded label for any path a client may send."""
    if path.startswith("/v1/models/"):
        return "models"
    if path.startswith("/v1/responses/"):
        return _ENDPOINTS.get(path, "responses")
    return _ENDPOINTS.get(path, "other")


def request_ids(given_id: str, given_traceparent: str) -> tuple[str, str]:
    """The request id and W3C traceparent the gateway answers with (and sends upstream): the
    client's own when they are sane, else new ones."""
    request_id = given_id if REQUEST_ID.fullmatch(given_id) else _random_hex(16)
    return request_id, traceparent(given_traceparent, request_id)


def traceparent(given: str, request_id: str) -> str:
    """The client's W3C traceparent when valid, else a new one (trace id from the request
    id when that is 32 hex digits, so the two can be correlated)."""
    if _TRACEPARENT.fullmatch(given):
        return given
    trace = request_id if _TRACE_ID.fullmatch(request_id) else _random_hex(16)
    return f"00-{trace}-{_random_hex(8)}-01"


def _random_hex(size: int) -> str:
    """``size`` random bytes in hex, never all zeros (which W3C trace ids and span ids may
    not be). ``os.urandom`` alone: ``uuid.uuid4`` costs ≈ 5 times as much, for a version
    field nobody reads."""
    while True:
        value = os.urandom(size)
        if value.count(0) < size:
            return value.hex()


# Deeper nesting than this is refused: no API body needs it, and Python's JSON encoder
# recurses, so a body parsed near the interpreter's limit could fail when sent on.
MAX_DEPTH = 128
# Only a \uD800-\uDFFF escape can put a UTF-16 surrogate into a parsed string (raw ones
# fail the strict decoding, in UTF-8, -16 or -32 alike), so bodies without one need no search.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constants(name: str) -> None:
    # Python's json reads NaN and Infinity, which JSON (RFC 8259) does not have and which
    # no upstream could be sent back: refuse them here, as the client's error.
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    # 1e999 is valid JSON that Python reads as inf, which cannot be sent back either.
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range for a number")
    return value


# json.loads with these hooks builds a decoder per call; this one is built once. Bytes are
# decoded by their first bytes as json.loads decodes them (UTF-8, -16 or -32), but strictly:
# json.loads lets encoded surrogates through ("surrogatepass"), which no upstream can be sent.
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


def parse_json_object(raw: str | bytes, what: str = "Request body") -> JSONObject:
    """The request body (or ``what`` else: a WebSocket message) as a JSON object that can
    be sent on unchanged. Raises :class:`MalformedJSON` for anything that is not JSON, or
    that is JSON no upstream could be sent (numbers out of range, NaN, lone UTF-16
    surrogates, raw or escaped, nesting past :data:`MAX_DEPTH`), and
    :class:`InvalidRequest` for JSON that is not an object."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw))
        body = _DECODER.decode(text)
    except RecursionError:
        raise MalformedJSON(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"{what} is not valid JSON: {_reason(exc)}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_tree(body, what)
    return body


def _reason(error: ValueError) -> str:
    """Why a body is no JSON, in the client's terms."""
    if "int_max_str_digits" in str(error):  # Python's guard against quadratic int parsing
        return "a number has too many digits"
    return str(error)


def _check_tree(body: JSONObject, what: str) -> None:
    """Walk the parsed body (without recursion) for what :func:`parse_json_object` refuses."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise MalformedJSON(
                    f"{what} has a lone UTF-16 surrogate escape (such as \\ud800) "
                    "in a string: that is not text and cannot be sent on"
                )
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise MalformedJSON(f"{what} is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((item, depth + 1))
                if isinstance(key, str):
                    stack.append((key, depth))


# What each OpenAI endpoint cannot do without, and the JSON type it must have.
_REQUIRED: dict[Endpoint, str] = {
    "chat/completions": "messages",
    "completions": "prompt",
    "embeddings": "input",
}


def validate(body: JSONObject, endpoint: Endpoint) -> tuple[str, bool]:
    """The ``model`` and ``stream`` of a request to ``endpoint``; raises
    :class:`InvalidRequest` for a body the endpoint cannot take."""
    if endpoint == "messages":
        return validate_messages(body)
    if endpoint == "messages/count_tokens":
        return validate_count_tokens(body), False
    if endpoint == "responses":
        return validate_responses(body)
    if endpoint == "responses/input_tokens":
        return validate_input_tokens(body), False
    model = body.get("model")
    if model is None:
        raise MissingField("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    if stream and endpoint == "embeddings":
        raise InvalidRequest("embeddings cannot be streamed", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        # Not taken for none: the gateway sets include_usage in it for the team's count.
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    required = _REQUIRED[endpoint]
    if required not in body:
        raise MissingField(f"you must provide a {required} parameter", param=required)
    if endpoint == "chat/completions":
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("messages must be an array of message objects", param="messages")
    return model, stream


def ask_for_usage(body: JSONObject) -> tuple[JSONObject, bool]:
    """The body with ``stream_options.include_usage`` on (the gateway counts tokens from the
    usage chunk), and whether the usage chunk must be hidden (the client did not ask)."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    asked = options.get("include_usage") is True
    return {**body, "stream_options": {**options, "include_usage": True}}, not asked
