"""One ``/metrics`` for every worker: the parent collects each worker's exposition
(``gateway.machine``) and merges them (``gateway.metrics_merge``); workers that do not
answer, go away or restart. MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway.machine import COLLECT_TIMEOUT, Machine

from .helpers import (
    Connect,
    Metrics,
    answer,
    scrape,
    settle,
    went_down,
)


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
