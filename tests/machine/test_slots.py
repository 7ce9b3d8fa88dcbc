"""Backend slots shared by the workers of one machine (``gateway.machine`` with
``gateway.worker_link``): ``max_concurrency``, the FIFO queue, ``queue_timeout`` and the
load every worker sees, each worker a ParentLink on a real socket pair. MockClock."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway.control import Message
from gateway.errors import Overloaded
from gateway.worker_link import ParentLink, SharedSlots

from .helpers import (
    BACKEND,
    Connect,
    Requests,
    limited,
    loads,
    said,
    settle,
)


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
