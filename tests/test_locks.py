"""gateway.locks.acquire: a free lock at once, a held one in line."""

from __future__ import annotations

import trio
import trio.testing

from gateway.locks import acquire


async def test_a_free_lock_is_taken_without_a_checkpoint() -> None:
    lock, slots = trio.Lock(), trio.Semaphore(1)
    with trio.testing.assert_no_checkpoints():
        await acquire(lock)
        await acquire(slots)
    assert lock.locked() and slots.value == 0
    lock.release()
    slots.release()


async def test_a_held_lock_is_waited_for_in_arrival_order() -> None:
    lock = trio.Lock()
    await acquire(lock)
    order: list[int] = []

    async def take(i: int) -> None:
        await acquire(lock)
        order.append(i)
        lock.release()

    async def give_up(scope: trio.CancelScope) -> None:
        with scope:
            await acquire(lock)
        order.append(-1)

    quitter = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(give_up, quitter)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2):
            nursery.start_soon(take, i)
            await trio.testing.wait_all_tasks_blocked()
        quitter.cancel()  # a waiter that gives up leaves its place, and nothing else
        await trio.testing.wait_all_tasks_blocked()
        assert order == [-1]
        lock.release()
    assert order == [-1, 0, 1, 2]
    assert not lock.locked()
