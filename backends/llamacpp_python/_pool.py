"""A fixed set of instances, lent one borrower at a time, with a bounded FIFO waiting line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class QueueFull(Exception):
    """Every instance is busy and the waiting line is at its limit."""


class InstancePool(Generic[T]):
    """Lends each of ``instances`` to one borrower at a time; the others wait in line.

    Fairness and cancellation come from :class:`trio.Semaphore`: its waiters form a FIFO
    line, a release hands the freed slot straight to the first waiter (a newcomer cannot
    overtake it), and a waiter that is cancelled leaves the line at once.
    """

    def __init__(self, instances: Sequence[T], *, max_waiting: int) -> None:
        if not instances:
            raise ValueError("a pool needs at least one instance")
        self._free = list(instances)
        self._size = len(instances)
        self._slots = trio.Semaphore(self._size)
        self._max_waiting = max_waiting
        self._closed = False

    @property
    def waiting(self) -> int:
        """Borrowers in line now."""
        return self._slots.statistics().tasks_waiting

    @property
    def busy(self) -> int:
        """Instances lent out now."""
        return self._size - self._slots.value

    @property
    def full(self) -> bool:
        """Whether :meth:`acquire` would raise :class:`QueueFull` now."""
        return self._slots.value == 0 and self.waiting >= self._max_waiting

    async def acquire(self) -> T:
        """Wait in line for a free instance; the caller must :meth:`release` it.

        Raises :class:`QueueFull` at once, without waiting, when no instance is free and
        the line is at its limit, and :class:`trio.ClosedResourceError` once the pool is
        closing. Cancellation while waiting leaves the line and acquires nothing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the pool is closed")
        if self.full:
            raise QueueFull
        await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise trio.ClosedResourceError("the pool is closed")
        return self._free.pop()

    def release(self, instance: T) -> None:
        self._free.append(instance)
        self._slots.release()

    async def aclose(self) -> None:
        """Refuse new borrowers (those in line get :class:`trio.ClosedResourceError`), and
        wait until every lent instance has been released."""
        self._closed = True
        for _ in range(self._size):
            await self._slots.acquire()
