"""Spreading new connections over the worker processes that share one listening socket.

The kernel wakes every worker waiting on the socket, and the one that is running already
wins: it took 7 of 8 connections opened at once, often all 8. A client with a small
keep-alive pool (an SDK, a coding agent) would then keep one worker busy while the others
idle. So every worker counts its open connections in memory the workers share (a
``memfd`` the parent makes, one 64-bit slot per worker: each writes its own and reads
the others'), and a worker with more than the least-loaded one waits
:data:`ACCEPT_PAUSE` before it accepts — time for another worker to take the connection.
If none does (all busy), it takes it itself: a connection waits at most that long.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["ACCEPT_PAUSE", "ConnectionShares", "create_shares"]

ACCEPT_PAUSE = 0.002  # seconds
_SLOT = 8


def create_shares(workers: int) -> int:
    """A shared file of ``workers`` zeroed slots (the parent's); returns its descriptor."""
    fd = os.memfd_create("trio-gateway-connections", 0)
    os.ftruncate(fd, workers * _SLOT)
    return fd


class ConnectionShares:
    """One worker's view of the shared counts (a worker's, from the parent's descriptor)."""

    def __init__(self, fd: int, worker: int, workers: int) -> None:
        self._map = mmap.mmap(fd, workers * _SLOT)
        self._counts = memoryview(self._map).cast("q")
        self._worker = worker
        self._counts[worker] = 0  # a restarted worker's predecessor's connections are gone

    def opened(self) -> None:
        self._counts[self._worker] += 1

    def closed(self) -> None:
        self._counts[self._worker] -= 1

    def ahead(self) -> bool:
        """Whether this worker has more open connections than the least-loaded worker."""
        counts = self._counts.tolist()
        return counts[self._worker] > min(counts)
