"""What the worker processes of one machine share, kept by their parent: the teams' limit
windows, every backend's slots and queue, and the load on each backend.

Each worker has one :class:`~gateway.control.Channel` to the parent; :meth:`Machine.serve`
answers it. The worker's side is :mod:`gateway.worker_link`. Messages (``n`` numbers a
worker's request; replies carry it back):

- ``admit`` (team, limits, id, stream) → the :class:`~gateway.teams.limits.Decision`;
  ``finish`` (team, id, stream, tokens) frees the stream and counts the tokens.
- ``hold`` (backend, admission) → ``queued`` (when it must wait), then ``granted`` or
  ``refused``; ``release`` gives the slot back (or leaves the queue). For a backend
  without ``max_concurrency`` a worker sends no ``hold``: it reports its ``counts`` of
  such requests in flight, at most every :data:`~gateway.control.LOAD_INTERVAL`, and the
  parent adds them up.
- ``collect`` (what) → ``reports``: the parent asks every worker to ``report`` it (their
  metrics, their streams) and answers with all the replies.
- ``ready``: the worker is listening.
- The parent sends ``load`` (each backend's machine-wide in-flight and queued counts)
  when a worker connects, and whenever they changed, at most every
  :data:`~gateway.control.LOAD_INTERVAL`, for ``least_busy``.

A worker that dies gives back everything it held: its slots at once, its open streams'
places in their teams' windows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from .abc import AdmissionSettings
from .admission import BackendSlots
from .control import LOAD_INTERVAL, Channel, Message
from .errors import Overloaded
from .teams.limits import Limits, LocalWindows

__all__ = ["COLLECT_TIMEOUT", "Machine"]

log = logging.getLogger("gateway.workers")

COLLECT_TIMEOUT = 2.0  # seconds a worker has to report


class _Peer:
    __slots__ = ("channel", "counts", "holds", "reports", "streams", "worker")

    def __init__(self, worker: int, channel: Channel) -> None:
        self.worker = worker
        self.channel = channel
        self.streams: dict[str, str] = {}  # open stream tickets: id -> team
        self.holds: dict[int, trio.CancelScope] = {}
        self.counts: dict[str, int] = {}  # its requests in flight to unlimited backends
        self.reports: dict[int, trio.MemorySendChannel[Any]] = {}


class Machine:
    """The shared state; one per parent process. ``reporters``: what the parent adds to a
    ``collect`` of each kind (its own metrics)."""

    def __init__(
        self,
        reporters: dict[str, Callable[[], Any]] | None = None,
        on_ready: Callable[[int], None] | None = None,
    ) -> None:
        self.windows = LocalWindows()
        self.reporters = reporters or {}
        self.on_ready = on_ready
        self._slots: dict[str, tuple[list[Any], BackendSlots]] = {}
        self._peers: dict[int, _Peer] = {}
        self._changed: set[str] = set()
        self._change = trio.Event()
        self._asks = 0

    async def broadcast_loads(self) -> None:
        """Send changed loads to every worker, at most every :data:`LOAD_INTERVAL`; runs
        for the parent's lifetime."""
        while True:
            await self._change.wait()
            self._change = trio.Event()
            changed, self._changed = self._changed, set()
            message = {"op": "load", "loads": self._loads(changed)}
            for peer in self._peers.values():
                peer.channel.send(message)
            await trio.sleep(LOAD_INTERVAL)

    def _loads(self, backends: set[str]) -> dict[str, list[int]]:
        """Each backend's machine-wide ``[in_flight, queued]``."""
        loads = {}
        for backend in backends:
            entry = self._slots.get(backend)
            in_flight, queued = (entry[1].in_flight, entry[1].queued) if entry else (0, 0)
            in_flight += sum(peer.counts.get(backend, 0) for peer in self._peers.values())
            loads[backend] = [in_flight, queued]
        return loads

    async def serve(self, worker: int, channel: Channel) -> None:
        """Answer worker ``worker`` until its end of the channel closes, then give back
        what it held."""
        peer = _Peer(worker, channel)
        self._peers[worker] = peer
        # A worker started late (a restart) learns the loads as they stand.
        backends = set(self._slots).union(*(p.counts for p in self._peers.values()))
        channel.send({"op": "load", "loads": self._loads(backends)})
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.run_writer)
                async for message in channel:
                    self._handle(peer, message, nursery)
                nursery.cancel_scope.cancel()  # the holds, the writer
        finally:
            if self._peers.get(worker) is peer:
                del self._peers[worker]
            for team in peer.streams.values():
                self.windows.release_stream(team)
            for backend in peer.counts:
                self._changed_load(backend)
            for reply in peer.reports.values():
                reply.close()

    def _handle(self, peer: _Peer, m: Message, nursery: trio.Nursery) -> None:
        op = m["op"]
        if op == "admit":
            self._admit(peer, m)
        elif op == "finish":
            team = m["team"]
            if m["stream"] and peer.streams.pop(m["id"], None) is not None:
                self.windows.release_stream(team)
            self.windows.add_tokens(team, m["tokens"], trio.current_time())
        elif op == "counts":
            for backend in set(peer.counts).union(m["counts"]):
                self._changed_load(backend)
            peer.counts = m["counts"]
        elif op == "hold":
            # The scope exists before the task: a release that comes first cancels it.
            hold = peer.holds[m["n"]] = trio.CancelScope()
            nursery.start_soon(self._hold, peer, m, hold)
        elif op == "release":
            held = peer.holds.pop(m["n"], None)
            if held is not None:
                held.cancel()
        elif op == "ready":
            if self.on_ready is not None:
                self.on_ready(peer.worker)
        elif op == "collect":
            nursery.start_soon(self._collect, peer, m)
        elif op == "reported":
            reply = peer.reports.pop(m["n"], None)
            if reply is not None:
                reply.send_nowait(m["body"])
        else:
            log.warning("worker %d sent an unknown message: %r", peer.worker, op)

    def _admit(self, peer: _Peer, m: Message) -> None:
        stream = m["stream"]
        decision = self.windows.admit(
            m["team"], Limits(*m["limits"]), trio.current_time(), stream=stream
        )
        if decision.allowed and stream:
            peer.streams[m["id"]] = m["team"]
        peer.channel.send(
            {
                "n": m["n"],
                "exceeded": decision.exceeded,
                "retry_after": decision.retry_after,
                "headers": decision.headers,
            }
        )

    def _slots_for(self, backend: str, admission: list[Any]) -> BackendSlots:
        """The backend's slots; new ones when a reload changed its admission settings (the
        requests holding the old ones finish under them)."""
        entry = self._slots.get(backend)
        if entry is None or entry[0] != admission:
            max_concurrency, max_queue, queue_timeout, status = admission
            settings = AdmissionSettings(
                max_concurrency=max_concurrency,
                max_queue=max_queue,
                queue_timeout=queue_timeout,
                queue_full_status=status,
            )
            entry = self._slots[backend] = (admission, BackendSlots(backend, settings))
        return entry[1]

    def _changed_load(self, backend: str) -> None:
        self._changed.add(backend)
        self._change.set()

    async def _hold(self, peer: _Peer, m: Message, scope: trio.CancelScope) -> None:
        n, backend = m["n"], m["backend"]
        slots = self._slots_for(backend, m["admission"])
        send = peer.channel.send

        def queued() -> None:
            send({"n": n, "queued": True})
            self._changed_load(backend)

        with scope:
            try:
                async with slots.hold(on_wait=queued):
                    self._changed_load(backend)
                    send({"n": n, "granted": True})
                    await trio.sleep_forever()
            except Overloaded as refused:
                send(
                    {
                        "n": n,
                        "refused": refused.message,
                        "status": refused.status,
                        "retry_after": refused.retry_after,
                    }
                )
            finally:
                self._changed_load(backend)
        peer.holds.pop(n, None)

    async def _collect(self, peer: _Peer, m: Message) -> None:
        """Ask every worker for a report of ``m["what"]``; answer with the replies that
        came within :data:`COLLECT_TIMEOUT` (a stuck worker does not stall the scrape)."""
        what = m["what"]
        reports: list[dict[str, Any]] = []
        own = self.reporters.get(what)
        if own is not None:
            reports.append({"worker": "parent", "body": own()})
        asked: list[tuple[_Peer, int]] = []
        bodies: dict[int, Any] = {}

        async def wait(worker: int, receive: trio.MemoryReceiveChannel[Any]) -> None:
            with contextlib.suppress(trio.EndOfChannel):  # that worker went away
                bodies[worker] = await receive.receive()

        # All at once: one stuck worker must not cost the replies of those asked after it.
        with trio.move_on_after(COLLECT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for other in list(self._peers.values()):
                    self._asks += 1
                    send, receive = trio.open_memory_channel[Any](1)
                    other.reports[self._asks] = send
                    other.channel.send({"op": "report", "n": self._asks, "what": what})
                    asked.append((other, self._asks))
                    nursery.start_soon(wait, other.worker, receive)
        for other, n in asked:
            other.reports.pop(n, None)  # a late reply finds nobody waiting
            if other.worker in bodies:
                reports.append({"worker": other.worker, "body": bodies[other.worker]})
        peer.channel.send({"n": m["n"], "reports": reports})
