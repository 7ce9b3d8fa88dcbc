"""One worker process of ``[server] workers`` (started by :mod:`gateway.supervisor`,
through the hidden ``gateway worker`` command).

It serves on the listening sockets its parent opened and passed down, with the team
limits and backend slots its parent keeps for the machine (:mod:`gateway.worker_link`);
the backends the parent runs once per machine (a managed llama-server) it reaches at the
addresses the parent passed. It drains and exits on SIGTERM or SIGINT (the parent
forwards them); a second one cuts what it still serves at once, then it closes its
backends as after a drain. It reloads on SIGHUP once it is ready (the parent starts it
with SIGHUP ignored until then), and shuts down by itself when the parent is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import trio

from .accept_share import ConnectionShares
from .config import GatewayConfig, read_config
from .control import Channel
from .errors import ConfigError
from .registry import Registry
from .reload import in_force
from .server import serve, tune_gc
from .service import open_gateway
from .status import streams_of
from .telemetry import PROCESS_FIELDS
from .worker_link import ParentLink

__all__ = ["reach_parent_backends", "run_worker"]

log = logging.getLogger("gateway.workers")


def reach_parent_backends(
    config: GatewayConfig, registry: Registry, addresses: Mapping[str, str]
) -> GatewayConfig:
    """``config`` with each backend the parent runs (placement ``"parent"``) reached at its
    address in ``addresses``. Raises :class:`ConfigError` for one the parent does not run
    (added by a reload: it would start once per worker)."""
    backends = dict(config.backends)
    for id, settings, cls in registry.placed(config.backends, "parent"):
        address = addresses.get(id)
        if address is None:
            raise ConfigError(
                f"backends.{id}: with several workers, a {settings.type} backend that runs "
                "its own server is started once, by the parent, at start-up; restart the "
                "gateway to add one"
            )
        backends[id] = cls.reached_at(settings, address)
    return dataclasses.replace(config, backends=backends)


async def run_worker(
    config_path: Path,
    *,
    worker: int,
    listen_fds: list[int],
    control_fd: int,
    shares_fd: int,
    workers: int,
    addresses: Mapping[str, str],
    registry: Registry,
    start_config: Path | None = None,
) -> None:
    """Serve as worker ``worker`` of ``workers`` until told to stop, or the parent is gone.
    ``start_config``: the file the gateway started with, when ``config_path`` (the config
    in force) came from a reload since — whose sections that need a restart did not apply."""
    PROCESS_FIELDS["worker"] = worker
    shares = ConnectionShares(shares_fd, worker, workers)
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    control = socket.socket(fileno=control_fd)
    link = ParentLink(Channel(trio.SocketStream(trio.socket.from_stdlib_socket(control))), worker)

    def adapt(config: GatewayConfig) -> GatewayConfig:
        return reach_parent_backends(config, registry, addresses)

    config, _ = read_config(config_path, registry=registry)
    if start_config is not None:  # a worker started again: as its siblings, it keeps the
        started, _ = read_config(start_config, registry=registry)  # restart-only sections
        config, _ = in_force(started, config)
    config = adapt(config)
    shutdown = trio.Event()
    serving_scope = trio.CancelScope()  # cancelled by a second stop signal
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        nursery.start_soon(_stop_on_signal, shutdown, serving_scope, link)
        async with open_gateway(config, registry, link) as gateway:
            gateway.adapt = adapt
            link.reporters["metrics"] = lambda: gateway.telemetry.scrape().decode()
            link.reporters["streams"] = lambda: streams_of(gateway)
            with serving_scope:
                async with trio.open_nursery() as serving:
                    await serving.start(
                        lambda task_status: serve(
                            gateway,
                            shutdown=shutdown,
                            config_path=config_path,
                            sockets=sockets,
                            shares=shares,
                            task_status=task_status,
                        )
                    )
                    tune_gc()
                    link.send({"op": "ready"})
        nursery.cancel_scope.cancel()


async def _stop_on_signal(
    shutdown: trio.Event, serving_scope: trio.CancelScope, link: ParentLink
) -> None:
    """Set ``shutdown`` on SIGTERM or SIGINT, or when the parent is gone; on a later
    SIGTERM or SIGINT cancel ``serving_scope``. Runs until cancelled (no signal is the
    default handler's to take: it would end the process without its clean-up)."""

    async def parent_gone() -> None:
        await link.lost.wait()
        if not shutdown.is_set():
            log.warning("the parent process is gone; shutting down")
            shutdown.set()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parent_gone)
            async for signum in signals:
                name = signal.Signals(signum).name
                if not shutdown.is_set():
                    log.info("received %s, shutting down", name)
                    shutdown.set()
                elif not serving_scope.cancel_called:
                    log.warning("received %s while shutting down; stopping at once", name)
                    serving_scope.cancel()
