"""A backend's slots: a concurrency limit with a bounded FIFO queue in front of it (the
backend's ``[backends.NAME.admission]`` settings). A team's admission — keys and limits —
is :class:`gateway.teams.TeamAdmission`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from .abc import AdmissionSettings
from .errors import Overloaded


class Slots(Protocol):
    """A backend's slots as requests and the balancer see them: these, in one process, or
    :class:`gateway.worker_link.SharedSlots`, the machine's in the parent's keeping."""

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    def hold(
        self, on_wait: Callable[[], None] | None = None
    ) -> AbstractAsyncContextManager[None]: ...


class BackendSlots:
    """At most ``max_concurrency`` requests hold a slot; up to ``max_queue`` more wait in
    arrival order. trio's semaphore hands a released slot straight to the longest waiter,
    so nobody barges. A waiter that is cancelled (its client went away) leaves the queue at
    once and never reaches the upstream."""

    __slots__ = ("_settings", "_slots", "backend_id", "in_flight", "queued")

    def __init__(self, backend_id: str, settings: AdmissionSettings) -> None:
        self.backend_id = backend_id
        self._settings = settings
        limit = settings.max_concurrency
        self._slots = trio.Semaphore(limit) if limit is not None else None
        self.in_flight = 0
        self.queued = 0

    def _refuse(self, why: str) -> Overloaded:
        s = self._settings
        return Overloaded(
            f"backend {self.backend_id} is busy: {why}",
            retry_after=1.0,
            status=s.queue_full_status,
        )

    def hold(self, on_wait: Callable[[], None] | None = None) -> _Hold:
        """Hold a slot for the body of the ``async with``. Raises :class:`Overloaded` when
        the queue is full or the wait exceeds ``queue_timeout``. ``on_wait`` is called once
        if the request has to queue."""
        return _Hold(self, on_wait)

    async def _acquire(self, on_wait: Callable[[], None] | None) -> None:
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                if self.queued >= self._settings.max_queue:
                    raise self._refuse(f"{self.queued} request(s) already queued") from None
                if on_wait is not None:
                    on_wait()
                self.queued += 1
                try:
                    timeout = self._settings.queue_timeout
                    with trio.fail_after(timeout if timeout is not None else float("inf")):
                        await slots.acquire()
                except trio.TooSlowError:
                    raise self._refuse(f"no slot within {timeout:g} s") from None
                finally:
                    self.queued -= 1
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1
        if self._slots is not None:
            self._slots.release()


class _Hold:
    """:meth:`BackendSlots.hold`'s context manager. A class rather than an
    ``@asynccontextmanager``: one is held for a whole response (minutes for a stream in a
    long prefill), and a generator-based one also keeps a suspended generator frame, an
    instance dict and trio's weak reference to the generator (≈ 0.5 KiB per open stream,
    measured with tracemalloc)."""

    __slots__ = ("_on_wait", "_slots")

    def __init__(self, slots: BackendSlots, on_wait: Callable[[], None] | None) -> None:
        self._slots = slots
        self._on_wait = on_wait

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._on_wait)

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots._release()
