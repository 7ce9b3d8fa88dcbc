"""Backend ``openai``: any OpenAI-compatible HTTP upstream.

One pooled :class:`httpx.AsyncClient` per backend. Only the ``connect`` timer is given to
httpx; reads have no httpx timeout at all (its 5 s default would kill every long prefill),
because the relay measures ``first_byte``/``idle``/``total`` on the body bytes itself.
The client's ``Authorization`` is never forwarded: the upstream gets this backend's own
``api_key``, or nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Literal, cast

import httpx
import trio
from pydantic import Field, SecretStr, field_validator

from gateway.abc import (
    Backend,
    BackendSettings,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
    UpstreamTimeout,
    http_base_url,
)

# How long closing a cancelled upstream response may take before it is abandoned.
_CLOSE_GRACE = 2.0
# Error bodies larger than this are cut; they are only shown as a message.
_MAX_ERROR_BODY = 64 * 1024


class OpenAISettings(BackendSettings):
    type: Literal["openai"] = "openai"
    url: str = Field(description="base URL of the API, e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = None
    max_connections: int = Field(1000, gt=0)
    max_keepalive_connections: int = Field(100, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_base_url(value)


class OpenAIBackend(Backend):
    """Relays to an OpenAI-compatible server (``/chat/completions``, ``/completions``,
    ``/embeddings`` under ``url``)."""

    Settings = OpenAISettings
    settings: OpenAISettings

    def __init__(self, id: str, settings: BackendSettings) -> None:
        assert isinstance(settings, OpenAISettings)
        super().__init__(id, settings)
        self._client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        s = self.settings
        timeout = httpx.Timeout(connect=s.timeouts.connect, read=None, write=None, pool=None)
        limits = httpx.Limits(
            max_connections=s.max_connections,
            max_keepalive_connections=s.max_keepalive_connections,
        )
        async with httpx.AsyncClient(
            base_url=s.url + "/", timeout=timeout, limits=limits, trust_env=False
        ) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    def pool_connections(self) -> tuple[int, int]:
        """(open, idle) connections in the pool — diagnostics for tests and metrics."""
        if self._client is None:
            return (0, 0)
        pool = self._client._transport._pool  # type: ignore[attr-defined]
        conns = list(pool.connections)
        return len(conns), sum(1 for c in conns if c.is_idle())

    def _headers(self, request: UpstreamRequest) -> dict[str, str]:
        headers = {"accept-encoding": "identity", "x-request-id": request.request_id}
        headers.update(request.headers)
        if request.stream:
            headers["accept"] = "text/event-stream"
        if self.settings.api_key is not None:
            headers["authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        return headers

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        if self._client is None:
            raise RuntimeError(f"backend {self.id} is not running")
        http_request = self._client.build_request(
            "POST", request.endpoint, json=request.body, headers=self._headers(request)
        )
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise _map_error(exc, self.id) from exc
        body = self._body(response)
        try:
            if response.status_code >= 300:
                error_body = await _read_capped(response)
                raise UpstreamStatusError.from_body(response.status_code, error_body)
            yield UpstreamResponse(
                status=response.status_code,
                content_type=response.headers.get("content-type", ""),
                body=body,
            )
        finally:
            # Shielded: a cancelled request must still hand its connection back (or close
            # it), or the pool leaks one connection per disconnecting client.
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
                await body.aclose()
                await response.aclose()

    async def _body(self, response: httpx.Response) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks:
                async for chunk in chunks:
                    yield chunk
        except httpx.HTTPError as exc:
            raise _map_error(exc, self.id) from exc


async def _read_capped(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_raw())) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= _MAX_ERROR_BODY:
                    break
    except httpx.HTTPError:
        pass  # the status is what matters; a broken error body still reports it
    return b"".join(parts)[:_MAX_ERROR_BODY]


def _map_error(exc: httpx.HTTPError, backend_id: str) -> UpstreamError:
    where = f"backend {backend_id}"
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"{where}: connect timed out")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{where}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(f"{where}: cannot connect: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamProtocolError(f"{where}: upstream broke the HTTP exchange: {exc}")
    return UpstreamProtocolError(f"{where}: upstream connection lost: {exc}")
