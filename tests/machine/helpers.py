"""What the tests of the machine's shared state share: a worker linked to one Machine over
a real socket pair (the fixtures that make them are in ``conftest.py``), requests, team
admissions and scrapes driven through the links. Timing runs on trio's MockClock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
import trio.testing
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.abc import AdmissionSettings
from gateway.control import Message
from gateway.errors import Overloaded, ShuttingDown
from gateway.metrics_merge import merge_expositions
from gateway.teams.limits import Decision, Limits
from gateway.teams.state import LocalState, Ticket
from gateway.worker_link import ParentLink, ParentState, SharedSlots

BACKEND = "b"


TEAM = "team-a"


async def settle() -> None:
    """Let every message in flight arrive and the load broadcast after it go out: a
    virtual second (MockClock), ten times LOAD_INTERVAL."""
    await trio.sleep(1)


@dataclass
class Worker:
    link: ParentLink
    parent_end: trio.SocketStream
    """The parent's end of the line: closing it is the parent going away."""

    async def leave(self) -> None:
        """Close the worker's end, as a worker process that dies does."""
        await self.link.channel.stream.aclose()


Connect = Callable[..., Awaitable[Worker]]


def limited(max_concurrency: int | None = 1, **settings: object) -> AdmissionSettings:
    return AdmissionSettings.model_validate({"max_concurrency": max_concurrency, **settings})


class Requests:
    """Requests numbered in the order they start, each holding its slot (through the
    SharedSlots it is given) until :meth:`finish`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.granted: list[int] = []
        self.waited: list[int] = []
        self.refused: dict[int, Overloaded | ShuttingDown] = {}
        self.holding: set[int] = set()
        self.peak = 0
        self._done: dict[int, trio.Event] = {}

    async def start(self, i: int, slots: SharedSlots) -> trio.CancelScope:
        """Start request ``i`` and let it reach the parent; returns its cancel scope."""
        scope = trio.CancelScope()
        self._done[i] = trio.Event()
        self._nursery.start_soon(self._run, i, slots, scope)
        await settle()
        return scope

    def finish(self, i: int) -> None:
        self._done[i].set()

    async def _run(self, i: int, slots: SharedSlots, scope: trio.CancelScope) -> None:
        with scope:
            try:
                async with slots.hold(on_wait=lambda: self.waited.append(i)):
                    self.granted.append(i)
                    self.holding.add(i)
                    self.peak = max(self.peak, len(self.holding))
                    await self._done[i].wait()
                    self.holding.remove(i)
            except (Overloaded, ShuttingDown) as refused:
                self.refused[i] = refused


def answer(body: object) -> Callable[[], object]:
    """A reporter that answers ``body``."""
    return lambda: body


class Metrics:
    """One worker's registry, and its ``metrics`` report as prometheus_client writes it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests answered.", registry=self.registry)
        self.first_byte = Histogram(
            "gateway_first_byte_seconds",
            "Time to the first byte.",
            buckets=(0.1, 1.0),
            registry=self.registry,
        )
        self.streams = Gauge("gateway_streams_active", "Streams open now.", registry=self.registry)

    def report(self) -> str:
        return generate_latest(self.registry).decode()


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(link: ParentLink) -> Series:
    """``/metrics`` as a worker answers it (gateway.views.probes): every sample's value
    by (name, labels)."""
    reports = await link.collect("metrics")
    text = merge_expositions((str(r["worker"]), r["body"]) for r in reports if r["body"])
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def went_down(before: Series, after: Series) -> Series:
    """The cumulative series (counters, histograms) of ``before`` lower in ``after``."""
    cumulative = ("_total", "_bucket", "_count", "_sum")
    return {
        key: after.get(key, 0.0)
        for key, value in before.items()
        if key[0].endswith(cumulative) and after.get(key, 0.0) < value
    }


def loads(*links: ParentLink) -> list[tuple[int, int]]:
    """What each link last heard of the backend's (in-flight, queued)."""
    return [link.loads.get(BACKEND, (0, 0)) for link in links]


def said(replies: trio.MemoryReceiveChannel[Message]) -> list[str]:
    """What the parent has answered a hold since last asked: granted, queued, refused."""
    kinds = []
    while True:
        try:
            reply = replies.receive_nowait()
        except trio.WouldBlock:
            return kinds
        kinds.extend(kind for kind in ("granted", "queued", "refused") if kind in reply)


@dataclass(frozen=True)
class Admit:
    worker: int
    id: str
    stream: bool = False


@dataclass(frozen=True)
class Finish:
    id: str
    tokens: int = 0


@dataclass(frozen=True)
class Wait:
    seconds: float


async def play(
    links: list[ParentLink], limits: Limits, steps: list[Admit | Finish | Wait]
) -> list[Decision]:
    """Run ``steps`` through the machine (each Admit through its worker's ParentState) and,
    at the same instants, through one process's windows (LocalState: LocalWindows on
    trio's clock); every decision must match. Returns the machine's decisions."""
    states = [ParentState(link) for link in links]
    local = LocalState()
    tickets: dict[str, tuple[Ticket, Ticket]] = {}
    decisions = []
    for step in steps:
        match step:
            case Admit(worker, id, stream):
                decision, ticket = await states[worker].admit(TEAM, limits, id=id, stream=stream)
                expected, local_ticket = await local.admit(TEAM, limits, id=id, stream=stream)
                assert decision == expected, step
                assert (ticket is None) == (local_ticket is None)
                if ticket is not None and local_ticket is not None:
                    tickets[id] = ticket, local_ticket
                decisions.append(decision)
            case Finish(id, tokens):
                for ticket in tickets.pop(id):
                    ticket.release(tokens)
                await settle()  # a finish has no reply: let it reach the parent
            case Wait(seconds):
                await trio.sleep(seconds)
    return decisions
