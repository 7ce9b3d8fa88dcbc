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
  metrics, their streams) and answers with all the replies. For ``metrics`` it keeps each
  worker's last report: one that does not answer in time is counted as it last reported,
  and the counters of those that are gone stay in every later scrape as one more report,
  ``worker="retired"`` (:func:`~gateway.metrics_merge.add_cumulative`), so the merged
  counters never go down.
- ``ready``: the worker is listening.
- The parent sends ``load`` (each backend's machine-wide in-flight and queued counts)
  when a worker connects, and whenever they changed, at most every
  :data:`~gateway.control.LOAD_INTERVAL`, for ``least_busy``.

A worker that dies gives back everything it held: its slots at once, its open streams'
places in their teams' windows.

Holds join their backend's queue in the order the parent reads them: it reads the next
message only once the hold before has its slot, its place in the queue or its refusal.

A hold carries its worker's admission settings, and workers may disagree for a while: a
reload reaches them one by one, a restarted worker may read a file edited since the others
loaded it. The parent keeps slots for each settings value a hold brings, and drops them once
nobody holds or waits for them: requests under the same settings share one limit and queue,
and while workers disagree the backend takes at most the sum of their limits.
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
from .metrics_merge import add_cumulative
from .teams.limits import Limits, LocalWindows

__all__ = ["COLLECT_TIMEOUT", "Machine"]

log = logging.getLogger("gateway.workers")

COLLECT_TIMEOUT = 2.0  # seconds a worker has to report

_METRICS = "metrics"  # the collect whose last reports the parent keeps


class _Peer:
    __slots__ = ("channel", "counts", "holds", "metrics", "reports", "streams", "worker")

    def __init__(self, worker: int, channel: Channel) -> None:
        self.worker = worker
        self.channel = channel
        self.streams: dict[str, str] = {}  # open stream tickets: id -> team
        self.holds: dict[int, trio.CancelScope] = {}
        self.counts: dict[str, int] = {}  # its requests in flight to unlimited backends
        self.reports: dict[int, tuple[str, trio.MemorySendChannel[Any]]] = {}  # n -> what
        self.metrics: str | None = None  # its last metrics report


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
        self._slots: dict[str, dict[tuple[Any, ...], BackendSlots]] = {}  # by settings
        self._peers: dict[int, _Peer] = {}
        self._changed: set[str] = set()
        self._change = trio.Event()
        self._asks = 0
        self._retired = ""  # the counters of the workers that are gone, as they last said

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
            kept = self._slots.get(backend, {}).values()
            in_flight = sum(slots.in_flight for slots in kept)
            queued = sum(slots.queued for slots in kept)
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
                    await self._handle(peer, message, nursery)
                nursery.cancel_scope.cancel()  # the holds, the writer
        finally:
            if self._peers.get(worker) is peer:
                del self._peers[worker]
            for team in peer.streams.values():
                self.windows.release_stream(team)
            for backend in peer.counts:
                self._changed_load(backend)
            # Before its collects are told it is gone (below): each then counts it once,
            # in the retired total.
            if peer.metrics is not None:
                self._retired = add_cumulative(self._retired, peer.metrics)
            for _, reply in peer.reports.values():
                reply.close()

    async def _handle(self, peer: _Peer, m: Message, nursery: trio.Nursery) -> None:
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
            # Tasks started together run in no set order: the next message waits until
            # this hold has taken its place, so those read at once join in arrival order.
            hold = peer.holds[m["n"]] = trio.CancelScope()
            await nursery.start(self._hold, peer, m, hold)
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
            asked = peer.reports.pop(m["n"], None)
            if asked is not None:
                what, reply = asked
                if what == _METRICS:  # here, not in _collect: in the order they were made
                    peer.metrics = m["body"]
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
        """The backend's slots under ``admission``, as the module says; :meth:`_drop_idle`
        once done with them."""
        kept = self._slots.setdefault(backend, {})
        slots = kept.get(key := tuple(admission))
        if slots is None:
            max_concurrency, max_queue, queue_timeout, status = admission
            settings = AdmissionSettings(
                max_concurrency=max_concurrency,
                max_queue=max_queue,
                queue_timeout=queue_timeout,
                queue_full_status=status,
            )
            slots = kept[key] = BackendSlots(backend, settings)
        return slots

    def _drop_idle(self, backend: str, admission: list[Any]) -> None:
        """Forget the backend's slots under ``admission`` if nobody holds or waits for them:
        new ones, for the next hold under those settings, are the same."""
        kept = self._slots.get(backend, {})
        slots = kept.get(key := tuple(admission))
        if slots is not None and slots.in_flight == slots.queued == 0:
            del kept[key]
            if not kept:
                del self._slots[backend]

    def _changed_load(self, backend: str) -> None:
        self._changed.add(backend)
        self._change.set()

    async def _hold(
        self,
        peer: _Peer,
        m: Message,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold a slot for ``m`` until ``scope`` is cancelled (its release). Started once it
        has its slot, its place in the queue or its refusal."""
        n, backend = m["n"], m["backend"]
        slots = self._slots_for(backend, m["admission"])
        send = peer.channel.send
        placed = False

        def place() -> None:
            nonlocal placed
            if not placed:
                placed = True
                task_status.started()

        def queued() -> None:
            send({"n": n, "queued": True})
            self._changed_load(backend)
            # BackendSlots parks the waiter with no checkpoint after this call: it is in
            # line before the reader runs again.
            place()

        with scope:
            try:
                async with slots.hold(on_wait=queued):
                    self._changed_load(backend)
                    send({"n": n, "granted": True})
                    place()
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
                self._drop_idle(backend, m["admission"])
        peer.holds.pop(n, None)
        place()  # refused, or cancelled with its worker before it had a place

    async def _collect(self, peer: _Peer, m: Message) -> None:
        """Ask every worker for a report of ``m["what"]``; answer with the replies that
        came within :data:`COLLECT_TIMEOUT` (a stuck worker does not stall the scrape).
        Metrics as the module says: a worker still connected but late counts with its last
        report, and the workers that are gone with the retired total."""
        what = m["what"]
        reports: list[dict[str, Any]] = []
        own = self.reporters.get(what)
        if own is not None:
            reports.append({"worker": "parent", "body": own()})
        asked: list[tuple[_Peer, int]] = []
        bodies: dict[_Peer, Any] = {}

        async def wait(other: _Peer, receive: trio.MemoryReceiveChannel[Any]) -> None:
            with contextlib.suppress(trio.EndOfChannel):  # that worker went away
                bodies[other] = await receive.receive()

        # All at once: one stuck worker must not cost the replies of those asked after it.
        with trio.move_on_after(COLLECT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for other in list(self._peers.values()):
                    self._asks += 1
                    send, receive = trio.open_memory_channel[Any](1)
                    other.reports[self._asks] = what, send
                    other.channel.send({"op": "report", "n": self._asks, "what": what})
                    asked.append((other, self._asks))
                    nursery.start_soon(wait, other, receive)
        for other, n in asked:
            other.reports.pop(n, None)  # a late reply finds nobody waiting
            if other in bodies:
                reports.append({"worker": other.worker, "body": bodies[other]})
            elif what == _METRICS and other.metrics and self._peers.get(other.worker) is other:
                # Late, it counts as it last reported; gone, it is in the retired total.
                reports.append({"worker": other.worker, "body": other.metrics})
        if what == _METRICS and self._retired:
            reports.append({"worker": "retired", "body": self._retired})
        peer.channel.send({"n": m["n"], "reports": reports})
