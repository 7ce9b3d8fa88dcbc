"""A gateway served from its config file as ``gateway serve`` runs it, for the config
reload tests (``tests/e2e/test_reload.py``, ``tests/backends/test_reload_llamacpp.py``).
The reload's signal is real: the test process sends itself SIGHUP, which the served
gateway's receiver takes."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, TypeVar

import httpx
import trio

from gateway.config import load_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.testing.waiting import wait_until


@dataclass
class Served:
    """A served gateway: its address, the gateway, and the config file it was started
    from (and reloads)."""

    url: str
    gateway: Gateway
    path: Path

    CLIENT_TIMEOUT: ClassVar[float] = 30  # seconds, for a client's every request
    CLIENT_TRUST_ENV: ClassVar[bool] = True  # httpx's default: proxies from the environment
    RELOAD_WITHIN: ClassVar[float] = 10  # seconds a reload may take to end

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else None
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=self.CLIENT_TIMEOUT,
            headers=headers,
            trust_env=self.CLIENT_TRUST_ENV,
        )

    def reloads(self, result: str = "ok") -> float:
        """How many reloads have ended with ``result`` so far."""
        metric = self.gateway.telemetry.config_reloads.labels(result)
        return float(metric._value.get())

    async def reload(self, text: str, *, result: str = "ok") -> None:
        """Write ``text`` as the config file, send SIGHUP, and wait for the reload to end
        with ``result``."""
        before = self.reloads(result)
        self.path.write_text(text)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: self.reloads(result) > before, within=self.RELOAD_WITHIN)


S = TypeVar("S", bound=Served)


def starter(
    nursery: trio.Nursery, tmp_path: Path, served: type[S]
) -> Callable[[str], Awaitable[S]]:
    """``start(text)``: write ``text`` as ``tmp_path``'s ``gateway.toml``, serve it inside
    ``nursery`` (stopped with it), and return it as a ``served``."""

    async def start(text: str) -> S:
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        config = load_config(path)

        async def run(task_status: trio.TaskStatus[S]) -> None:
            async with open_gateway(config) as gw:
                binds = await nursery.start(
                    partial(serve, gw, shutdown=trio.Event(), config_path=path)
                )
                task_status.started(served(binds[0], gw, path))
                await trio.sleep_forever()

        started: S = await nursery.start(run)
        return started

    return start
