from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import GatewayConfig, build_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.testing.fake_openai import FakeOpenAI


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    shutdown: trio.Event

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.AsyncClient(base_url=self.url, **kwargs)


def gateway_config(
    upstream_url: str,
    *,
    keepalive: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    responses: dict[str, Any] | None = None,
) -> GatewayConfig:
    backend = {"type": "openai", "url": upstream_url, **(backend or {})}
    if timeouts:
        backend["timeouts"] = timeouts
    return build_config(
        {
            "server": {"bind": "127.0.0.1:0", **(server or {})},
            **({"responses": responses} if responses else {}),
            "backends": {"fake": backend},
            "routes": {
                "chat": {
                    "model": "m",
                    "aliases": ["m-alias"],
                    "match": ["m-*"],
                    "backend": "fake",
                    "upstream_model": "upstream-m",
                    "keepalive": {"interval": 1, **(keepalive or {})},
                    **(route or {}),
                }
            },
        }
    )


async def serve_config(nursery: trio.Nursery, config: GatewayConfig) -> RunningGateway:
    """Serve ``config`` in ``nursery`` until the test ends (or its ``shutdown`` is set);
    returns once the gateway listens."""
    shutdown = trio.Event()

    async def run(task_status: trio.TaskStatus[RunningGateway]) -> None:
        async with open_gateway(config) as gw:
            binds = await nursery.start(partial(serve, gw, shutdown=shutdown))
            task_status.started(RunningGateway(binds[0], gw, shutdown))
            await trio.sleep_forever()

    served: RunningGateway = await nursery.start(run)
    return served


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    upstream = FakeOpenAI()
    await nursery.start(upstream.serve)
    return upstream


@pytest.fixture
async def start_gateway(nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path) -> StartGateway:
    """Serve a gateway in front of ``fake`` on port 0; keyword args shape its config.
    Stored responses go to a file in the test's own directory."""

    async def start(**kwargs: Any) -> RunningGateway:
        kwargs.setdefault("responses", {"database": str(tmp_path / "responses.sqlite")})
        return await serve_config(nursery, gateway_config(fake.url, **kwargs))

    return start
