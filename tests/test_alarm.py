"""gateway.alarm: many sleepers on one timer wake at their own deadlines, leave at once when
cancelled, and cost far less than trio's sleep each."""

from __future__ import annotations

import gc
import tracemalloc

import trio
import trio.testing
from trio.testing import MockClock

from gateway import alarm


async def test_sleepers_wake_at_their_own_deadlines(autojump_clock: MockClock) -> None:
    start = trio.current_time()
    woke: list[tuple[int, float]] = []

    async def sleeper(n: int, after: float) -> None:
        await alarm.sleep_until(start + after)
        woke.append((n, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        # The later ones first: each earlier one must lower the timer's deadline.
        for n, after in enumerate([5.0, 3.0, 3.0, 1.0, 4.5, 0.5]):
            nursery.start_soon(sleeper, n, after)
    assert sorted(woke, key=lambda w: w[1]) == woke  # in deadline order
    assert dict(woke) == {0: 5.0, 1: 3.0, 2: 3.0, 3: 1.0, 4: 4.5, 5: 0.5}


async def test_a_sleeper_added_while_the_timer_waits_for_a_later_one(
    autojump_clock: MockClock,
) -> None:
    start = trio.current_time()
    woke: dict[str, float] = {}

    async def sleeper(name: str, after: float) -> None:
        await alarm.sleep_until(start + after)
        woke[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "late", 10.0)
        await trio.sleep(1)  # the timer sleeps until 10 now
        nursery.start_soon(sleeper, "early", 2.0)
    assert woke == {"early": 2.0, "late": 10.0}


async def test_a_cancelled_sleeper_leaves_at_once_and_is_not_woken(
    autojump_clock: MockClock,
) -> None:
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        await alarm.sleep_until(start + 5)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 1
    # Its deadline passes with the task asleep elsewhere: waking it would crash the run.
    await trio.sleep(10)
    woke = []

    async def sleeper() -> None:
        await alarm.sleep_until(trio.current_time() + 1)
        woke.append(trio.current_time() - start)

    await sleeper()
    assert woke == [12.0]


async def test_a_deadline_past_returns_at_the_next_tick(autojump_clock: MockClock) -> None:
    before = trio.current_time()
    await alarm.sleep_until(before - 1)
    assert trio.current_time() == before


async def test_a_sleeper_holds_a_fraction_of_trios_sleep(autojump_clock: MockClock) -> None:
    """What 200 sleeping tasks hold, beyond the tasks themselves: trio's sleep_until
    against this one."""

    async def held(sleep) -> int:
        async with trio.open_nursery() as nursery:
            deadline = trio.current_time() + 60
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for _ in range(200):
                    nursery.start_soon(sleep, deadline)
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                size = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
        return size

    await alarm.sleep_until(trio.current_time())  # the timer's task exists already
    trios, ours = await held(trio.sleep_until), await held(alarm.sleep_until)
    assert trios - ours > 200 * 600  # bytes: ≈ 0.9 KiB less per sleeping task
