"""vLLM's OpenAI-compatible wire shapes, sans I/O: request checks, error bodies, the model
list, stream chunks and whole answers. :mod:`tests.fakes.vllm` serves them.

Read from vLLM **v0.12.0** (``vllm/entrypoints/openai/``) unless marked **v0.9.2**; no code
is copied, only field names, defaults and messages:

* Error bodies — ``protocol.py`` ``ErrorResponse``/``ErrorInfo``, built by
  ``serving_engine.py`` ``create_error_response``: ``{"error": {"message", "type", "param",
  "code"}}`` with ``code`` the HTTP status as an integer (v0.10.1.1 onwards). v0.9.2's
  ``ErrorResponse`` is flat: ``{"object": "error", "message", "type", "param", "code"}``.
* Error types as vLLM sends them: ``NotFoundError`` (404, ``_check_model``: "The model `x`
  does not exist."), ``BadRequestError`` (400, the context-length checks in
  ``serving_engine.py`` ``_validate_input``), ``Bad Request`` (400, ``api_server.py``
  ``validation_exception_handler``, which uses ``HTTPStatus.BAD_REQUEST.phrase`` for every
  request-model validation error, e.g. ``validate_stream_options``). Pydantic's exact
  validation text is not reproduced; status, type and shape are. Releases after v0.12
  raise ``VLLMValidationError`` for the context-length checks and fill ``param``
  (``"max_tokens"``, ``"input_tokens"``); the fake keeps v0.12's ``null``.
* ``stream_options`` — ``protocol.py`` ``StreamOptions`` (``include_usage`` defaults to
  True, ``continuous_usage_stats`` to False) and ``vllm/entrypoints/utils.py``
  ``should_include_usage``: without ``stream_options`` no usage at all (no
  ``--enable-force-include-usage``); continuous stats only together with include_usage.
* Chat chunks are dumped with ``exclude_unset=True`` (``serving_chat.py``), completion
  chunks without it (``serving_completion.py``), so completion chunks carry every field,
  nulls included. The stream opens with a role chunk (chat only), the last token's chunk
  carries ``finish_reason``, ``include_usage`` adds a final ``"choices": []`` chunk with
  ``usage``, ``continuous_usage_stats`` adds ``usage`` to every chunk, and every stream
  ends ``data: [DONE]`` — also one that failed after its headers, which first gets
  ``data: {"error": {...}}`` (see :func:`stream_error_event`).
* ``/v1/models`` — ``protocol.py`` ``ModelList``/``ModelCard``/``ModelPermission``
  (``owned_by: "vllm"``, ``root`` the model path, ``max_model_len``).
* Embeddings — ``vllm/entrypoints/pooling/embed/``: ids ``embd-...``, ``usage`` without
  completion tokens.
* ``/tokenize`` — ``vllm/entrypoints/serve/tokenize/``: a body with ``messages`` is a
  ``TokenizeChatRequest`` (``add_generation_prompt`` defaults to True, and together with
  ``continue_final_message`` is a validation error), one with ``prompt`` a
  ``TokenizeCompletionRequest``; the model is checked as for generation (404), and the
  answer is ``{"count", "max_model_len", "tokens", "token_strs": null}``.
* JSON is compact and UTF-8 unescaped (pydantic ``model_dump_json``, Starlette's
  ``JSONResponse``); SSE events are ``data: <json>\\n\\n``.

Tokenization is not modelled: words stand in for tokens, and ``/tokenize`` counts a
prompt exactly as the generation endpoints bill it (:func:`count_prompt`).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DONE",
    "ErrorForm",
    "Generation",
    "VLLMError",
    "check_embedding",
    "check_generation",
    "check_request",
    "check_tokenize",
    "count_inputs",
    "count_prompt",
    "dumps",
    "embedding_response",
    "error_body",
    "event",
    "model_list",
    "stream_error_event",
    "tokenize_response",
    "usage_flags",
]

ErrorForm = Literal["openai", "legacy"]

DONE = b"data: [DONE]\n\n"
# Text pieces standing in for tokens; one has multi-byte UTF-8 on purpose.
WORDS = ("Hello", ",", " w\u00f6rld", " \u2713", " from", " the", " fake", " vLLM", ".")


class VLLMError(Exception):
    """vLLM refuses the request with ``status`` and this error ``type``."""

    def __init__(self, status: int, message: str, err_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type = status, message, err_type


def error_body(form: ErrorForm, message: str, err_type: str, status: int) -> dict[str, Any]:
    """An error body in the current (``openai``) or v0.9.2 (``legacy``) form."""
    if form == "legacy":
        return {
            "object": "error",
            "message": message,
            "type": err_type,
            "param": None,
            "code": status,
        }
    return {"error": {"message": message, "type": err_type, "param": None, "code": status}}


def stream_error_event(form: ErrorForm, message: str, err_type: str, status: int) -> bytes:
    """The event that reports a failure after a stream's headers. ``serving_engine.py``
    ``create_streaming_error_response`` writes it with plain ``json.dumps`` (spaces after
    ``,`` and ``:``), and v0.9.2 wraps its flat error body in ``{"error": ...}``."""
    doc = error_body(form, message, err_type, status)
    if form == "legacy":
        doc = {"error": doc}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def event(doc: dict[str, Any]) -> bytes:
    return b"data: " + dumps(doc) + b"\n\n"


def model_list(name: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex[:16]}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return {"object": "list", "data": [card]}


def usage_flags(options: Any) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) as ``should_include_usage`` derives them."""
    if not isinstance(options, dict):  # absent or null; an empty object means the defaults
        return False, False
    include = bool(options.get("include_usage", True))
    return include, include and bool(options.get("continuous_usage_stats"))


def _validation_error(kind: str, detail: str) -> VLLMError:
    return VLLMError(400, f"1 validation error for {kind}\n{detail}", "Bad Request")


def check_request(content_type: str, body: Any, kind: str, model_name: str) -> dict[str, Any]:
    """The JSON object of a POST to vLLM, or the :class:`VLLMError` vLLM answers with."""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        # api_server.py validate_json_request
        raise VLLMError(
            400, "[\"Unsupported Media Type: Only 'application/json' is allowed\"]", "Bad Request"
        )
    if not isinstance(body, dict):
        raise _validation_error(kind, "  JSON decode error or not an object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise VLLMError(404, f"The model `{model}` does not exist.", "NotFoundError")
    return body


def check_generation(
    body: dict[str, Any], chat: bool, max_model_len: int
) -> tuple[int, int | None]:
    """(prompt tokens, max_tokens) of a valid chat or completions request."""
    kind = "ChatCompletionRequest" if chat else "CompletionRequest"
    needed = "messages" if chat else "prompt"
    if needed not in body:
        raise _validation_error(kind, f"{needed}\n  Field required [type=missing]")
    if body.get("stream_options") and not body.get("stream"):
        raise _validation_error(
            kind,
            "  Value error, Stream options can only be defined when "
            "`stream=True`. [type=value_error]",
        )
    prompt_tokens = count_prompt(body, chat)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if prompt_tokens >= max_model_len:
        raise VLLMError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. "
            f"However, your request has {prompt_tokens} input tokens. Please "
            "reduce the length of the input messages.",
            "BadRequestError",
        )
    if isinstance(max_tokens, int) and prompt_tokens + max_tokens > max_model_len:
        raise VLLMError(
            400,
            "'max_tokens' or 'max_completion_tokens' is too large: "
            f"{max_tokens}. This model's maximum context length is {max_model_len} "
            f"tokens and your request has {prompt_tokens} input tokens "
            f"({max_tokens} > {max_model_len} - {prompt_tokens}).",
            "BadRequestError",
        )
    return prompt_tokens, max_tokens if isinstance(max_tokens, int) else None


def count_prompt(body: dict[str, Any], chat: bool) -> int:
    """Words stand in for tokens; a chat message costs four more for its template, and so
    does each tool, whose definition the template writes out (its JSON's words)."""
    if chat:
        total = 0
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            total += 4 + len(str(content or "").split())
        tools = body.get("tools")
        for tool in tools if isinstance(tools, list) else []:
            total += 4 + len(json.dumps(tool).split())
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return sum(len(str(p).split()) for p in prompt)
    return len(str(prompt or "").split())


def check_tokenize(body: dict[str, Any]) -> int:
    """The prompt tokens of a valid ``/tokenize`` body, chat or text."""
    if "messages" in body:
        if body.get("continue_final_message") and body.get("add_generation_prompt", True):
            raise _validation_error(
                "TokenizeChatRequest",
                "  Value error, Cannot set both `continue_final_message` and "
                "`add_generation_prompt` to True. [type=value_error]",
            )
        return count_prompt(body, chat=True)
    if "prompt" in body:
        return count_prompt(body, chat=False)
    raise _validation_error("TokenizeCompletionRequest", "prompt\n  Field required [type=missing]")


def tokenize_response(count: int, max_model_len: int) -> dict[str, Any]:
    return {
        "count": count,
        "max_model_len": max_model_len,
        "tokens": [100 + i for i in range(count)],
        "token_strs": None,
    }


@dataclass
class Generation:
    """The bodies of one generation of ``n`` tokens, in vLLM's shapes."""

    id: str
    model: str
    created: int
    prompt_tokens: int
    n: int
    truncated: bool = False  # stopped by max_tokens: finish_reason "length"
    pieces: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pieces = [WORDS[i % len(WORDS)] for i in range(self.n)]

    @property
    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"

    def usage(self, completion: int, *, details: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + completion,
            "completion_tokens": completion,
        }
        if details:
            usage["prompt_tokens_details"] = None
        return usage

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chat_events(self, include_usage: bool, continuous: bool) -> Iterator[tuple[str, bytes]]:
        """(kind, event) pairs, kind one of ``role``, ``token``, ``usage``, ``done``."""
        first: dict[str, Any] = {
            **self._head("chat.completion.chunk"),
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "reasoning_content": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        if continuous:
            first["usage"] = self.usage(0, details=False)
        first["prompt_token_ids"] = None
        yield "role", event(first)
        for i, piece in enumerate(self.pieces):
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": piece, "reasoning_content": None},
                "logprobs": None,
                "finish_reason": None,
            }
            if i == self.n - 1:
                choice.update(finish_reason=self.finish_reason, stop_reason=None, token_ids=None)
            chunk: dict[str, Any] = {**self._head("chat.completion.chunk"), "choices": [choice]}
            if continuous:
                chunk["usage"] = self.usage(i + 1, details=False)
            yield "token", event(chunk)
        if include_usage:
            yield (
                "usage",
                event(
                    {
                        **self._head("chat.completion.chunk"),
                        "choices": [],
                        "usage": self.usage(self.n, details=False),
                    }
                ),
            )
        yield "done", DONE

    def completion_events(
        self, include_usage: bool, continuous: bool
    ) -> Iterator[tuple[str, bytes]]:
        for i, piece in enumerate(self.pieces):
            last = i == self.n - 1
            chunk = {
                **self._head("text_completion"),
                "choices": [
                    {
                        "index": 0,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": self.finish_reason if last else None,
                        "stop_reason": None,
                        "prompt_token_ids": None,
                        "token_ids": None,
                    }
                ],
                "usage": self.usage(i + 1, details=True) if continuous else None,
            }
            yield "token", event(chunk)
        if include_usage:
            yield (
                "usage",
                event(
                    {
                        **self._head("text_completion"),
                        "choices": [],
                        "usage": self.usage(self.n, details=False),
                    }
                ),
            )
        yield "done", DONE

    def chat_response(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.pieces),
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning": None,
            "reasoning_content": None,
        }
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(self.n, details=True),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "kv_transfer_params": None,
        }

    def completion_response(self) -> dict[str, Any]:
        return {
            **self._head("text_completion"),
            "choices": [
                {
                    "index": 0,
                    "text": "".join(self.pieces),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(self.n, details=True),
            "kv_transfer_params": None,
        }


def check_embedding(body: dict[str, Any]) -> list[Any]:
    """The inputs of an embeddings request, one per vector."""
    if "input" not in body:
        raise _validation_error(
            "EmbeddingCompletionRequest", "input\n  Field required [type=missing]"
        )
    inputs = body["input"]
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
    ):
        return [inputs]
    return list(inputs) if isinstance(inputs, list) else [inputs]


def embedding_response(gen: Generation, inputs: list[Any]) -> dict[str, Any]:
    data = [
        {"index": i, "object": "embedding", "embedding": _embed(item)}
        for i, item in enumerate(inputs)
    ]
    return {
        "id": gen.id,
        "object": "list",
        "created": gen.created,
        "model": gen.model,
        "data": data,
        "usage": {
            "prompt_tokens": gen.prompt_tokens,
            "total_tokens": gen.prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }


def count_inputs(inputs: list[Any]) -> int:
    return sum(len(x) if isinstance(x, list) else len(str(x).split()) for x in inputs)


def _embed(item: Any, dims: int = 8) -> list[float]:
    """A deterministic unit vector for ``item``."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]
