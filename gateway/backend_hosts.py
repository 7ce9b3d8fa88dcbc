"""Each backend's resources (pools, processes, models) held by a task of its own.

A backend holds its resources inside :meth:`~gateway.abc.Backend.running`, a context that
must be entered and left by one task. :class:`BackendHosts` gives every backend such a
task in one nursery, so that a config reload can start a new backend, or stop one that
left the config, while the others serve on. Stopping is orderly: the host leaves the
context on its own (no cancellation reaches the backend's clean-up), and
:meth:`BackendHosts.stop` returns once it has.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .abc import Backend
from .errors import ConfigError

log = logging.getLogger("gateway")


class BackendStartError(Exception):
    """A backend's ``running()`` raised, unexpectedly, before it was entered (a
    :class:`~gateway.errors.ConfigError` goes out as itself); the message names the backend,
    and the traceback is logged."""


class _Host:
    __slots__ = ("backend", "stop", "stopped")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.stop = trio.Event()
        self.stopped = trio.Event()


class BackendHosts:
    """The running backends; open with :func:`open_backend_hosts`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._hosts: dict[Backend, _Host] = {}

    async def start(self, backend: Backend) -> None:
        """Enter ``backend.running()`` in a task of its own; returns once it is entered
        (raises what entering raised)."""
        host = _Host(backend)
        await self._nursery.start(self._hold, host)
        self._hosts[backend] = host
        log.info("backend %s (%s) started", backend.id, backend.settings.type)

    async def _hold(self, host: _Host, task_status: trio.TaskStatus[None]) -> None:
        started = False
        try:
            async with host.backend.running():
                task_status.started()
                started = True
                await host.stop.wait()
        except ConfigError:
            raise  # (a missing binary or model: said in one line, without a traceback)
        except Exception as error:
            backend = host.backend
            if not started:
                what = f"backend {backend.id} ({backend.settings.type}) failed to start"
                log.exception(what)
                raise BackendStartError(f"{what}: {type(error).__name__}: {error}") from None
            if not host.stop.is_set():
                raise  # failing while serving: as when the gateway held it
            # Failing on the way out (a reload stopping it) must not end the gateway.
            log.exception("backend %s failed while stopping", host.backend.id)
        finally:
            host.stopped.set()

    async def stop(self, backend: Backend) -> None:
        """Leave ``backend.running()``; returns once its resources are released."""
        host = self._hosts.pop(backend, None)
        if host is None:
            return
        host.stop.set()
        await host.stopped.wait()
        log.info("backend %s (%s) stopped", backend.id, backend.settings.type)

    async def stop_all(self) -> None:
        """Stop every backend, all at once."""
        async with trio.open_nursery() as nursery:
            for backend in list(self._hosts):
                nursery.start_soon(self.stop, backend)


@asynccontextmanager
async def open_backend_hosts() -> AsyncIterator[BackendHosts]:
    """Hosts whose backends are all stopped on the way out. What the body raises comes out
    as itself, not in the exception group of one that the hosts' nursery makes of it (a
    backend that fails to start raises its :class:`~gateway.errors.ConfigError`)."""
    single: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            hosts = BackendHosts(nursery)
            try:
                yield hosts
            finally:  # as an exit stack would: in order when not cancelled, cancelled if so
                await hosts.stop_all()
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
            raise
        single = group.exceptions[0]
    if single is not None:
        raise single  # outside the handler: its own cause and context, not the group's
