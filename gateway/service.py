"""The running gateway: its config, its backends (with their resources held), its routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from .abc import Backend
from .config import GatewayConfig
from .errors import ConfigError
from .inflight import InFlightTable
from .registry import Registry, load_registry
from .routing import Router

log = logging.getLogger("gateway")


@dataclass(eq=False)
class Gateway:
    config: GatewayConfig
    backends: Mapping[str, Backend]
    router: Router
    inflight: InFlightTable = field(default_factory=InFlightTable)
    draining: bool = False


def build_backends(config: GatewayConfig, registry: Registry) -> dict[str, Backend]:
    backends: dict[str, Backend] = {}
    for backend_id, settings in config.backends.items():
        backend_type = registry.get(settings.type)
        if backend_type is None:  # build_config checked this; a registry swap could not
            raise ConfigError(f"backends.{backend_id}.type: unknown type {settings.type!r}")
        backends[backend_id] = backend_type.cls(backend_id, settings)
    return backends


@asynccontextmanager
async def open_gateway(
    config: GatewayConfig, registry: Registry | None = None
) -> AsyncIterator[Gateway]:
    """Start every backend (pools, processes, models) and stop them all on exit."""
    registry = registry if registry is not None else load_registry()
    backends = build_backends(config, registry)
    async with AsyncExitStack() as stack:
        for backend in backends.values():
            await stack.enter_async_context(backend.running())
            log.info("backend %s (%s) ready", backend.id, backend.settings.type)
        yield Gateway(config, backends, Router(config.routes))
