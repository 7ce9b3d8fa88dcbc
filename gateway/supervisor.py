"""The parent process of ``[server] workers`` above 1.

It opens the listening sockets and passes them to N worker processes (``gateway worker``,
:mod:`gateway.worker`), which take turns accepting (:mod:`gateway.accept_share`); keeps what the
workers share (:class:`~gateway.machine.Machine`: limits, slots, queues); runs the
backends that must exist once per machine (placement ``"parent"``: a managed llama-server)
and tells the workers where they are; and supervises:

- A worker that dies is started again after a back-off (:data:`RESTART_DELAY`, doubling
  up to :data:`RESTART_DELAY_MAX`, back to the start once one has run
  :data:`STABLE_AFTER` seconds), logged and counted (``trio_gateway_worker_restarts_total``).
  One that dies before it ever served ends the gateway: that is a start-up error (its log
  says which), and restarting it would only repeat it.
- SIGTERM or SIGINT: the parent closes its copy of the listening sockets and forwards
  SIGTERM; each worker fails readiness, serves ``shutdown_delay`` more seconds, drains
  within ``graceful_timeout`` and exits. A worker still running well after that is
  killed, then the parent's backends stop: no process is left behind. A worker being
  spawned as the stop comes is sent SIGTERM as soon as its process is known.
- A second SIGTERM or SIGINT during the drain is forwarded as well: each worker then stops
  at once, ending what it still serves (as a second Ctrl-C ends a single-process
  ``gateway serve``), and the parent stops as after any drain. Whatever signals come, a
  stopping parent ends the same way: backends stopped, pid file removed, exit status 0.
- SIGHUP: the parent checks the file as a worker would load it (:meth:`_Parent.accept`):
  a bad one is refused there — logged, counted, and no worker is signalled. A good one
  becomes the workers' copy (:class:`_ConfigCopy`: the workers read the config from a
  private copy of the file as last accepted, so every worker of a reload reads the same
  bytes and one started again after it died runs what its siblings run, not the file as
  edited since) and every worker reloads it. The signal goes at once to each worker that
  said it is ready; one still starting may have read the copy before the change, so it
  gets the signal once it is ready (until its handler is in place SIGHUP would kill it: a
  worker ignores SIGHUP from its first line, :data:`_WORKER_MAIN`). During the drain
  SIGHUP is ignored. The backends the parent runs are kept as they started (a change to
  them takes a restart; a reload adding one is refused).

Workers run in sessions of their own, so a terminal's Ctrl-C reaches the parent only, and
each one shuts down by itself if the parent is gone (its line to the parent closes).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hypercorn.utils import repr_socket_addr
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .abc import Backend
from .accept_share import create_shares
from .backend_hosts import open_backend_hosts
from .config import GatewayConfig, parse_config, read_config_bytes
from .connections import bind_sockets
from .control import Channel
from .errors import ConfigError
from .machine import Machine
from .pidfile import hold_pid_file, pid_path
from .registry import Registry
from .server import hypercorn_config
from .service import build_backend
from .telemetry import config_reloads_counter
from .worker import reach_parent_backends

__all__ = ["WorkerFailed", "check_placements", "supervise"]

log = logging.getLogger("gateway.workers")

RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0
# Past the drain (shutdown_delay + graceful_timeout), how long a worker may take to exit.
_EXIT_GRACE = 15.0
# ``python -m gateway``, with SIGHUP ignored before the gateway is imported: the worker's
# reload handler comes only once its gateway is open, and until then the default action
# would kill it — a worker that dies before it served ends the gateway. SIG_IGN outlives
# the handler, too, so a SIGHUP after the drain began does not kill the worker either.
_WORKER_MAIN = (
    "import runpy, signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "runpy.run_module('gateway', run_name='__main__', alter_sys=True)"
)


class WorkerFailed(Exception):
    """The workers cannot start: one exited before it ever served, or what they need
    cannot be made."""


def check_placements(config: GatewayConfig, registry: Registry, workers: int) -> None:
    """Refuse backends that cannot run under ``workers`` processes (placement
    ``"single"``, or ``"parent"`` from a class that cannot tell the workers where it runs),
    with what to do instead."""
    if workers <= 1:
        return
    for id, settings, cls in registry.placed(config.backends, "parent"):
        missing = [
            f"{name}()"
            for name in ("address", "reached_at")
            if inspect.getattr_static(cls, name) is inspect.getattr_static(Backend, name)
        ]
        if missing:
            raise ConfigError(
                f"backends.{id}: backend type {settings.type!r} "
                f'({cls.__module__}.{cls.__qualname__}) has placement "parent" but does not '
                f"implement {' or '.join(missing)}, which tell the workers where it runs: "
                'implement them, or return "worker" from placement() to run it in each worker'
            )
    for id, settings, _ in registry.placed(config.backends, "single"):
        raise ConfigError(
            f"backends.{id}: a {settings.type} backend holds its model in the gateway's "
            f"own process and cannot be shared by {workers} workers; set "
            "[server] workers = 1, or serve the model with a llama.cpp backend "
            '(`type = "llamacpp"` with `model`: one llama-server for every worker)'
        )


@dataclass
class _Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.restarts = Counter(
            "trio_gateway_worker_restarts",
            "Worker processes started again after they died.",
            registry=self.registry,
        )
        self.running = Gauge(
            "trio_gateway_workers", "Worker processes running.", registry=self.registry
        )
        self.reloads = config_reloads_counter(self.registry)


class _ConfigCopy:
    """The config file the workers read: ``source`` as the parent last accepted it
    (:attr:`path`) and as the gateway started with it (:attr:`started`: its sections that
    need a restart hold until one), copied into a directory of its own (readable by this
    user only). Raises :class:`WorkerFailed` when no such directory can be made."""

    def __init__(self, source: Path) -> None:
        self.source = source
        try:
            self._directory = Path(tempfile.mkdtemp(prefix="trio-gateway-config-"))
        except OSError as error:
            raise WorkerFailed(
                f"cannot keep the workers' copy of the config in {tempfile.gettempdir()}: "
                f"{error.strerror or error} (set TMPDIR to a writable directory)"
            ) from None
        self.path = self._directory / source.name
        self.started = self._directory / f"started-{source.name}"

    def start(self, data: bytes) -> None:
        """The file the gateway starts with."""
        self.started.write_bytes(data)
        self.put(data)

    def put(self, data: bytes) -> None:
        """Make ``data`` the copy: a worker that opens it reads the old or the new, whole."""
        staged = self.path.with_name(f".{self.path.name}.new")
        staged.write_bytes(data)
        os.replace(staged, self.path)

    def remove(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


@dataclass
class _Parent:
    config: GatewayConfig
    copy: _ConfigCopy
    registry: Registry
    listeners: list[socket.socket]
    shares_fd: int
    workers: int
    addresses: dict[str, str]
    log_args: list[str]
    machine: Machine
    metrics: _Metrics
    stopping: trio.Event = field(default_factory=trio.Event)
    all_served: trio.Event = field(default_factory=trio.Event)
    processes: dict[int, trio.Process] = field(default_factory=dict)
    served: set[int] = field(default_factory=set)  # workers that were ever ready
    ready: set[int] = field(default_factory=set)  # workers whose running process is ready
    # Workers that were not ready at a SIGHUP: each reloads once it is.
    reload_due: set[int] = field(default_factory=set)
    spawning: int = 0  # worker processes being spawned, with the listeners passed to them
    listeners_closed: bool = False

    @property
    def listen_fds(self) -> list[int]:
        return [sock.fileno() for sock in self.listeners]

    def close_listeners(self) -> None:
        """Close the parent's listening sockets (the workers' copies serve until their
        drain) — once no worker is being spawned: a spawn passes them to its child, whose
        exec would fail on a descriptor closed meanwhile."""
        self.listeners_closed = True
        if not self.spawning:
            for sock in self.listeners:
                sock.close()

    def argv(self, worker: int, control_fd: int) -> list[str]:
        argv = [sys.executable, "-c", _WORKER_MAIN, "worker", "--config", str(self.copy.path)]
        argv += ["--start-config", str(self.copy.started)]
        argv += ["--id", str(worker), "--control-fd", str(control_fd), *self.log_args]
        argv += ["--shares-fd", str(self.shares_fd), "--workers", str(self.workers)]
        for fd in self.listen_fds:
            argv += ["--listen-fd", str(fd)]
        for id, address in self.addresses.items():
            argv += ["--parent-backend", f"{id}={address}"]
        return argv

    async def keep(self, worker: int) -> None:
        """Run worker ``worker``, and again each time it dies, until the gateway stops."""
        delay = RESTART_DELAY
        while not self.stopping.is_set():
            began = trio.current_time()
            code = await self.run_once(worker)
            if self.stopping.is_set():
                return
            if worker not in self.served:
                raise WorkerFailed(f"worker {worker} exited ({_describe(code)}) before it served")
            self.metrics.restarts.inc()
            if trio.current_time() - began >= STABLE_AFTER:
                delay = RESTART_DELAY
            log.error(
                "worker %d exited (%s); starting it again in %g s", worker, _describe(code), delay
            )
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, RESTART_DELAY_MAX)

    def worker_ready(self, worker: int) -> None:
        """Worker ``worker``'s process serves, and reloads on SIGHUP from now on."""
        if self.stopping.is_set():
            return  # started as the gateway stopped: it is not serving for long
        self.served.add(worker)
        self.ready.add(worker)
        log.info("worker %d ready", worker)
        if worker in self.reload_due:
            self.reload_due.remove(worker)
            log.info("worker %d reloads the config: a SIGHUP came while it started", worker)
            self.processes[worker].send_signal(signal.SIGHUP)
        if len(self.served) == self.workers:
            self.all_served.set()

    def checked_file(self) -> bytes:
        """The config file, checked as a worker loads it (in this process's environment,
        which the workers inherit). Raises :class:`ConfigError`."""
        source = self.copy.source
        data = read_config_bytes(source)
        config, _ = parse_config(data, source, registry=self.registry)
        check_placements(config, self.registry, self.workers)
        reach_parent_backends(config, self.registry, self.addresses)
        return data

    def accept(self) -> bool:
        """Make the config file the workers' copy if it passes the checks; else log and
        count the refusal. Returns whether it was accepted."""
        refused = "received SIGHUP; config reload refused, the running config is kept"
        try:
            data = self.checked_file()
        except ConfigError as error:
            log.error("%s: %s", refused, error.message)
        except Exception:  # a reload never takes the parent down
            log.exception(refused)
        else:
            self.copy.put(data)
            return True
        self.metrics.reloads.labels("rejected").inc()
        return False

    def reload(self) -> None:
        """Have every worker reload the config, if it passes the parent's checks: those
        ready at once, the others once they say they are (the copy they read may be older
        than the signal)."""
        if not self.accept():
            return
        log.info("received SIGHUP; every worker reloads the config")
        for worker in range(self.workers):
            if worker in self.ready:
                self.processes[worker].send_signal(signal.SIGHUP)
            else:
                self.reload_due.add(worker)

    async def run_once(self, worker: int) -> int:
        """Start worker ``worker``, serve its line, and return its exit status."""
        ours, theirs = socket.socketpair()
        self.reload_due.discard(worker)  # it reads the config as it starts
        with ours:
            self.spawning += 1
            try:
                process = await trio.lowlevel.open_process(
                    self.argv(worker, theirs.fileno()),
                    pass_fds=(*self.listen_fds, self.shares_fd, theirs.fileno()),
                    start_new_session=True,
                )
            finally:
                theirs.close()
                self.spawning -= 1
                if self.listeners_closed:  # a stop came while it was spawned
                    self.close_listeners()
            self.processes[worker] = process
            self.metrics.running.inc()
            log.info("worker %d started (pid %d)", worker, process.pid)
            if self.stopping.is_set():
                # The stop came while it was being spawned, before signal_all could see it.
                log.info("worker %d: the gateway is stopping; sending it SIGTERM", worker)
                process.send_signal(signal.SIGTERM)
            channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.machine.serve, worker, channel)
                    nursery.start_soon(self._kill_late, process)
                    code = await process.wait()
                    nursery.cancel_scope.cancel()
                return code
            finally:
                self.metrics.running.dec()
                self.ready.discard(worker)
                del self.processes[worker]
                if process.returncode is None:  # the parent is failing: leave no orphan
                    process.kill()

    async def _kill_late(self, process: trio.Process) -> None:
        """Kill ``process`` if it still runs well after the drain should have ended."""
        await self.stopping.wait()
        server = self.config.server
        await trio.sleep(server.shutdown_delay + server.graceful_timeout + _EXIT_GRACE)
        log.error("worker pid %d did not exit after the drain; killing it", process.pid)
        process.kill()

    def signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"


async def supervise(
    config: GatewayConfig,
    config_path: Path,
    *,
    registry: Registry,
    workers: int,
    bind: str | None = None,
    log_args: list[str] | None = None,
    on_serving: Callable[[list[str]], None] | None = None,
) -> None:
    """Run ``workers`` worker processes on ``config`` until SIGTERM or SIGINT, as the
    module says; ``on_serving`` gets the bound addresses once every worker is ready.

    Raises :class:`~gateway.errors.ConfigError` for backends that cannot run under
    ``workers`` (:func:`check_placements`), :class:`~gateway.connections.CannotListen`,
    :class:`~gateway.pidfile.PidFileError`, and :class:`WorkerFailed`."""
    check_placements(config, registry, workers)
    hconfig = hypercorn_config(bind or config.server.bind, config.server)
    sockets = bind_sockets(hconfig)
    binds = []
    for sock in sockets:
        sock.listen(hconfig.backlog)
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    metrics = _Metrics()
    machine = Machine(
        {"metrics": lambda: generate_latest(metrics.registry).decode()},
        lambda worker: parent.worker_ready(worker),
    )
    async with open_backend_hosts() as hosts:
        addresses = {}
        for id, settings, _ in registry.placed(config.backends, "parent"):
            backend = build_backend(id, settings, registry)
            await hosts.start(backend)
            addresses[id] = backend.address()
            log.info("backend %s runs once for every worker, at %s", id, addresses[id])
        shares_fd = create_shares(workers)
        parent = _Parent(
            config,
            _ConfigCopy(config_path),
            registry,
            sockets,
            shares_fd,
            workers,
            addresses,
            log_args or [],
            machine,
            metrics,
        )
        pid_file = pid_path(config.server.pid_file, config_path)
        # Signals are answered from before the pid file tells `gateway reload` where to
        # send one until the backends have stopped: a signal left to its default action
        # would end the parent with its pid file and backends left behind.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            try:
                # The workers read the file as it is now, checked; the CLI read it earlier.
                parent.copy.start(parent.checked_file())
                with hold_pid_file(pid_file):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_answer_signals, parent, signals)
                        await _run(parent, binds, on_serving)
                        await hosts.stop_all()
                        nursery.cancel_scope.cancel()
            finally:
                parent.copy.remove()
                os.close(shares_fd)
                for sock in sockets:
                    sock.close()
    log.info("stopped")


async def _run(
    parent: _Parent, binds: list[str], on_serving: Callable[[list[str]], None] | None
) -> None:
    """Keep every worker until the gateway stops and each one has exited."""

    async def report_serving() -> None:
        await parent.all_served.wait()
        log.info("%d workers serving", parent.workers)
        if on_serving is not None:
            on_serving(binds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parent.machine.broadcast_loads)
        nursery.start_soon(report_serving)
        async with trio.open_nursery() as keepers:
            for worker in range(parent.workers):
                keepers.start_soon(parent.keep, worker)
        nursery.cancel_scope.cancel()


async def _answer_signals(parent: _Parent, signals: AsyncIterator[int]) -> None:
    """Answer every signal until cancelled: the first SIGTERM or SIGINT starts the drain
    and a later one ends it at once; SIGHUP reloads, or is ignored once stopping."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if parent.stopping.is_set():
                log.info("received SIGHUP while stopping; ignored")
            else:
                parent.reload()
        elif not parent.stopping.is_set():
            log.info("received %s; every worker drains, then exits", name)
            parent.stopping.set()
            parent.close_listeners()  # the workers' copies serve until their drain
            parent.signal_all(signal.SIGTERM)
        elif parent.processes:
            # A worker takes a second stop signal as "now" (gateway.worker).
            log.warning("received %s while draining; every worker stops at once", name)
            parent.signal_all(signal.SIGTERM)
        else:
            log.info("received %s; stopping already", name)
