"""OpenAI request bodies in, llama-cpp-python arguments out; its results in, bytes out.

Sans-I/O: no trio, no llama_cpp. :func:`parse_request` validates a client's body and raises
:class:`~gateway.abc.InvalidRequest` (naming the ``param``) for anything this backend
cannot honour, so bad input never reaches a model instance. Unknown keys are ignored, as
OpenAI's clients send many (``user``, ``metadata``, ...).

Sampling parameters a request leaves out take llama-cpp-python's defaults (for instance
``temperature`` 0.8 for completions and 0.2 for chat), as ``llama-server`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.abc import Endpoint, InvalidRequest, JSONObject

# Bounds the per-token stop-string scan a client can ask for.
MAX_STOP_SEQUENCES = 16

_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True, slots=True)
class TextRequest:
    """A chat or text completion, ready for ``Llama.create_(chat_)completion``."""

    kind: Literal["chat", "completion"]
    model: str
    stream: bool
    include_usage: bool
    prompt: str | list[int] = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    cache_prompt: bool | None = None

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    @property
    def stop(self) -> list[str]:
        """The client's stop strings (a chat format may add its own when it prompts)."""
        stop: list[str] = self.options.get("stop", [])
        return stop


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    base64: bool


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def parse_request(endpoint: Endpoint, body: JSONObject) -> TextRequest | EmbeddingRequest:
    """Validate ``body`` for ``endpoint``. Raises :class:`InvalidRequest`."""
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    if endpoint == "embeddings":
        return _embedding_request(model, body)
    stream = body.get("stream") is True
    _reject_unsupported(body, endpoint)
    options = _sampling_options(body, endpoint)
    cache_prompt = _optional(body, "cache_prompt", bool)
    if endpoint == "chat/completions":
        return TextRequest(
            kind="chat",
            model=model,
            stream=stream,
            include_usage=_include_usage(body, stream),
            messages=_messages(body.get("messages")),
            options=options,
            cache_prompt=cache_prompt,
        )
    echo = _optional(body, "echo", bool)
    if echo:
        options["echo"] = True
    return TextRequest(
        kind="completion",
        model=model,
        stream=stream,
        include_usage=_include_usage(body, stream),
        prompt=_prompt(body.get("prompt")),
        options=options,
        cache_prompt=cache_prompt,
    )


def usage_chunk(first: Mapping[str, Any], usage: Usage) -> dict[str, Any]:
    """The final chunk OpenAI sends for ``stream_options.include_usage``: no choices, usage."""
    return {
        "id": first.get("id"),
        "object": first.get("object"),
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [],
        "usage": usage.as_json(),
    }


def choice_text(choice: Mapping[str, Any]) -> str:
    """The text of one choice, whole or streamed, chat or completion."""
    if "text" in choice:
        text = choice["text"]
    else:
        holder = choice.get("message") or choice.get("delta") or {}
        text = holder.get("content")
    return text if isinstance(text, str) else ""


def matched_stop(generated: bytes, content: str, stops: Sequence[str]) -> str | None:
    """The stop string of ``stops`` that ended an answer, for vLLM's ``stop_reason``.

    ``generated`` is every generated token detokenized, the stop string that ended it
    included; ``content`` is the text llama-cpp-python answered with, which it cut right
    before that string (a prompt it echoes may come first). The string is the one that
    begins where ``content`` ends. llama-cpp-python picks it by list order when answering
    whole and by position when streaming, and may have stopped at a chat format's own
    stop string: matching the cut covers each case. None when no string of ``stops`` begins
    there (the chat format's string ended it, or ``content`` is not a cut of
    ``generated``). Of strings that begin at the same place, the first listed wins."""
    for stop in stops:
        at = generated.find(stop.encode())
        # Decoded as llama-cpp-python decodes the answer: bytes of a split character dropped.
        if at >= 0 and content.endswith(generated[:at].decode("utf-8", errors="ignore")):
            return stop
    return None


# -- validation ----------------------------------------------------------------------------


def _reject_unsupported(body: JSONObject, endpoint: Endpoint) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest(
            "this backend generates one choice per request: n must be 1", param="n"
        )
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise InvalidRequest("best_of is not supported by this backend", param="best_of")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise InvalidRequest("logprobs are not supported by this backend", param="logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise InvalidRequest("top_logprobs is not supported by this backend", param="top_logprobs")
    if endpoint == "completions" and body.get("suffix") is not None:
        raise InvalidRequest("suffix (infill) is not supported by this backend", param="suffix")
    for name in ("tools", "functions"):
        if body.get(name):
            raise InvalidRequest(f"{name} are not supported by this backend", param=name)
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise InvalidRequest(
            'only response_format {"type": "text"} is supported by this backend',
            param="response_format",
        )


def _sampling_options(body: JSONObject, endpoint: Endpoint) -> dict[str, Any]:
    options: dict[str, Any] = {}
    max_tokens = _optional(body, "max_completion_tokens", int, low=1)
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int, low=1)
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    ranges: dict[str, tuple[float, float]] = {
        "temperature": (0.0, 2.0),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "typical_p": (0.0, 1.0),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
        "repeat_penalty": (0.0, 10.0),
    }
    for name, (low, high) in ranges.items():
        value = _optional(body, name, float, low=low, high=high)
        if value is not None:
            options[name] = value
    top_k = _optional(body, "top_k", int, low=0)
    if top_k is not None:
        options["top_k"] = top_k
    seed = _optional(body, "seed", int)
    if seed is not None:
        options["seed"] = seed % 2**32  # llama.cpp's sampler seed is a uint32
    stop = _stop(body.get("stop"))
    if stop:
        options["stop"] = stop
    logit_bias = _logit_bias(body.get("logit_bias"))
    if logit_bias:
        options["logit_bias"] = logit_bias
    return options


def _optional(
    body: JSONObject,
    name: str,
    kind: type[Any],
    *,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name} must be a boolean", param=name)
        return value
    # JSON has no int/float split worth trusting (2.0 is an integer), but a bool is never
    # a number here.
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be {what}", param=name)
    if kind is int and not float(value).is_integer():
        raise InvalidRequest(f"{name} must be {what}", param=name)
    if low is not None and value < low:
        raise InvalidRequest(f"{name} must be at least {low:g}", param=name)
    if high is not None and value > high:
        raise InvalidRequest(f"{name} must be at most {high:g}", param=name)
    return int(value) if kind is int else float(value)


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidRequest("stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"stop may hold at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    return [s for s in stops if isinstance(s, str)]


def _logit_bias(value: object) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("logit_bias must map token ids to numbers", param="logit_bias")
    bias: dict[int, float] = {}
    for key, weight in value.items():
        if not key.isdigit() or isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidRequest("logit_bias must map token ids to numbers", param="logit_bias")
        if not -100 <= weight <= 100:
            raise InvalidRequest("logit_bias values must be within [-100, 100]", param="logit_bias")
        bias[int(key)] = float(weight)
    return bias


def _include_usage(body: JSONObject, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest(
            "stream_options is only allowed with stream: true", param="stream_options"
        )
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequest(
            "stream_options.include_usage must be a boolean", param="stream_options"
        )
    return include


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _CHAT_ROLES:
            raise InvalidRequest(
                f"{where}.role must be one of {', '.join(_CHAT_ROLES)} (this backend has no "
                "tool calling)",
                param=f"{where}.role",
            )
        if message.get("tool_calls"):
            raise InvalidRequest("tool calls are not supported by this backend", param=where)
        messages.append(
            {"role": _CHAT_ROLES[role], "content": _content(message.get("content"), where)}
        )
    return messages


def _content(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(
                    f"{where}.content: this backend accepts text parts only",
                    param=f"{where}.content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(
                    f"{where}.content: a text part needs a text string", param=f"{where}.content"
                )
            texts.append(text)
        return "\n".join(texts)
    raise InvalidRequest(
        f"{where}.content must be a string or an array of text parts", param=f"{where}.content"
    )


def _prompt(value: object) -> str | list[int]:
    # OpenAI batches prompts in arrays; one array element is accepted as the prompt itself.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    ):
        return [t for t in value if isinstance(t, int)]
    raise InvalidRequest(
        "prompt must be a string or an array of token ids (one prompt per request)",
        param="prompt",
    )


def _embedding_request(model: str, body: JSONObject) -> EmbeddingRequest:
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(text, str) and text for text in inputs)
    ):
        raise InvalidRequest(
            "input must be a non-empty string or an array of them (token arrays are not "
            "supported by this backend)",
            param="input",
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest('encoding_format must be "float" or "base64"', param="encoding_format")
    if body.get("dimensions") is not None:
        raise InvalidRequest("dimensions is not supported by this backend", param="dimensions")
    return EmbeddingRequest(
        model=model,
        inputs=[text for text in inputs if isinstance(text, str)],
        base64=encoding == "base64",
    )


def fold_system(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """``messages`` with the system messages' text at the head of the first user turn (as
    Gemma's own template puts it), for a chat format that has no system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]
