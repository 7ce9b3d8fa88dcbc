"""Serve a real gateway on a free loopback port inside a test.

The gateway is the production one — config validation, admission, relay, heartbeats,
hypercorn — only bound to ``127.0.0.1:0`` and stopped by cancellation when the block
exits. Plugin authors use it for end-to-end tests of their backend::

    async with open_test_gateway(config, backends={"mine": MyBackend}) as served:
        async with served.client() as client:
            resp = await client.post("/v1/chat/completions", json=...)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import trio

from ..abc import Backend
from ..config import build_config
from ..registry import BackendType, Registry, load_registry
from ..server import serve
from ..service import Gateway, open_gateway

__all__ = ["ServedGateway", "open_test_gateway", "registry_of", "unused_port"]


@dataclass(frozen=True, slots=True)
class ServedGateway:
    """A gateway serving on ``url`` (``http://127.0.0.1:PORT``)."""

    url: str
    gateway: Gateway

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client for this gateway; the caller closes it (``async with``)."""
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.AsyncClient(base_url=self.url, **kwargs)


def registry_of(backends: Mapping[str, type[Backend]]) -> Registry:
    """A registry of exactly ``backends`` (type name → class), installed or not."""
    return Registry({name: BackendType(name, cls, "(test)", "0") for name, cls in backends.items()})


@asynccontextmanager
async def open_test_gateway(
    config: Mapping[str, Any], *, backends: Mapping[str, type[Backend]] | None = None
) -> AsyncIterator[ServedGateway]:
    """Serve ``config`` (a parsed ``gateway.toml`` as a dict) until the block exits.

    ``server.bind`` defaults to ``127.0.0.1:0``. ``backends`` names the backend types the
    config may use (type name → class), so a backend can be tested before it is installed;
    without it, the installed entry points are loaded. Raises
    :class:`~gateway.errors.ConfigError` for a bad config. On exit every in-flight request is
    cancelled (no graceful drain) and the backends are stopped.
    """
    registry = registry_of(backends) if backends is not None else load_registry()
    raw = dict(config)
    raw["server"] = {"bind": "127.0.0.1:0", **dict(raw.get("server") or {})}
    gateway_config = build_config(raw, registry=registry)
    async with open_gateway(gateway_config, registry) as gateway, trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, gateway, shutdown=trio.Event()))
        try:
            yield ServedGateway(binds[0], gateway)
        finally:
            nursery.cancel_scope.cancel()


def unused_port() -> int:
    """A loopback TCP port nobody listens on (bound, read and closed): connecting to it is
    refused, which is how a test makes an upstream unreachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
