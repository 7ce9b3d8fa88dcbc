"""Token counts from vLLM's own tokenizer: ``POST /tokenize`` at the server's root (not
under ``/v1``, so vLLM's ``--api-key`` does not guard it; the key is sent all the same).

Read from vLLM v0.12.0 (``vllm/entrypoints/serve/tokenize/``): a body with ``messages``
is a ``TokenizeChatRequest``, rendered with the chat template exactly as
``/v1/chat/completions`` renders it (same ``tools``, ``chat_template``,
``chat_template_kwargs``, ``add_generation_prompt`` — default true — and
``add_special_tokens`` — default false), and the answer is ``{"count", "max_model_len",
"tokens", "token_strs"}``. So the count is the ``usage.prompt_tokens`` of that chat.

One gap: a server started with ``--exclude-tools-when-tool-choice-none`` leaves the tools
out of a chat whose ``tool_choice`` is ``"none"``, and ``/tokenize`` has no ``tool_choice``
to know it; such a count includes the tools.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from gateway.abc import (
    CannotCountTokens,
    JSONObject,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamStatusError,
    UpstreamTimeout,
)

from .._pool import ConnectionPool, Response
from ._settings import VLLMSettings

TOKENIZE_PATH = "/tokenize"

# The fields of a chat request that shape its prompt; TokenizeChatRequest has each of them
# under the same name and with the same default as ChatCompletionRequest.
_PROMPT_FIELDS = (
    "tools",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "mm_processor_kwargs",
    "media_io_kwargs",
)


def tokenize_body(chat: JSONObject) -> JSONObject:
    """The ``/tokenize`` body that renders the prompt of the ``chat/completions`` body
    ``chat``: its model, messages and every field that shapes the prompt, nothing else."""
    body: JSONObject = {"model": chat.get("model"), "messages": chat.get("messages")}
    for name in _PROMPT_FIELDS:
        if chat.get(name) is not None:
            body[name] = chat[name]
    if not body.get("continue_final_message"):  # vLLM refuses the two together
        body.setdefault("add_generation_prompt", True)
    return body


def read_count(status: int, body: bytes, backend_id: str) -> int:
    """The ``count`` of a ``/tokenize`` answer. Raises :class:`UpstreamStatusError` with
    vLLM's status and message for an error, :class:`CannotCountTokens` when the server has
    no such endpoint (FastAPI's bare 404, or 501), :class:`UpstreamProtocolError` for an
    answer without a count."""
    if status == 501 or (status == 404 and _is_fastapi_not_found(body)):
        raise CannotCountTokens(
            f"backend {backend_id} cannot count tokens: its vLLM server does not tokenize "
            f"chats (POST {TOKENIZE_PATH} answered {status})"
        )
    if status >= 300:
        raise UpstreamStatusError.from_upstream(status, body)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    count = doc.get("count") if isinstance(doc, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UpstreamProtocolError(
            f"backend {backend_id}: {TOKENIZE_PATH} answered without a token count: {body[:200]!r}"
        )
    return count


def _is_fastapi_not_found(body: bytes) -> bool:
    try:
        return bool(json.loads(body) == {"detail": "Not Found"})
    except ValueError:
        return False


class TokenCounter:
    """Asks one vLLM server to count the prompt tokens of chats, on a connection pool of
    its own (a count never waits for a relay's connection, nor holds one)."""

    def __init__(self, backend_id: str, settings: VLLMSettings, pool: ConnectionPool) -> None:
        self._id = backend_id
        self._pool = pool
        self._max_bytes = settings.max_response_bytes
        # The answer is one small body: the first-byte and total timers both bound it.
        limits = [t for t in (settings.timeouts.first_byte, settings.timeouts.total) if t]
        self._timeout = min(limits, default=math.inf)
        key = settings.api_key
        self._headers = [
            (b"content-type", b"application/json"),
            (b"accept-encoding", b"identity"),
            (b"user-agent", b"trio-gateway"),
            *([(b"authorization", f"Bearer {key.get_secret_value()}".encode())] if key else []),
        ]

    async def count(self, request: UpstreamRequest) -> int:
        """The prompt tokens of the ``chat/completions`` body ``request.body``, as vLLM's
        tokenizer counts them over its chat template. Raises the
        :class:`~gateway.abc.UpstreamError` subclasses a relay would (connect failures and
        timeouts as the pool maps them), and what :func:`read_count` raises."""
        body = json.dumps(
            tokenize_body(request.body), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        headers = [
            *self._headers,
            *(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in request.headers.items()
            ),
        ]
        if "x-request-id" not in request.headers:
            headers.append((b"x-request-id", request.request_id.encode("latin-1")))
        with trio.move_on_after(self._timeout):
            async with self._pool.open_response(b"POST", TOKENIZE_PATH, headers, body) as response:
                answer = await self._read(response)
            return read_count(response.status, answer, self._id)
        raise UpstreamTimeout(
            f"backend {self._id}: {TOKENIZE_PATH} did not answer within {self._timeout:g} s"
        )

    async def _read(self, response: Response) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in response.body:
            size += len(chunk)
            if size > self._max_bytes:
                raise UpstreamProtocolError(
                    f"backend {self._id}: the {TOKENIZE_PATH} answer is larger than "
                    f"max_response_bytes ({self._max_bytes})"
                )
            parts.append(chunk)
        return b"".join(parts)


@asynccontextmanager
async def open_token_counter(
    backend_id: str, settings: VLLMSettings
) -> AsyncIterator[TokenCounter]:
    """A :class:`TokenCounter` for the server at ``settings.url``, its pool closed on exit."""
    pool = ConnectionPool(
        settings.url,
        name=f"backend {backend_id}",
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_keepalive_connections,
        connect_timeout=settings.timeouts.connect,
        ssl_context=httpx.create_ssl_context() if settings.url.startswith("https:") else None,
    )
    try:
        yield TokenCounter(backend_id, settings, pool)
    finally:
        pool.close()
