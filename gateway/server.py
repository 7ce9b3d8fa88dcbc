"""Serving: hypercorn's trio worker, signals, and a graceful drain.

On SIGTERM or SIGINT the gateway fails readiness; after ``server.shutdown_delay`` seconds
(0 by default) in which it still serves, so that load balancers that poll readiness stop
sending first, it stops accepting connections. In-flight requests get
``server.graceful_timeout`` seconds to finish, then every one still running is ended with
an error event (or a 503 if its headers were not sent yet).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig

from .accept_share import ConnectionShares
from .app import create_app
from .config import GatewayConfig, ServerSettings, file_digest, parse_bind
from .connections import ConnectionTimers, serve_connections
from .errors import ShuttingDown
from .guard import BodyTimeouts, RequestGuard
from .pidfile import hold_pid_file, pid_path
from .reload import reload_config
from .service import Gateway, open_gateway

log = logging.getLogger("gateway.server")

# After the drain deadline, aborted relays need a moment to write their error events.
_ABORT_GRACE = 5.0


def hypercorn_config(bind: str, server: ServerSettings) -> HypercornConfig:
    """hypercorn's settings for the gateway's ``server`` ones, listening on ``bind``."""
    host, port = parse_bind(bind)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # The gateway drains streams itself; hypercorn must not cut them earlier.
    config.graceful_timeout = server.graceful_timeout + _ABORT_GRACE
    config.accesslog = None
    # Room for bursts of new connections (hypercorn's default backlog is 100).
    config.backlog = 2048
    # Connection timers are the gateway's own (gateway.connections), and hypercorn's
    # read_timeout stays off: it bounds every read, so it would cut a long answer to a
    # client that sends nothing while it listens.
    config.read_timeout = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # A larger WebSocket message closes its socket with 1009 (gateway.ws_stream).
    config.websocket_max_message_size = server.websocket_max_message_bytes
    return config


def connection_timers(server: ServerSettings) -> ConnectionTimers:
    """Idle keep-alive connections kept as long as common load balancers keep theirs
    (``keep_alive_timeout``, 75 s, above AWS ALB's 60 s, so the balancer closes first);
    a request head bounded on its own (``header_timeout``), from its first byte."""
    return ConnectionTimers(keep_alive=server.keep_alive_timeout, header=server.header_timeout)


async def drain(gateway: Gateway) -> None:
    """Fail readiness, give in-flight requests the grace period, then abort the rest."""
    gateway.drain_started.set()
    grace = gateway.config.server.graceful_timeout
    log.info("draining %d in-flight request(s), up to %g s", len(gateway.inflight), grace)
    with trio.move_on_after(grace):
        await gateway.inflight.wait_empty()
        return
    aborted = gateway.inflight.abort_all(ShuttingDown("the gateway shut down before this finished"))
    log.warning("grace period over: ended %d request(s) with an error", aborted)


GC_THRESHOLDS = (2_000, 10, 100)


def tune_gc() -> None:
    """Set the cyclic garbage collector for a server process that holds many long-lived
    streams; called once serving has begun (by ``gateway serve`` and each worker, not by
    :func:`serve`, which tests run in their own process).

    Under bench scenario 4 (1,000 idle streams, 1 s heartbeats) with CPython's defaults
    (700, 10, 10), a full collection ran every few seconds — the streams' objects, promoted
    young, kept tipping its 25 % rule — and each took 150 to 300 ms (measured with
    ``gc.callbacks``): the heartbeats due meanwhile were that late
    (p99 221 ms). Full collections only after 100 middle ones (not 10) and young ones
    every 2,000 surviving allocations (not 700) put it at 7.6 ms. Larger young
    generations (10,000 or 50,000) did as well for the idle streams but cost a live
    stream's inter-chunk p99 3 ms (bench scenario 2: +3.1 ms over direct, against -0.4
    here). What start-up made (modules, config, pools) is frozen out of every pass: it
    lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve_gateway(
    config: GatewayConfig,
    *,
    bind: str | None = None,
    shutdown: trio.Event | None = None,
    config_path: Path | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the backends, then :func:`serve` until shutdown; stop the backends after."""
    async with open_gateway(config) as gateway:
        await serve(
            gateway,
            bind=bind,
            shutdown=shutdown,
            config_path=config_path,
            task_status=task_status,
        )
    log.info("stopped")


async def serve(
    gateway: Gateway,
    *,
    bind: str | None = None,
    shutdown: trio.Event | None = None,
    config_path: Path | None = None,
    sockets: list[socket.socket] | None = None,
    shares: ConnectionShares | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``gateway`` until ``shutdown`` is set (or SIGTERM/SIGINT when it is ``None``),
    then drain. Reports the bound addresses (``http://host:port``) through ``task_status``.

    With ``config_path`` (the file ``gateway.config`` came from), SIGHUP reloads it
    (:mod:`gateway.reload`), and — unless this is a worker process, on ``sockets`` its
    parent listens on — the process's pid is written where ``gateway reload`` looks for
    it (:mod:`gateway.pidfile`), and the file held until the drain begins.

    Raises :class:`~gateway.connections.CannotListen` if the address cannot be bound, and
    :class:`~gateway.pidfile.PidFileError` if the pid file cannot be written.
    """
    config = gateway.config
    hconfig = hypercorn_config(bind or config.server.bind, config.server)
    timeouts = BodyTimeouts(idle=config.server.body_idle_timeout, total=config.server.body_timeout)
    app = RequestGuard(create_app(gateway), timeouts, gateway.telemetry)
    stop = trio.Event()

    async with trio.open_nursery() as nursery:

        async def wait_for_stop() -> None:
            if shutdown is not None:
                await shutdown.wait()
            else:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("received %s, shutting down", signal.Signals(signum).name)
                        break
            gateway.stopping = True  # readiness fails from now on
            delay = config.server.shutdown_delay
            if delay:
                log.info("not ready; serving %g s more before the drain", delay)
                await trio.sleep(delay)
            nursery.start_soon(drain, gateway)
            stop.set()

        nursery.start_soon(wait_for_stop)
        pid_file: Path | None = None
        reloading = trio.CancelScope()
        if config_path is not None:
            gateway.telemetry.on_config(file_digest(config_path))
            reloading = await nursery.start(_reload_on_sighup, gateway, config_path, nursery)
            if sockets is None:
                pid_file = pid_path(config.server.pid_file, config_path)
        binds = await nursery.start(
            partial(
                serve_connections,
                app,
                hconfig,
                connection_timers(config.server),
                shutdown_trigger=stop.wait,
                sockets=sockets,
                shares=shares,
            )
        )
        try:
            with hold_pid_file(pid_file) if pid_file is not None else contextlib.nullcontext():
                task_status.started(binds)
                await stop.wait()
        finally:
            reloading.cancel()  # no reload once shutdown began


async def _reload_on_sighup(
    gateway: Gateway,
    config_path: Path,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload the config on every SIGHUP, one reload at a time, until the scope it
    reports is cancelled."""
    with trio.CancelScope() as scope, trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started(scope)
        async for _ in signals:
            log.info("received SIGHUP, reloading %s", config_path)
            await reload_config(gateway, config_path, nursery)
