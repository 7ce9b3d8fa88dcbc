"""A sleep for the many tasks of a process that each wait between heartbeats, on one trio
timer.

:func:`trio.sleep_until` is a cancel scope with a deadline around
:func:`trio.sleep_forever`: ≈ 1 KiB for each sleeping task — the scope, its cancel status
and that status's two sets, two frames, the deadline's entries in trio's heap. Every idle
stream holds one between two heartbeats, that is, for all of its life. Here a sleeper is
one small object in a heap, and one system task per trio run sleeps until the earliest
deadline and wakes every sleeper whose time has come. A cancelled sleeper leaves at once,
as from any trio sleep (its heap entry is dropped when its time comes).
"""

from __future__ import annotations

import heapq
import math

import trio

__all__ = ["sleep_until"]


class _Sleeper:
    __slots__ = ("deadline", "task")

    def __init__(self, deadline: float, task: trio.lowlevel.Task) -> None:
        self.deadline = deadline
        self.task: trio.lowlevel.Task | None = task

    def __lt__(self, other: _Sleeper) -> bool:
        return self.deadline < other.deadline

    def abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None  # cancelled: not to be woken
        return trio.lowlevel.Abort.SUCCEEDED


class _Alarm:
    """The sleepers of one trio run, and the task that wakes them."""

    __slots__ = ("_heap", "_scope")

    def __init__(self) -> None:
        self._heap: list[_Sleeper] = []
        # The scope the task sleeps in next (its deadline lowered by every earlier sleeper).
        self._scope = trio.CancelScope()

    def add(self, sleeper: _Sleeper) -> None:
        heapq.heappush(self._heap, sleeper)
        if sleeper.deadline < self._scope.deadline:
            self._scope.deadline = sleeper.deadline

    async def run(self) -> None:
        heap = self._heap
        while True:
            with self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0].deadline <= now:
                sleeper = heapq.heappop(heap)
                if sleeper.task is not None:
                    trio.lowlevel.reschedule(sleeper.task)
                    sleeper.task = None
            self._scope = trio.CancelScope(deadline=heap[0].deadline if heap else math.inf)


_ALARM: trio.lowlevel.RunVar[_Alarm] = trio.lowlevel.RunVar("gateway.alarm")


async def sleep_until(deadline: float) -> None:
    """Sleep until ``deadline`` (trio's clock), as :func:`trio.sleep_until` does."""
    try:
        alarm = _ALARM.get()
    except LookupError:
        alarm = _Alarm()
        _ALARM.set(alarm)
        trio.lowlevel.spawn_system_task(alarm.run, name="gateway.alarm")
    sleeper = _Sleeper(deadline, trio.lowlevel.current_task())
    alarm.add(sleeper)
    await trio.lowlevel.wait_task_rescheduled(sleeper.abort)
