"""The status poller shared by the backends that watch their upstream."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from backends._polling import poll_status
from gateway.abc import BackendStatus


async def test_poller_publishes_and_survives_errors(autojump_clock: MockClock) -> None:
    answers = iter(
        [
            BackendStatus(health="loading"),
            RuntimeError("boom"),
            BackendStatus(health="ready", running=1),
        ]
    )
    published: list[BackendStatus] = []

    async def check() -> BackendStatus:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with trio.move_on_after(2.5):
        await poll_status("b", 1.0, check, published.append)
    assert [s.health for s in published] == ["loading", "down", "ready"]
    assert "boom" in published[1].detail
    assert published[2].running == 1
    assert [s.checked_at for s in published] == [0.0, 1.0, 2.0]
