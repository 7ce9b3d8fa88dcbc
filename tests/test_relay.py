"""The relay driven directly through its ASGI ``send``: write failures and backend errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from backends.openai import OpenAIBackend, OpenAISettings
from gateway.abc import Backend, BackendSettings, UpstreamRequest, UpstreamResponse
from gateway.admission import BackendSlots
from gateway.balancer import Breaker
from gateway.errors import UpstreamTimeout
from gateway.exchange import Attempt, Exchange
from gateway.inflight import InFlightTable
from gateway.keepalive import KeepaliveSettings
from gateway.relay import relay
from gateway.service import Upstream
from gateway.testing.fake_openai import FakeOpenAI


def exchange(backend: Backend, body: dict, **keepalive) -> Exchange:
    stream = body.get("stream", False)
    upstream = Upstream(
        backend,
        BackendSlots(backend.id, backend.settings.admission),
        Breaker(backend.settings.ejection),
    )
    return Exchange(
        pick_attempts=lambda: [
            Attempt(upstream, UpstreamRequest("chat/completions", body, stream, "rid"))
        ],
        request_id="rid",
        stream=stream,
        route="r",
        keepalive=KeepaliveSettings(**keepalive),
        inflight=InFlightTable(),
    )


async def test_failed_heartbeat_write_cancels_upstream(fake: FakeOpenAI) -> None:
    backend = OpenAIBackend("b", OpenAISettings(type="openai", url=fake.url))
    messages: list[dict] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message["body"].startswith(b":"):
            raise OSError("connection reset by client")
        messages.append(message)

    ex = exchange(backend, {"model": "m", "stream": True, "fake": {"prefill": 30}}, interval=0.1)
    async with backend.running():
        with trio.fail_after(5):
            await relay(send, ex)  # returns: the failed heartbeat ended the exchange
        failed_at = trio.current_time()
        upstream = fake.connections[-1]
        with trio.fail_after(1):
            await upstream.closed_event.wait()
    assert upstream.closed_at is not None and upstream.closed_at - failed_at < 0.1
    assert [m["type"] for m in messages] == ["http.response.start"]
    assert len(ex.inflight) == 0


class GroupRaisingBackend(Backend):
    """Raises its error from inside a nursery, as a backend with helper tasks would."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        async def fail() -> None:
            raise UpstreamTimeout("model worker timed out")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        yield UpstreamResponse(200, "application/json", _empty())


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


async def test_error_group_from_backend_maps_to_its_error() -> None:
    backend = GroupRaisingBackend("g", BackendSettings(type="g"))
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    await relay(send, exchange(backend, {"model": "m"}, interval=0))
    assert messages[0]["status"] == 504
    body = json.loads(messages[1]["body"])
    assert body["error"] == {
        "message": "model worker timed out",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_timeout",
    }
