"""Sending only when llama-server has a free slot.

A request llama-server cannot start at once waits in its own queue, and there it is stuck:
the server looks for a disconnected client only after a whole second without any result
for *any* request (``server_response::recv_with_timeout`` wakes on every token of every
slot), so while another request generates, a queued client that went away is not noticed
— and its request starts, prompt and all, once the slot frees. Held in the gateway instead
(heartbeats keep its client alive just the same), a waiting request that is cancelled
never reaches the server at all.

:class:`SlotGate` grants the server's ``total`` slots in FIFO order. Its picture of the
server: the requests this backend has in flight (exact, counted here) plus the others the
last poll showed — running and queued there beyond this backend's own (other clients of a
shared server), assumed unchanged until the next poll. Slightly off either way between
polls; the cost of a wrong guess is only a short wait, here or in the server's queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class SlotGate:
    """FIFO admission to a llama-server's slots. With ``total`` unknown (``None``, e.g.
    before ``/props`` was read) every request passes at once."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.own = 0
        """Requests of this backend holding a slot (sent, not finished)."""
        self.others = 0
        """Requests of other clients running or queued at the last poll."""
        self._waiters: deque[trio.Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def observe(self, total: int | None, running: int | None, queued: int | None) -> None:
        """Take a poll's figures (the server's slots, its running and queued requests)."""
        self.total = total
        self.others = max(0, (running or 0) + (queued or 0) - self.own)
        self._grant()

    def _free(self) -> bool:
        return self.total is None or self.own + self.others < self.total

    def _grant(self) -> None:
        while self._waiters and self._free():
            self.own += 1
            self._waiters.popleft().set()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a slot (in arrival order) and hold it for the body. Cancellation while
        waiting gives up the place in line; leaving the body frees the slot."""
        if not self._waiters and self._free():
            self.own += 1
        else:
            granted = trio.Event()
            self._waiters.append(granted)
            try:
                await granted.wait()
            except BaseException:
                if granted.is_set():  # granted, then cancelled before it could run
                    self._release()
                else:
                    self._waiters.remove(granted)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self.own -= 1
        self._grant()
