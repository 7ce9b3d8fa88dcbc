"""Taking a trio lock on a hot path without a pass through the scheduler."""

from __future__ import annotations

import trio

__all__ = ["acquire"]


async def acquire(lock: trio.Lock | trio.Semaphore) -> None:
    """Take ``lock``: at once when it is free (the usual case on the paths that use this:
    one writer at a time per response or connection), else wait for it in line.

    ``lock.acquire()`` is a checkpoint even when the lock is free: it yields to trio's run
    loop, one whole pass per write. The callers write to a socket next, which is a
    checkpoint of its own, so cancellation is still seen there.
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
