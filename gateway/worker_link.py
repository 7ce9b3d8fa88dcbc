"""A worker process's line to its parent (:mod:`gateway.machine`): the team limits and the
backend slots of the whole machine, behind the interfaces the single process uses
(:class:`~gateway.teams.state.StateBackend`, :class:`~gateway.admission.Slots`).

When the parent is gone (it died, or was killed), :attr:`ParentLink.lost` is set — the
worker shuts down — and what still asks it is refused with a 503: a worker with no parent
can no longer keep the machine's limits.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .abc import AdmissionSettings
from .control import LOAD_INTERVAL, Channel, Message
from .errors import Overloaded, ShuttingDown
from .teams.limits import Decision, Limits
from .teams.state import Ticket

__all__ = ["ParentLink", "ParentState", "SharedSlots"]


def _parent_gone() -> ShuttingDown:
    return ShuttingDown("this gateway worker lost its parent process and is shutting down")


class ParentLink:
    """The worker's end of the channel. Run :meth:`run` for the worker's lifetime.
    ``reporters``: what this worker answers a ``report`` of each kind with."""

    def __init__(self, channel: Channel, worker: int) -> None:
        self.channel = channel
        self.worker = worker
        self.loads: dict[str, tuple[int, int]] = {}
        """Each backend's machine-wide (in-flight, queued), as the parent last said."""
        self.reporters: dict[str, Callable[[], Any]] = {}
        self.lost = trio.Event()
        self._counts: dict[str, int] = {}  # in flight to backends without a limit
        self._counted = trio.Event()
        self._replies: dict[int, trio.MemorySendChannel[Message]] = {}
        self._next = 0

    async def run(self) -> None:
        """Read the parent's messages until it is gone; then set :attr:`lost`."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.channel.run_writer)
                nursery.start_soon(self._report_counts)
                async for m in self.channel:
                    self._handle(m)
                nursery.cancel_scope.cancel()
        finally:
            self.lost.set()
            for replies in self._replies.values():
                replies.close()
            self._replies.clear()

    def _handle(self, m: Message) -> None:
        op = m.get("op")
        if op is None:
            replies = self._replies.get(m["n"])
            if replies is not None:
                replies.send_nowait(m)
        elif op == "load":
            for backend, (in_flight, queued) in m["loads"].items():
                self.loads[backend] = (in_flight, queued)
        elif op == "report":
            reporter = self.reporters.get(m["what"])
            body = reporter() if reporter is not None else None
            self.channel.send({"op": "reported", "n": m["n"], "body": body})

    def count(self, backend: str, change: int) -> None:
        """Count a request to ``backend`` (one without ``max_concurrency``) in or out;
        the parent hears the counts at most every :data:`LOAD_INTERVAL`."""
        self._counts[backend] = self._counts.get(backend, 0) + change
        self._counted.set()

    async def _report_counts(self) -> None:
        while True:
            await self._counted.wait()
            self._counted = trio.Event()
            self.channel.send({"op": "counts", "counts": dict(self._counts)})
            await trio.sleep(LOAD_INTERVAL)

    def send(self, message: Message) -> None:
        """Send a message that needs no reply."""
        self.channel.send(message)

    def number(self, message: Message) -> int:
        """Send ``message`` under a new number (what a later one may refer to); returns it."""
        self._next += 1
        self.channel.send({**message, "n": self._next})
        return self._next

    @asynccontextmanager
    async def exchange(
        self, message: Message
    ) -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[Message]]]:
        """Send ``message``; yield its number and the channel its replies arrive on (closed
        when the parent is gone)."""
        if self.lost.is_set():
            raise _parent_gone()
        send, receive = trio.open_memory_channel[Message](math.inf)
        n = self._next + 1
        self._replies[n] = send
        self.number(message)
        try:
            yield n, receive
        finally:
            self._replies.pop(n, None)

    async def ask(self, message: Message) -> Message:
        """Send ``message`` and return its one reply."""
        async with self.exchange(message) as (_, replies):
            try:
                return await replies.receive()
            except trio.EndOfChannel:
                raise _parent_gone() from None

    async def collect(self, what: str) -> list[dict[str, Any]]:
        """Every worker's (and the parent's) report of ``what``: ``{"worker", "body"}``."""
        reply = await self.ask({"op": "collect", "what": what})
        reports: list[dict[str, Any]] = reply["reports"]
        return reports


class ParentState:
    """Team limit windows kept by the parent, for the whole machine."""

    def __init__(self, link: ParentLink) -> None:
        self._link = link

    async def admit(
        self, team: str, limits: Limits, *, id: str, stream: bool
    ) -> tuple[Decision, Ticket | None]:
        """As :meth:`gateway.teams.state.StateBackend.admit`. Cancelled (or failing) before
        the parent's reply, it holds nothing: a stream the parent admitted meanwhile is
        finished at once, with no tokens."""
        message = {
            "op": "admit",
            "team": team,
            "limits": [
                limits.requests_per_minute,
                limits.tokens_per_minute,
                limits.concurrent_streams,
            ],
            "id": id,
            "stream": stream,
        }
        reply: Message | None = None
        try:
            reply = await self._link.ask(message)
        finally:
            if reply is None and stream:
                # The parent reads this after the admit (one ordered line), and ignores it
                # for a stream it refused. Dropped when the line is gone, but then the
                # parent gives back all this worker held anyway.
                self._finish(team, id, stream, 0)
        decision = Decision(reply["exceeded"], reply["retry_after"], reply["headers"])
        return decision, Ticket(self, team, id, stream) if decision.allowed else None

    def finish(self, ticket: Ticket, tokens: int) -> None:
        self._finish(ticket.team, ticket.id, ticket.stream, tokens)

    def _finish(self, team: str, id: str, stream: bool, tokens: int) -> None:
        self._link.send(
            {"op": "finish", "team": team, "id": id, "stream": stream, "tokens": tokens}
        )


class SharedSlots:
    """A backend's slots and queue, kept by the parent for the whole machine; its counts
    are the machine's (as of the parent's last report). Without ``max_concurrency`` there is
    nothing to wait for: a request is only counted, with no message of its own."""

    __slots__ = ("_admission", "_link", "_quiet", "backend_id")

    def __init__(self, link: ParentLink, backend_id: str, settings: AdmissionSettings) -> None:
        self._link = link
        self.backend_id = backend_id
        self._admission = [
            settings.max_concurrency,
            settings.max_queue,
            settings.queue_timeout,
            settings.queue_full_status,
        ]
        # Without a limit a slot is never refused nor waited for: the parent only counts.
        self._quiet = settings.max_concurrency is None

    @property
    def in_flight(self) -> int:
        return self._link.loads.get(self.backend_id, (0, 0))[0]

    @property
    def queued(self) -> int:
        return self._link.loads.get(self.backend_id, (0, 0))[1]

    @asynccontextmanager
    async def hold(self, on_wait: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """As :meth:`gateway.admission.BackendSlots.hold`, with the parent's slots."""
        link = self._link
        if self._quiet:
            if link.lost.is_set():
                raise _parent_gone()
            link.count(self.backend_id, 1)
            try:
                yield
            finally:
                link.count(self.backend_id, -1)
            return
        hold = {"op": "hold", "backend": self.backend_id, "admission": self._admission}
        async with link.exchange(hold) as (n, replies):
            try:
                await _granted(replies, on_wait)
                yield
            finally:
                link.send({"op": "release", "n": n})


async def _granted(
    replies: trio.MemoryReceiveChannel[Message], on_wait: Callable[[], None] | None
) -> None:
    """Wait for the parent's grant; raise its refusal."""
    async for reply in replies:
        if reply.get("granted"):
            return
        if reply.get("queued"):
            if on_wait is not None:
                on_wait()
            continue
        if "refused" in reply:
            raise Overloaded(
                reply["refused"], retry_after=reply["retry_after"], status=reply["status"]
            )
    raise _parent_gone()
