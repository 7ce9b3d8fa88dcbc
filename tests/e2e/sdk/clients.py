"""The Python SDK clients the SDK tests drive, sync and async."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import trio

try:  # the HTTP library the installed SDK is built on: openai 3 uses httpx2, older httpx
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover
    import httpx as sdk_http  # type: ignore[no-redef]

# openai's AsyncStream stops at [DONE] without closing its inner async generators
# (AsyncStream.__stream__ leaves _iter_events suspended), and anthropic's — the same
# generated code — leaves them so when an error event makes it raise mid-stream. asyncio
# finalizes them silently; trio finalizes them too, but warns, whenever the garbage
# collector gets to them (so a test failed on it only now and then). It happens against
# any server, the fake included. Test modules ignore exactly that warning: ``pytestmark =
# SDK_ASYNCGEN_WARNINGS``. (The gateway's own async generators are not matched: their
# leaks still fail.)
_CORE = sdk_http.__name__.replace("httpx", "httpcore")
SDK_ASYNCGEN_WARNINGS = pytest.mark.filterwarnings(
    rf"ignore:Async generator '(openai|anthropic|{sdk_http.__name__}|{_CORE})\.:ResourceWarning"
)


class _Tapped(sdk_http.SyncByteStream, sdk_http.AsyncByteStream):
    """A response body that copies every piece it hands on into ``sink``."""

    def __init__(self, inner: Any, sink: bytearray) -> None:
        self._inner = inner
        self._sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sink += chunk
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._sink += chunk
            yield chunk

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TapTransport(sdk_http.HTTPTransport):
    def __init__(self, sink: bytearray) -> None:
        super().__init__()
        self._sink = sink

    def handle_request(self, request: sdk_http.Request) -> sdk_http.Response:
        response = super().handle_request(request)
        return sdk_http.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tapped(response.stream, self._sink),
            extensions=response.extensions,
        )


class _AsyncTapTransport(sdk_http.AsyncHTTPTransport):
    def __init__(self, sink: bytearray) -> None:
        super().__init__()
        self._sink = sink

    async def handle_async_request(self, request: sdk_http.Request) -> sdk_http.Response:
        response = await super().handle_async_request(request)
        return sdk_http.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tapped(response.stream, self._sink),
            extensions=response.extensions,
        )


class SDK:
    """One awaitable surface over the sync and the async Python client: the sync client's
    calls, stream iteration included, run in a worker thread. ``max_retries=0`` so an
    error is the first failure as it happened. With ``tap``, the SDK's own default HTTP
    client gets a transport that also copies the raw response bytes into ``tap``."""

    def __init__(
        self, kind: str, base_url: str, *, tap: bytearray | None = None, **options: Any
    ) -> None:
        self.kind = kind
        options.setdefault("api_key", "sk-test")
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 30.0)  # a stuck worker thread cannot be cancelled
        if tap is not None and kind == "sync":
            options["http_client"] = openai.DefaultHttpxClient(transport=_TapTransport(tap))
        elif tap is not None:
            options["http_client"] = openai.DefaultAsyncHttpxClient(
                transport=_AsyncTapTransport(tap)
            )
        if kind == "sync":
            self.sync: openai.OpenAI | None = openai.OpenAI(base_url=base_url, **options)
            self.aio: openai.AsyncOpenAI | None = None
        else:
            self.sync = None
            self.aio = openai.AsyncOpenAI(base_url=base_url, **options)

    async def aclose(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.aio is not None:
            await self.aio.close()

    def _resource(self, client: openai.OpenAI | openai.AsyncOpenAI, call: str) -> Any:
        return client.chat.completions if call == "chat" else client.completions

    async def create(self, call: str, **params: Any) -> Any:
        """A non-stream ``create``."""
        if self.sync is not None:
            resource = self._resource(self.sync, call)
            return await trio.to_thread.run_sync(lambda: resource.create(**params))
        assert self.aio is not None
        return await self._resource(self.aio, call).create(**params)

    async def stream(self, call: str, into: list[Any], **params: Any) -> None:
        """A streamed ``create``, its chunks appended to ``into`` as the application gets
        them. ``into`` keeps what arrived before an error; a ``None`` entry marks the
        moment ``create`` returned (status and headers received)."""
        if self.sync is not None:
            resource = self._resource(self.sync, call)

            def work() -> None:
                chunks = resource.create(stream=True, **params)
                into.append(None)
                with chunks:
                    for chunk in chunks:
                        into.append(chunk)

            await trio.to_thread.run_sync(work)
            return
        assert self.aio is not None
        chunks = await self._resource(self.aio, call).create(stream=True, **params)
        into.append(None)
        async with chunks:
            async for chunk in chunks:
                into.append(chunk)

    async def models(self) -> list[str]:
        if self.sync is not None:
            client = self.sync
            return await trio.to_thread.run_sync(lambda: [m.id for m in client.models.list()])
        assert self.aio is not None
        return [m.id async for m in self.aio.models.list()]


def text_of(call: str, chunks: list[Any]) -> str:
    """The streamed text as an application reads it from the SDK's chunks."""
    parts = []
    for chunk in chunks:
        if chunk is None or not chunk.choices:
            continue
        choice = chunk.choices[0]
        parts.append((choice.delta.content if call == "chat" else choice.text) or "")
    return "".join(parts)
