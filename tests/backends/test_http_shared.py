"""The shared pieces of the watching HTTP backends: metric parsing and the status poller."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from backends._http import parse_metrics, poll_status
from gateway.abc import BackendStatus

EXPOSITION = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 2.0
vllm:num_requests_running{model_name="b"} 1.0
# TYPE vllm:request_success counter
vllm:request_success_total{finished_reason="stop"} 7.0
"""


def test_parse_metrics_sums_label_sets() -> None:
    assert parse_metrics(EXPOSITION) == {
        "vllm:num_requests_running": 3.0,
        "vllm:request_success_total": 7.0,
    }


def test_parse_metrics_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus\n")


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
