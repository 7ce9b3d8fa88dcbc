"""The slot gate of the ``llamacpp`` backend: requests are let through to llama-server in
arrival order, no more than it has free slots for (its own count, plus what the last poll
showed other clients using); a waiter that is cancelled leaves no trace."""

from __future__ import annotations

import trio
import trio.testing

from backends.llamacpp._slots import SlotGate


async def _hold(gate: SlotGate, name: str, order: list[str], release: trio.Event) -> None:
    async with gate.slot():
        order.append(name)
        await release.wait()


async def test_unknown_slot_count_lets_everything_through() -> None:
    gate = SlotGate()
    async with gate.slot(), gate.slot(), gate.slot():
        assert (gate.own, gate.waiting) == (3, 0)
    assert gate.own == 0


async def test_slots_are_granted_in_arrival_order() -> None:
    gate = SlotGate()
    gate.observe(total=2, running=0, queued=0)
    order: list[str] = []
    releases = {name: trio.Event() for name in "abcde"}
    async with trio.open_nursery() as nursery:
        for name in "abcde":
            nursery.start_soon(_hold, gate, name, order, releases[name])
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b"] and gate.waiting == 3
        releases["b"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c"]
        releases["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c", "d"]
        for event in releases.values():
            event.set()
    assert order == list("abcde") and (gate.own, gate.waiting) == (0, 0)


async def test_other_clients_seen_by_the_poll_take_slots_too() -> None:
    gate = SlotGate()
    gate.observe(total=1, running=1, queued=0)  # someone else is generating
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, gate, "mine", order, release)
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and gate.waiting == 1
        gate.observe(total=1, running=1, queued=1)  # still busy, one more queued there
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        gate.observe(total=1, running=0, queued=0)  # free now
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["mine"]
        # The next poll counts this backend's own request in `running`: not an other's.
        gate.observe(total=1, running=1, queued=0)
        assert (gate.own, gate.others) == (1, 0)
        release.set()


async def test_a_cancelled_waiter_leaves_the_line_and_never_holds_a_slot() -> None:
    gate = SlotGate()
    gate.observe(total=1, running=0, queued=0)
    order: list[str] = []
    first, second = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, gate, "first", order, first)
        await trio.testing.wait_all_tasks_blocked()
        waiter = trio.CancelScope()

        async def leaves() -> None:
            with waiter:
                await _hold(gate, "leaves", order, trio.Event())

        nursery.start_soon(leaves)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_hold, gate, "second", order, second)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 2
        waiter.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 1
        first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first", "second"]
        second.set()
    assert (gate.own, gate.waiting) == (0, 0)


async def test_granted_and_cancelled_in_the_same_moment_gives_the_slot_back() -> None:
    gate = SlotGate()
    gate.observe(total=1, running=1, queued=0)  # busy with another client's request
    scope = trio.CancelScope()
    order: list[str] = []

    async def waits() -> None:
        with scope:
            await _hold(gate, "waiter", order, trio.Event())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waits)
        await trio.testing.wait_all_tasks_blocked()
        gate.observe(total=1, running=0, queued=0)  # free: granted to the waiter...
        scope.cancel()  # ...which is cancelled before it runs again
    assert (gate.own, gate.waiting) == (0, 0)
    async with gate.slot():  # and the slot is free for the next one
        assert gate.own == 1
