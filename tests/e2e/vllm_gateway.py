"""The ``vllm`` backend through the real gateway, shared by its test modules: hypercorn on
port 0 in front of the protocol-faithful fake vLLM (:mod:`tests.fakes.vllm`), real sockets
both sides — its config, the running gateway, the ``fake`` and ``start_gateway`` fixtures
(imported by the modules that use them), what reads its answers, and the wait for a
backend status (also the vLLM probe tests')."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from backends.vllm import VLLMBackend
from gateway.abc import BackendStatus
from gateway.config import GatewayConfig, build_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.sse import SSEFramer
from tests.fakes.vllm import FakeVLLM

KEY = "sk-vllm-secret-4242"
WRONG_KEY = "sk-not-the-key-1717"
POLL = 0.2
HEARTBEAT = b": keepalive\n\n"
MESSAGES = [{"role": "user", "content": "Write one short line about trio."}]


def vllm_config(
    url: str, backend: dict[str, Any] | None = None, *, badkey: bool = False
) -> GatewayConfig:
    """Backend ``vllm`` and routes to it: ``chat`` (early headers, heartbeats every 0.5 s),
    ``chat-late`` (headers wait for vLLM, so its status is kept), ``chat-quiet`` (no
    heartbeats), ``missing`` and ``missing-early`` (a model vLLM does not serve); with
    ``badkey``, backend ``vllm-badkey`` (same server, wrong key) and route ``badkey``."""
    common = {"type": "vllm", "url": url, "poll_interval": POLL, "poll_timeout": 1.0}
    late = {"interval": 0.5, "early_headers": False}
    extra_backends, extra_routes = {}, {}
    if badkey:
        extra_backends = {"vllm-badkey": {**common, "api_key": WRONG_KEY}}
        extra_routes = {
            "badkey": {"backend": "vllm-badkey", "upstream_model": "fake-model", "keepalive": late}
        }
    return build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"vllm": {**common, "api_key": KEY, **(backend or {})}, **extra_backends},
            "routes": {
                "chat": {
                    "backend": "vllm",
                    "upstream_model": "fake-model",
                    "keepalive": {"interval": 0.5},
                },
                "chat-late": {"backend": "vllm", "upstream_model": "fake-model", "keepalive": late},
                "chat-quiet": {
                    "backend": "vllm",
                    "upstream_model": "fake-model",
                    "keepalive": {"interval": 0},
                },
                "missing": {
                    "backend": "vllm",
                    "upstream_model": "no-such-model",
                    "keepalive": late,
                },
                "missing-early": {
                    "backend": "vllm",
                    "upstream_model": "no-such-model",
                    "keepalive": {"interval": 0.5},
                },
                **extra_routes,
            },
        },
        environ={},
    )


@dataclass
class VLLMGateway:
    url: str
    gateway: Gateway

    @property
    def backend(self) -> VLLMBackend:
        return self.vllm("vllm")

    def vllm(self, id: str) -> VLLMBackend:
        backend = self.gateway.backends[id]
        assert isinstance(backend, VLLMBackend)
        return backend

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.AsyncClient(base_url=self.url, **kwargs)


StartGateway = Callable[..., Awaitable[VLLMGateway]]


async def serve_gateway(nursery: trio.Nursery, config: GatewayConfig) -> VLLMGateway:
    async def run(task_status: trio.TaskStatus[VLLMGateway]) -> None:
        async with open_gateway(config) as gateway, trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(VLLMGateway(binds[0], gateway))

    result: VLLMGateway = await nursery.start(run)
    return result


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeVLLM:
    server = FakeVLLM(api_key=KEY)
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def start_gateway(nursery: trio.Nursery, fake: FakeVLLM) -> StartGateway:
    """Serve a gateway in front of ``fake``; ``backend`` overrides the vllm backend's table.
    Started from the test body, so a test can set its clock first."""

    async def start(backend: dict[str, Any] | None = None, badkey: bool = False) -> VLLMGateway:
        return await serve_gateway(nursery, vllm_config(fake.url, backend, badkey=badkey))

    return start


def split_heartbeats(raw: bytes) -> tuple[bytes, int]:
    """The client's bytes without the gateway's heartbeats, and how many there were."""
    upstream, beats = bytearray(), 0
    for event in SSEFramer().feed(raw):
        if event.raw == HEARTBEAT:
            beats += 1
        else:
            upstream += event.raw
    return bytes(upstream), beats


def data_chunks(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(e.raw[len(b"data: ") :])
        for e in SSEFramer().feed(raw)
        if e.raw.startswith(b"data: {")
    ]


async def wait_status(
    backend: VLLMBackend, predicate: Callable[[BackendStatus], bool]
) -> BackendStatus:
    """The first status the poller publishes that satisfies ``predicate``."""
    status = backend.status
    with trio.fail_after(10):
        while not predicate(status):
            status = await backend.wait_status_change()
    return status
