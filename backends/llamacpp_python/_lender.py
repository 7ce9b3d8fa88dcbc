"""A fixed set of instances, each lent to one borrower at a time.

Not a pool in the sense of :mod:`backends._pool` (connections opened and dropped on demand):
the set never grows or shrinks, and a borrower waits in line for one of its members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class InstanceLender(Generic[T]):
    """Lends each of ``instances`` to one borrower at a time; the others wait in line.

    The gateway's admission queue normally keeps borrowers to the number of instances, so
    nobody waits here; the line is for callers of the backend API who bypass it. Fairness
    and cancellation come from :class:`trio.Semaphore`: its waiters form a FIFO line, a
    release hands the slot straight to the first of them, and a cancelled waiter leaves
    the line at once.
    """

    def __init__(self, instances: Sequence[T]) -> None:
        if not instances:
            raise ValueError("a lender needs at least one instance")
        self._free = list(instances)
        self._size = len(instances)
        self._slots = trio.Semaphore(self._size)
        self._closed = False

    @property
    def busy(self) -> int:
        """Instances lent out now."""
        return self._size - self._slots.value

    async def acquire(self) -> T:
        """Wait in line for a free instance; the caller must :meth:`release` it.

        Raises :class:`trio.ClosedResourceError` once the lender is closing. Cancellation
        while waiting leaves the line and acquires nothing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the lender is closed")
        await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise trio.ClosedResourceError("the lender is closed")
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
