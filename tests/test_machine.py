"""The machine's shared state (``gateway.machine``) with workers' links to it
(``gateway.worker_link``), all in one trio run: each worker is a ParentLink on one end of a
real socket pair whose other end one Machine serves. Timing (queue and collect timeouts,
load broadcasts) runs on trio's MockClock. The line itself (``gateway.control``) last."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from gateway.abc import AdmissionSettings
from gateway.control import Channel, Message
from gateway.errors import Overloaded, ShuttingDown
from gateway.machine import COLLECT_TIMEOUT, Machine
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


@pytest.fixture
async def machine(nursery: trio.Nursery) -> Machine:
    machine = Machine()
    nursery.start_soon(machine.broadcast_loads)
    return machine


@pytest.fixture
async def connect(nursery: trio.Nursery, machine: Machine) -> AsyncIterator[Connect]:
    """``await connect(worker)``: a new worker on ``machine``; ``running=False`` leaves
    its link unread (a worker that is connected but never answers)."""
    ends: list[trio.SocketStream] = []

    async def connect(worker: int, *, running: bool = True) -> Worker:
        parent_socket, worker_socket = trio.socket.socketpair()
        parent_end, worker_end = trio.SocketStream(parent_socket), trio.SocketStream(worker_socket)
        ends.extend((parent_end, worker_end))
        nursery.start_soon(machine.serve, worker, Channel(parent_end))
        link = ParentLink(Channel(worker_end), worker)
        if running:
            nursery.start_soon(link.run)
        await settle()
        return Worker(link, parent_end)

    yield connect
    for end in ends:
        await end.aclose()


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


# --- backend slots, shared --------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_a_full_queue_refuses_at_once_with_the_backends_status(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect, status: int
) -> None:
    a, b = (await connect(0)).link, (await connect(1)).link
    settings = limited(1, max_queue=1, queue_full_status=status)
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(a, BACKEND, settings))
    await requests.start(1, SharedSlots(b, BACKEND, settings))

    start = trio.current_time()
    with pytest.raises(Overloaded) as refused:
        async with SharedSlots(a, BACKEND, settings).hold():
            pytest.fail("held a slot past a full queue")
    assert trio.current_time() == start
    assert refused.value.status == status
    assert refused.value.type == ("rate_limit_error" if status == 429 else "server_error")
    assert refused.value.message == f"backend {BACKEND} is busy: 1 request(s) already queued"
    assert refused.value.retry_after == 1.0

    requests.finish(0)  # the one queued before it was not disturbed
    await settle()
    assert requests.granted == [0, 1] and requests.waited == [1]


async def test_a_wait_past_queue_timeout_is_refused(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    a, b = (await connect(0)).link, (await connect(1)).link
    settings = limited(1, queue_timeout=5)
    await Requests(nursery).start(0, SharedSlots(a, BACKEND, settings))

    waited: list[int] = []
    start = trio.current_time()
    with pytest.raises(Overloaded) as refused:
        async with SharedSlots(b, BACKEND, settings).hold(on_wait=lambda: waited.append(1)):
            pytest.fail("held a slot that was never free")
    assert trio.current_time() - start == pytest.approx(5)
    assert waited == [1]
    assert refused.value.status == 429
    assert refused.value.message == f"backend {BACKEND} is busy: no slot within 5 s"
    await settle()
    assert loads(a, b) == [(1, 0), (1, 0)]


async def test_two_slots_for_two_workers_go_to_six_requests_in_arrival_order(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    a, b = (await connect(0)).link, (await connect(1)).link
    slots = [SharedSlots(link, BACKEND, limited(2)) for link in (a, b)]
    requests = Requests(nursery)
    for i in range(6):  # alternately from each worker
        await requests.start(i, slots[i % 2])

    assert requests.granted == [0, 1]
    assert requests.waited == [2, 3, 4, 5]
    assert [(s.in_flight, s.queued) for s in slots] == [(2, 4), (2, 4)]

    # Whichever worker's request ends, the machine's longest waiter is next.
    for ends, next_in_line in [(1, 2), (0, 3), (3, 4), (2, 5)]:
        requests.finish(ends)
        await settle()
        assert requests.granted[-1] == next_in_line
        assert len(requests.granted) == next_in_line + 1
    assert loads(a, b) == [(2, 0), (2, 0)]
    requests.finish(4)
    requests.finish(5)
    await settle()

    assert requests.granted == [0, 1, 2, 3, 4, 5]
    assert requests.waited == [2, 3, 4, 5]  # on_wait once each, only for those that queued
    assert requests.peak == 2
    assert [(s.in_flight, s.queued) for s in slots] == [(0, 0), (0, 0)]


async def test_six_requests_at_once_never_hold_more_than_two_slots(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    holding = peak = done = 0
    seen: list[tuple[int, int]] = []

    async def request(link: ParentLink) -> None:
        nonlocal holding, peak, done
        async with SharedSlots(link, BACKEND, limited(2)).hold():
            holding += 1
            peak = max(peak, holding)
            seen.extend(loads(*links))
            await trio.sleep(1)
            holding -= 1
        done += 1

    start = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as requests:
            for i in range(6):
                requests.start_soon(request, links[i % 2])
    assert done == 6 and peak == 2
    assert trio.current_time() - start == pytest.approx(3, abs=0.1)  # three rounds of two
    assert all(in_flight <= 2 for in_flight, _ in seen)


async def test_workers_that_disagree_on_admission_settings_keep_a_limit_for_each(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    """A reload reaches the workers one by one; a restarted worker may read a file the
    others have not reloaded. Holds under either settings must not start the slots over."""
    a, b = (await connect(0)).link, (await connect(1)).link
    slots = [
        SharedSlots(a, BACKEND, limited(1, queue_timeout=30)),
        SharedSlots(b, BACKEND, limited(1, queue_timeout=60)),
    ]
    requests = Requests(nursery)
    for i in range(6):  # alternately under each
        await requests.start(i, slots[i % 2])

    assert requests.granted == [0, 1]  # one under each settings, at most
    assert requests.waited == [2, 3, 4, 5]
    assert loads(a, b) == [(2, 4), (2, 4)]  # the backend's, whatever the settings
    for ends, next_in_line in [(1, 3), (0, 2), (3, 5), (2, 4)]:
        requests.finish(ends)
        await settle()
        assert requests.granted[-1] == next_in_line
    requests.finish(4)
    requests.finish(5)
    await settle()
    assert requests.peak == 2
    assert loads(a, b) == [(0, 0), (0, 0)]


async def test_a_request_cancelled_in_the_queue_leaves_it_and_never_holds_a_slot(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    a, b = (await connect(0)).link, (await connect(1)).link
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(a, BACKEND, limited(1)))
    gone = await requests.start(1, SharedSlots(b, BACKEND, limited(1)))
    await requests.start(2, SharedSlots(a, BACKEND, limited(1)))
    assert loads(a, b) == [(1, 2), (1, 2)]

    gone.cancel()  # its client went away
    await settle()
    assert loads(a, b) == [(1, 1), (1, 1)]

    requests.finish(0)
    await settle()
    assert requests.granted == [0, 2]
    assert loads(a, b) == [(1, 0), (1, 0)]


async def test_a_release_read_before_its_hold_ran_still_frees_the_slot(
    autojump_clock: MockClock, connect: Connect
) -> None:
    link = (await connect(0)).link
    hold: Message = {  # the protocol's own words: gateway.machine's docstring
        "op": "hold",
        "backend": BACKEND,
        "admission": [1, 100, None, 429],
    }
    n = link.number(hold)
    # Sent before the writer runs, so in the same read for the parent as the hold.
    link.send({"op": "release", "n": n})
    await settle()
    assert loads(link) == [(0, 0)]
    async with link.exchange(hold) as (n, replies):
        assert await replies.receive() == {"n": n, "granted": True}  # not "queued"
        link.send({"op": "release", "n": n})


def said(replies: trio.MemoryReceiveChannel[Message]) -> list[str]:
    """What the parent has answered a hold since last asked: granted, queued, refused."""
    kinds = []
    while True:
        try:
            reply = replies.receive_nowait()
        except trio.WouldBlock:
            return kinds
        kinds.extend(kind for kind in ("granted", "queued", "refused") if kind in reply)


async def test_holds_read_at_once_join_the_queue_in_arrival_order(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """trio runs the tasks started in one step in either order (reversed half the time):
    over twenty rounds, an order that holds only by chance fails."""
    link = (await connect(0)).link
    hold: Message = {"op": "hold", "backend": BACKEND, "admission": [1, 2, None, 429]}
    for _ in range(20):
        async with AsyncExitStack() as exchanges:
            with trio.testing.assert_no_checkpoints():  # so all five go in one write
                holds = [await exchanges.enter_async_context(link.exchange(hold)) for _ in range(5)]
            await settle()
            assert [said(replies) for _, replies in holds] == [
                ["granted"],
                ["queued"],
                ["queued"],
                ["refused"],  # max_queue refuses the last to come, not the first
                ["refused"],
            ]
            for i in range(2):  # the slot goes down the queue in arrival order
                link.send({"op": "release", "n": holds[i][0]})
                await settle()
                assert [said(replies) for _, replies in holds] == [
                    ["granted"] if j == i + 1 else [] for j in range(5)
                ]
            link.send({"op": "release", "n": holds[2][0]})
            await settle()
            assert loads(link) == [(0, 0)]


async def test_holds_without_a_limit_wait_for_no_reply_but_count_as_in_flight(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """No message per request: each worker reports its counts, the parent adds them up,
    and a worker that goes away takes its count with it."""
    a_worker, b_worker = await connect(0), await connect(1)
    a, b = a_worker.link, b_worker.link
    unlimited = limited(None)
    async with AsyncExitStack() as holds:
        with trio.testing.assert_no_checkpoints():  # no round trip to the parent
            for link in (a, a, b):
                await holds.enter_async_context(SharedSlots(link, BACKEND, unlimited).hold())
        await settle()
        for link in (a, b):  # what least_busy reads: the machine's three, on either worker
            slots = SharedSlots(link, BACKEND, unlimited)
            assert (slots.in_flight, slots.queued) == (3, 0)
        await b_worker.leave()
        await settle()
        assert SharedSlots(a, BACKEND, unlimited).in_flight == 2
    await settle()
    assert loads(a) == [(0, 0)]


async def test_a_worker_that_connects_late_learns_the_loads_as_they_stand(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """A restarted worker must not see an idle backend until its load next changes."""
    a = (await connect(0)).link
    unlimited = limited(None)
    async with SharedSlots(a, BACKEND, unlimited).hold(), SharedSlots(a, BACKEND, unlimited).hold():
        await settle()
        late = (await connect(1)).link
        assert SharedSlots(late, BACKEND, unlimited).in_flight == 2


# --- team limits, shared ----------------------------------------------------------------


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


async def test_requests_per_minute_hold_across_workers(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(requests_per_minute=3),
        [*(Admit(i % 2, f"r{i}") for i in range(6)), Wait(60), Admit(1, "later")],
    )
    assert [d.exceeded for d in decisions] == [None] * 3 + ["requests"] * 3 + [None]
    refused = decisions[3]
    assert refused.retry_after == 60.0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[0].headers["x-ratelimit-remaining-requests"] == "2"


async def test_concurrent_streams_hold_across_workers_until_one_finishes(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(concurrent_streams=1),
        [
            Admit(0, "s1", stream=True),
            Admit(1, "s2", stream=True),
            Admit(1, "plain"),  # not a stream: not counted against the streams
            Finish("s1"),
            Admit(1, "s3", stream=True),
            Admit(0, "s4", stream=True),
        ],
    )
    assert [d.exceeded for d in decisions] == [
        None,
        "concurrent_streams",
        None,
        None,
        "concurrent_streams",
    ]
    assert decisions[1].retry_after == 1.0


async def test_finished_tokens_count_against_tokens_per_minute_on_every_worker(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(tokens_per_minute=100),
        [
            Admit(0, "r1"),
            Admit(1, "r2"),  # admitted: no tokens have finished yet
            Finish("r1", tokens=60),
            Admit(1, "r3"),
            Finish("r2", tokens=50),
            Admit(0, "r4"),
            Admit(1, "r5"),
            Wait(60),
            Admit(1, "r6"),
        ],
    )
    assert [d.exceeded for d in decisions] == [None, None, None, "tokens", "tokens", None]
    assert decisions[2].headers["x-ratelimit-remaining-tokens"] == "40"
    assert decisions[3].headers["x-ratelimit-remaining-tokens"] == "0"
    # 110 tokens in the window, r1's 60 finished two (virtual) seconds before r4 asked:
    # below the limit once they leave
    assert decisions[3].retry_after == pytest.approx(58)


async def test_a_stream_admission_cancelled_before_its_reply_gives_its_place_back(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """The parent counts the stream when it reads the admit; a caller cancelled meanwhile
    (a WebSocket turn whose socket closed) gets no ticket to finish it with."""
    a, b = (await connect(0)).link, (await connect(1)).link
    streams = Limits(concurrent_streams=1)
    with trio.CancelScope() as cancelled:
        cancelled.cancel()  # the admit is sent, then the wait for its reply is cancelled
        await ParentState(a).admit(TEAM, streams, id="s1", stream=True)
    assert cancelled.cancelled_caught
    await settle()
    decision, ticket = await ParentState(b).admit(TEAM, streams, id="s2", stream=True)
    assert decision.allowed and ticket is not None

    # One the parent refused gives back nothing: s2's place stays taken.
    with trio.CancelScope() as cancelled:
        cancelled.cancel()
        await ParentState(a).admit(TEAM, streams, id="s3", stream=True)
    await settle()
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s4", stream=True)
    assert decision.exceeded == "concurrent_streams"
    ticket.release(0)
    await settle()
    decision, _ = await ParentState(a).admit(TEAM, streams, id="s5", stream=True)
    assert decision.allowed


async def test_a_worker_that_goes_away_gives_back_its_slots_and_its_streams(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    dying, living = await connect(0), await connect(1)
    a, b = dying.link, living.link
    streams = Limits(concurrent_streams=1)
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(a, BACKEND, limited(1)))
    await requests.start(1, SharedSlots(a, BACKEND, limited(1)))
    await requests.start(2, SharedSlots(b, BACKEND, limited(1)))
    decision, _ = await ParentState(a).admit(TEAM, streams, id="s1", stream=True)
    assert decision.allowed
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s2", stream=True)
    assert decision.exceeded == "concurrent_streams"
    assert loads(b) == [(1, 2)]

    await dying.leave()
    await settle()

    assert requests.granted == [0, 2]  # the dead worker's waiter left the queue too
    assert loads(b) == [(1, 0)]
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s3", stream=True)
    assert decision.allowed


# --- collect ----------------------------------------------------------------------------


async def test_collect_gathers_every_worker_and_the_parent(
    autojump_clock: MockClock, machine: Machine, connect: Connect
) -> None:
    machine.reporters["metrics"] = answer("parent's metrics")
    links = [(await connect(worker)).link for worker in range(3)]
    metrics = [Metrics() for _ in links]
    for link, its in zip(links, metrics, strict=True):
        its.requests.inc(link.worker)
        link.reporters["metrics"] = its.report
        link.reporters["streams"] = answer([{"id": f"chatcmpl-{link.worker}"}])

    start = trio.current_time()
    assert await links[1].collect("metrics") == [
        {"worker": "parent", "body": "parent's metrics"},
        *({"worker": w, "body": metrics[w].report()} for w in range(3)),
    ]
    assert await links[2].collect("streams") == [  # the parent reports no streams
        {"worker": w, "body": [{"id": f"chatcmpl-{w}"}]} for w in range(3)
    ]
    assert trio.current_time() == start  # nobody waited for a timeout


async def test_collect_leaves_out_a_worker_that_does_not_answer(
    autojump_clock: MockClock, machine: Machine, connect: Connect
) -> None:
    machine.reporters["metrics"] = answer("parent's metrics")
    await connect(0, running=False)  # connected, asked first, never reads
    links = [(await connect(worker)).link for worker in (1, 2)]
    for link in links:
        link.reporters["metrics"] = Metrics().report

    start = trio.current_time()
    reports = await links[0].collect("metrics")
    assert trio.current_time() - start == pytest.approx(COLLECT_TIMEOUT)
    assert [report["worker"] for report in reports] == ["parent", 1, 2]


async def test_collect_leaves_out_a_worker_that_goes_away_without_waiting_for_it(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    silent = await connect(0, running=False)
    link = (await connect(1)).link
    link.reporters["metrics"] = answer("# worker 1's metrics\n")
    reports: list[list[dict[str, object]]] = []

    async def collect() -> None:
        reports.append(await link.collect("metrics"))

    start = trio.current_time()
    nursery.start_soon(collect)
    await trio.testing.wait_all_tasks_blocked()
    await silent.leave()
    await settle()
    assert reports == [[{"worker": 1, "body": "# worker 1's metrics\n"}]]
    assert trio.current_time() - start < COLLECT_TIMEOUT


async def test_merged_counters_never_go_down_when_a_worker_dies_or_restarts(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """Prometheus reads a counter that goes down as a reset (a spike in rate()): a worker
    that is gone still counts as it last reported; its gauges no longer say anything."""
    dying, living = await connect(0), (await connect(1)).link
    old, other = Metrics(), Metrics()
    dying.link.reporters["metrics"] = old.report
    living.reporters["metrics"] = other.report
    old.requests.inc(3)
    old.first_byte.observe(0.05)
    old.streams.set(2)
    other.requests.inc(5)
    other.first_byte.observe(0.5)
    other.streams.set(1)
    requests = ("gateway_requests_total", frozenset())
    fast = ("gateway_first_byte_seconds_bucket", frozenset({("le", "0.1")}))
    streams = {w: ("gateway_streams_active", frozenset({("worker", w)})) for w in "01"}

    before = await scrape(living)
    assert (before[requests], before[fast], before[streams["0"]]) == (8, 1, 2)
    await dying.leave()
    await settle()
    after = await scrape(living)
    assert went_down(before, after) == {}
    assert (after[requests], after[fast], after[streams["1"]]) == (8, 1, 1)
    assert streams["0"] not in after

    # Restarted under the same number, it counts from 0 again.
    reborn, new = (await connect(0)).link, Metrics()
    reborn.reporters["metrics"] = new.report
    new.requests.inc()
    again = await scrape(reborn)
    assert went_down(after, again) == {}
    assert (again[requests], again[fast], again[streams["0"]]) == (9, 1, 0)


async def test_a_worker_late_for_a_scrape_counts_as_it_last_reported(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    late = await connect(0, running=False)
    reading = trio.CancelScope()

    async def run() -> None:
        with reading:
            await late.link.run()

    nursery.start_soon(run)
    link = (await connect(1)).link
    slow, other = Metrics(), Metrics()
    late.link.reporters["metrics"] = slow.report
    link.reporters["metrics"] = other.report
    slow.requests.inc(3)
    slow.streams.set(2)
    other.requests.inc(5)
    before = await scrape(link)

    reading.cancel()  # still connected, but answers no more
    slow.requests.inc(4)  # never reported
    start = trio.current_time()
    after = await scrape(link)
    assert trio.current_time() - start == pytest.approx(COLLECT_TIMEOUT)
    assert after == before
    assert after[("gateway_requests_total", frozenset())] == 8


# --- the parent going away --------------------------------------------------------------


async def test_what_waits_on_a_parent_that_goes_away_is_refused_as_shutting_down(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    orphan, other = await connect(0), await connect(1)
    await connect(2, running=False)  # keeps a collect waiting
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(other.link, BACKEND, limited(1)))
    await requests.start(1, SharedSlots(orphan.link, BACKEND, limited(1)))
    assert requests.waited == [1]
    asked: list[BaseException] = []

    async def ask() -> None:
        try:
            await orphan.link.collect("metrics")
        except ShuttingDown as refused:
            asked.append(refused)

    nursery.start_soon(ask)
    await trio.testing.wait_all_tasks_blocked()
    assert not orphan.link.lost.is_set()

    await orphan.parent_end.aclose()
    await settle()

    assert orphan.link.lost.is_set()
    assert isinstance(requests.refused[1], ShuttingDown)
    assert requests.refused[1].status == 503
    assert len(asked) == 1
    assert loads(other.link) == [(1, 0)]  # the machine dropped the orphan's place in the queue


async def test_a_worker_without_its_parent_refuses_new_asks_as_shutting_down(
    autojump_clock: MockClock, connect: Connect
) -> None:
    orphan = await connect(0)
    await orphan.parent_end.aclose()
    with trio.fail_after(1):
        await orphan.link.lost.wait()

    with pytest.raises(ShuttingDown, match="lost its parent process"):
        await orphan.link.ask({"op": "collect", "what": "metrics"})
    with pytest.raises(ShuttingDown):
        await ParentState(orphan.link).admit(TEAM, Limits(), id="r", stream=False)
    for settings in (limited(1), limited(None)):
        with pytest.raises(ShuttingDown):
            async with SharedSlots(orphan.link, BACKEND, settings).hold():
                pytest.fail("held a slot with no parent to keep it")


# --- the line: gateway.control ----------------------------------------------------------


def burst() -> list[Message]:
    """Messages of many sizes, some far larger than a socket's buffer, some not ASCII."""
    return [
        {"op": "report", "n": n, "body": "é✓" * (n * 7919 % 30_000), "nested": {"n": [n] * 3}}
        for n in range(100)
    ]


async def test_a_burst_arrives_in_order_and_intact_over_a_socket() -> None:
    ours, theirs = trio.socket.socketpair()
    sender, receiver = Channel(trio.SocketStream(ours)), Channel(trio.SocketStream(theirs))
    sent = burst()
    for message in sent:
        sender.send(message)
    received: list[Message] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run_writer)
        async for message in receiver:
            received.append(message)
            if len(received) == len(sent):
                nursery.cancel_scope.cancel()  # ends the read, and the writer
    assert received == sent
    await sender.stream.aclose()
    await receiver.stream.aclose()


async def test_a_burst_queued_before_the_writer_runs_is_one_write() -> None:
    writes: list[bytes] = []
    out = trio.testing.MemorySendStream()

    async def record() -> None:
        writes.append(bytes(out.get_data_nowait()))

    out.send_all_hook = record
    channel = Channel(trio.StapledStream(out, trio.testing.MemoryReceiveStream()))
    sent = burst()[:20]
    for message in sent:
        channel.send(message)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(writes) == 1
    assert [json.loads(line) for line in writes[0].splitlines()] == sent


async def read_in_two(data: bytes, split: int) -> list[Message]:
    """What a Channel reads from ``data`` arriving in two reads, split at ``split``."""
    incoming = trio.testing.MemoryReceiveStream()
    channel = Channel(trio.StapledStream(trio.testing.MemorySendStream(), incoming))
    received: list[Message] = []

    async def read() -> None:
        async for message in channel:
            received.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        incoming.put_data(data[:split])
        await trio.testing.wait_all_tasks_blocked()
        incoming.put_data(data[split:])
        incoming.put_eof()
    return received


async def test_messages_split_at_every_byte_are_put_back_together() -> None:
    sent: list[Message] = [{"op": "load", "loads": {"b": [1, 2]}}, {"n": 7, "text": "ü\n✓"}, {}]
    data = b"".join(json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in sent)
    for split in range(1, len(data)):
        assert await read_in_two(data, split) == sent, split


async def test_a_send_after_the_peer_is_gone_is_dropped() -> None:
    ours, theirs = trio.socket.socketpair()
    channel = Channel(trio.SocketStream(ours))
    theirs.close()
    channel.send({"op": "ready"})
    await channel.run_writer()  # returns: the peer is gone
    channel.send({"op": "ready"})  # the writer has stopped: dropped, no error
    await channel.stream.aclose()
