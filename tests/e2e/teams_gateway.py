"""What the teams tests share: the team and admin keys, the chat request, the config of a
real gateway with teams (served on port 0 in front of the fake upstream), the ``start``
fixture that serves one (imported by the modules that use it) and the running gateway it
returns. Also imported by the Responses tests for their keys and config."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI

ALPHA, BETA, ADMIN = new_key(), new_key(), new_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()}


@dataclass
class Running:
    url: str
    gateway: Gateway
    shutdown: trio.Event
    stopped: trio.Event

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, timeout=30, headers=bearer(key) if key else None, **kwargs
        )

    async def settled(self) -> None:
        """Every relayed request finished, so its tokens and usage are counted."""
        with trio.fail_after(5):
            await self.gateway.inflight.wait_empty()

    async def stop(self) -> None:
        self.shutdown.set()
        with trio.fail_after(10):
            await self.stopped.wait()


def raw_config(fake_url: str, tmp_path: Path, teams: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"bind": "127.0.0.1:0"},
        "backends": {"fake": {"type": "openai", "url": fake_url}},
        "routes": {
            "chat": {
                "model": "m",
                "aliases": ["m-alias"],
                "backend": "fake",
                "upstream_model": "upstream-m",
                "keepalive": {"interval": 1},
            },
            "secret": {"model": "secret-model", "backend": "fake"},
        },
        "teams": teams,
        "auth": {"admin_keys": [hash_key(ADMIN)]},
        "usage": {"database": str(tmp_path / "usage.sqlite")},
    }


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path) -> Start:
    async def start(teams: dict[str, Any] | None = None, **limits: Any) -> Running:
        if teams is None:
            teams = {
                "alpha": {"keys": [hash_key(ALPHA)], "models": ["m"], "limits": limits},
                "beta": {"keys": [hash_key(BETA)]},
            }
        config = build_config(raw_config(fake.url, tmp_path, teams), environ={})
        shutdown, stopped = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Running]) -> None:
            try:
                async with open_gateway(config) as gw, trio.open_nursery() as inner:
                    binds = await inner.start(partial(serve, gw, shutdown=shutdown))
                    task_status.started(Running(binds[0], gw, shutdown, stopped))
            finally:
                stopped.set()

        return await nursery.start(run)

    return start
