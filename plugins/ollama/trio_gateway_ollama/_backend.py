"""The ollama backend: one pooled httpx client, requests translated on the way out, NDJSON
translated to SSE on the way back."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import cast

import httpx
import trio

from gateway.abc import (
    Backend,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
    UpstreamTimeout,
)

from ._settings import OllamaSettings
from ._translate import NativeRequest, NDJSONDecoder, StreamTranslator, to_ollama, whole_answer

# How long closing a cancelled upstream response may take before it is abandoned.
_CLOSE_GRACE = 2.0
# Bodies this large are not a chat answer or an error message: Ollama is confused.
_MAX_BODY = 16 * 1024 * 1024


class OllamaBackend(Backend[OllamaSettings]):
    """Chat completions through ``/api/chat``, text completions through ``/api/generate``.

    Only the ``connect`` timer is given to httpx; the gateway times the body. Leaving
    ``open_response`` — at the end, by an error or by cancellation — closes the upstream
    response (shielded, so a cancelled client still frees Ollama's slot at once).
    """

    Settings = OllamaSettings

    def __init__(self, id: str, settings: OllamaSettings) -> None:
        super().__init__(id, settings)
        self._client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        s = self.settings
        timeout = httpx.Timeout(connect=s.timeouts.connect, read=None, write=None, pool=None)
        limits = httpx.Limits(max_connections=s.max_connections)
        async with httpx.AsyncClient(
            base_url=s.url + "/", timeout=timeout, limits=limits, trust_env=False
        ) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        client = self._client
        if client is None:
            raise UpstreamConnectError(f"backend {self.id} is not running")
        native = to_ollama(
            request.endpoint,
            request.body,
            stream=request.stream,
            keep_alive=self.settings.keep_alive,
            num_ctx=self.settings.num_ctx,
        )
        http_request = client.build_request(
            "POST",
            native.path,
            json=native.body,
            headers={**request.headers, "accept-encoding": "identity"},
        )
        try:
            response = await client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise self._map_error(exc) from exc
        model = request.body.get("model")
        body = self._body(response, request, native, model if isinstance(model, str) else "")
        try:
            if response.status_code >= 300:
                error_body = await self._read(response)
                raise UpstreamStatusError.from_body(response.status_code, error_body)
            content_type = "text/event-stream" if request.stream else "application/json"
            yield UpstreamResponse(response.status_code, content_type, body)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
                await body.aclose()
                await response.aclose()

    async def _body(
        self, response: httpx.Response, request: UpstreamRequest, native: NativeRequest, model: str
    ) -> AsyncGenerator[bytes, None]:
        answer_id = ("chatcmpl-" if request.endpoint == "chat/completions" else "cmpl-") + (
            secrets.token_hex(12)
        )
        created = int(time.time())
        if not request.stream:
            body = await self._read(response)
            yield whole_answer(request.endpoint, body, id=answer_id, created=created)
            return
        decoder = NDJSONDecoder()
        translator = StreamTranslator(
            request.endpoint, answer_id, model, created, native.include_usage
        )
        try:
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            async with aclosing(chunks):
                async for chunk in chunks:
                    out = b"".join(translator.event(doc) for doc in decoder.feed(chunk))
                    if out:
                        yield out
        except httpx.HTTPError as exc:
            raise self._map_error(exc) from exc
        decoder.close()
        if not translator.finished:
            raise UpstreamProtocolError("ollama's stream ended before its last object")

    async def _read(self, response: httpx.Response) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                parts.append(chunk)
                size += len(chunk)
                if size > _MAX_BODY:
                    raise UpstreamProtocolError(f"ollama's answer exceeds {_MAX_BODY} bytes")
        except httpx.HTTPError as exc:
            raise self._map_error(exc) from exc
        return b"".join(parts)

    def _map_error(self, exc: httpx.HTTPError) -> UpstreamError:
        where = f"backend {self.id}"
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{where}: {type(exc).__name__}")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamConnectError(f"{where}: cannot connect to ollama: {exc}")
        return UpstreamProtocolError(f"{where}: ollama broke the HTTP exchange: {exc!r}")
