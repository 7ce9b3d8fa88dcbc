"""``llamacpp-python``'s InstanceLender on its own (no model): a fixed set of instances, each
lent to one borrower at a time, waiters in FIFO order, closing that refuses the line and
waits for what is lent."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from backends.llamacpp_python._lender import InstanceLender


def test_a_lender_needs_an_instance() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InstanceLender([])


async def test_closing_refuses_the_line_and_waits_for_what_is_lent() -> None:
    lender = InstanceLender(["a"])
    lent = await lender.acquire()
    refused: list[str] = []
    closed = trio.Event()

    async def wait_in_line() -> None:
        try:
            await lender.acquire()
        except trio.ClosedResourceError:
            refused.append("waiter")

    async def close() -> None:
        await lender.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_in_line)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # "a" is still lent
        lender.release(lent)
    assert closed.is_set()
    assert refused == ["waiter"]
    with pytest.raises(trio.ClosedResourceError):
        await lender.acquire()


async def test_a_cancelled_waiter_leaves_the_line_with_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lender = InstanceLender(["a"])
    lent = await lender.acquire()
    with trio.move_on_after(1) as scope:
        await lender.acquire()
    assert scope.cancelled_caught
    assert lender.busy == 1
    lender.release(lent)
    assert lender.busy == 0
    assert await lender.acquire() == "a"


async def test_waiters_are_served_first_come_first_served() -> None:
    lender = InstanceLender(["a", "b"])
    first, second = await lender.acquire(), await lender.acquire()
    assert {first, second} == {"a", "b"} and lender.busy == 2
    served: list[int] = []

    async def borrow(n: int) -> None:
        instance = await lender.acquire()
        served.append(n)
        lender.release(instance)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(borrow, n)
            await trio.testing.wait_all_tasks_blocked()  # n is in line before n + 1
        lender.release(first)
    assert served == [0, 1, 2, 3]
    lender.release(second)
    assert lender.busy == 0
