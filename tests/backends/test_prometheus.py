"""Reading a Prometheus text exposition, as the watching backends do with /metrics."""

from __future__ import annotations

import pytest

from backends._prometheus import parse_metrics

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
