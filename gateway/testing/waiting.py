"""Waiting on state that offers no event to wait on.

Tests wait on state, never on a fixed sleep. Where the state has an event of its own (a
``trio.Event``, ``InFlight.wait_empty()``), wait on that. Where it does not — a counter of a
fake server, a line in another process's log, a breaker's clock — :func:`wait_until` polls
the condition under a deadline: it returns as soon as the state is reached and fails loudly
(``trio.TooSlowError``) when it is not reached in time. No timing logic may rest on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

__all__ = ["wait_until"]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 5.0,
    interval: float = 0.005,
) -> float:
    """Return once ``condition()`` (plain or async) is true; the seconds it took.

    Raises ``trio.TooSlowError`` if it is still false after ``within`` seconds.
    """
    start = trio.current_time()
    with trio.fail_after(within):
        while True:
            reached = condition()
            if inspect.isawaitable(reached):
                reached = await reached
            if reached:
                return trio.current_time() - start
            await trio.sleep(interval)
