"""Prometheus text exposition, read: what the watching backends (``llamacpp`` and ``vllm``)
take from their upstream's ``/metrics``. Sans-I/O: text in, numbers out."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each sample name over its label sets: ``{"vllm:num_requests_running": 3.0}``.

    Names keep their exposition form (counters keep ``_total``). A malformed exposition
    raises ``ValueError``.
    """
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals
