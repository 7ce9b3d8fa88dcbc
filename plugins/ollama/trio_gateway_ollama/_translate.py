"""OpenAI requests to Ollama's native API, and Ollama's answers back to OpenAI — sans-I/O.

Ollama (``docs/api.md``): ``POST /api/chat`` takes ``model``, ``messages``, ``stream``,
``format``, ``options`` (``num_predict``, ``temperature``, ``top_p``, ``seed``, ``stop``,
penalties, ``num_ctx``) and ``keep_alive``; ``POST /api/generate`` takes ``prompt`` instead
of ``messages``. A stream is NDJSON (``application/x-ndjson``): one object per line, each
with ``done: false`` and a piece of ``message.content`` (chat) or ``response`` (generate);
the last has ``done: true``, ``done_reason`` and the counts ``prompt_eval_count`` and
``eval_count``. An error before the answer is a non-2xx status with ``{"error": "..."}``;
an error during a stream is a line ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.abc import SSE_DONE, CompletionEncoder, Endpoint, UpstreamError, UpstreamProtocolError
from gateway.abc import UpstreamStatusError as _Status

# OpenAI sampling fields and the Ollama option each becomes.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}
# Fields this backend cannot honour; refusing them beats ignoring them silently.
_UNSUPPORTED = ("tools", "functions", "logprobs", "suffix", "echo", "best_of")


def _refuse(message: str, param: str | None = None) -> _Status:
    return _Status(400, message, type="invalid_request_error", param=param)


@dataclass(frozen=True, slots=True)
class NativeRequest:
    path: str  # relative to the base URL: "api/chat" or "api/generate"
    body: dict[str, Any]
    include_usage: bool


def to_ollama(
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    stream: bool,
    keep_alive: str | None = None,
    num_ctx: int | None = None,
) -> NativeRequest:
    """Translate an OpenAI request. Raises UpstreamStatusError (400) for what Ollama's
    native API cannot do."""
    if endpoint == "embeddings":
        raise _refuse("this backend does not serve embeddings")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False):
            raise _refuse(f"{name} is not supported by the ollama backend", name)
    if body.get("n") not in (None, 1):
        raise _refuse("the ollama backend generates one choice per request: n must be 1", "n")
    options: dict[str, Any] = {}
    for name, option in _OPTIONS.items():
        if body.get(name) is not None:
            options[option] = body[name]
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    native: dict[str, Any] = {"model": body.get("model"), "stream": stream}
    if endpoint == "chat/completions":
        native["messages"] = _messages(body.get("messages"))
        path = "api/chat"
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise _refuse("prompt must be a string", "prompt")
        native["prompt"] = prompt
        path = "api/generate"
    if options:
        native["options"] = options
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        native["format"] = "json"
    if keep_alive is not None:
        native["keep_alive"] = keep_alive
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return NativeRequest(path, native, include_usage)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _refuse("messages must be a non-empty list", "messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _refuse(f"messages[{i}] must be an object with a role", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _text(message.get("content"), i)})
    return out


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _refuse(f"messages[{i}]: only text content is supported", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise _refuse(f"messages[{i}].content must be a string or a list of parts", "messages")


class NDJSONDecoder:
    """Bytes in, JSON objects out, one per line; lines may be split anywhere."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [_object(line) for line in lines if line.strip()]

    def close(self) -> None:
        """The stream ended: a partial last line is an error."""
        if self._buffer.strip():
            raise UpstreamProtocolError(
                f"ollama's stream ended inside a line: {self._buffer[:80]!r}"
            )


def _object(line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        raise UpstreamProtocolError(f"ollama sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(doc, dict):
        raise UpstreamProtocolError(f"ollama sent a line that is not an object: {line[:80]!r}")
    return doc


def _finish_reason(doc: Mapping[str, Any]) -> str:
    return "length" if doc.get("done_reason") == "length" else "stop"


def _counts(doc: Mapping[str, Any]) -> tuple[int, int]:
    """The prompt and completion token counts of Ollama's last object (0 when missing)."""
    prompt = doc.get("prompt_eval_count")
    completion = doc.get("eval_count")
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _error(doc: Mapping[str, Any]) -> UpstreamError | None:
    message = doc.get("error")
    if message is None:
        return None
    return UpstreamError(f"ollama: {message}")


@dataclass(slots=True)
class StreamTranslator:
    """Ollama's stream objects in, OpenAI SSE events out."""

    endpoint: Endpoint
    id: str
    model: str
    created: int
    include_usage: bool
    finished: bool = False
    _started: bool = field(default=False)
    _encoder: CompletionEncoder = field(init=False)

    def __post_init__(self) -> None:
        self._encoder = CompletionEncoder(self.endpoint, self.id, self.model, self.created)

    def event(self, doc: Mapping[str, Any]) -> bytes:
        """The SSE bytes for one stream object. Raises UpstreamError for an error line and
        UpstreamProtocolError for anything after the last object."""
        error = _error(doc)
        if error is not None:
            raise error
        if self.finished:
            raise UpstreamProtocolError("ollama sent more after its last object")
        out = b""
        if not self._started:
            out += self._encoder.opening()
        self._started = True
        chat = self.endpoint == "chat/completions"
        piece = _piece(doc, chat)
        if piece:
            out += self._encoder.piece(piece)
        if doc.get("done") is True:
            self.finished = True
            out += self._encoder.piece("", _finish_reason(doc))
            if self.include_usage:
                out += self._encoder.usage(*_counts(doc))
            out += SSE_DONE
        return out


def _piece(doc: Mapping[str, Any], chat: bool) -> str:
    if chat:
        message = doc.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = doc.get("response")
    return content if isinstance(content, str) else ""


def whole_answer(endpoint: Endpoint, body: bytes, *, id: str, created: int) -> bytes:
    """Ollama's non-streamed answer (one JSON object) as OpenAI's. Raises UpstreamError for
    an error object and UpstreamProtocolError for anything else that is not an answer."""
    doc = _object(body)
    error = _error(doc)
    if error is not None:
        raise error
    if doc.get("done") is not True:
        raise UpstreamProtocolError("ollama's answer is not done")
    prompt_tokens, completion_tokens = _counts(doc)
    encoder = CompletionEncoder(endpoint, id, str(doc.get("model", "")), created)
    return encoder.whole(
        _piece(doc, endpoint == "chat/completions"),
        _finish_reason(doc),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
