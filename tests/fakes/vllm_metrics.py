"""vLLM's ``/metrics`` exposition, sans I/O: the scheduler gauges and a few counters, written
with ``prometheus_client`` as vLLM writes them.

Names, help texts and labels are read from vLLM's source (no code copied):

* ``v1`` — v0.12.0 ``vllm/v1/metrics/loggers.py`` ``PrometheusStatLogger``: gauges
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
  ``vllm:kv_cache_usage_perc``, labelled ``model_name`` and ``engine`` with one series per
  data-parallel engine; counters ``vllm:prompt_tokens``, ``vllm:generation_tokens`` and
  ``vllm:request_success`` (``finished_reason`` label), exposed with ``_total``; the
  histogram ``vllm:e2e_request_latency_seconds`` with vLLM's buckets. As in vLLM, the
  exposition also carries ``prometheus_client``'s own ``python_*`` families (default
  registry), so a reader must pick vLLM's names out of a larger text.
* ``v0.9`` — v0.9.2 and v0.10.1.1 ``loggers.py``: the same, plus the deprecated
  ``vllm:gpu_cache_usage_perc`` beside ``vllm:kv_cache_usage_perc``.
* ``v0`` — v0.9.2 ``vllm/engine/metrics.py`` (the V0 engine): only
  ``vllm:gpu_cache_usage_perc`` for the cache, every series labelled ``model_name`` only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["CONTENT_TYPE", "EngineLoad", "MetricsVersion", "exposition"]

MetricsVersion = Literal["v1", "v0.9", "v0"]
CONTENT_TYPE: str = CONTENT_TYPE_PLAIN_0_0_4
# v0.12.0 loggers.py request_latency_buckets
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What one engine's scheduler reports."""

    running: int
    waiting: int
    cache_usage: float
    latencies: tuple[float, ...] = ()  # seconds, one per finished request


def exposition(
    version: MetricsVersion,
    model_name: str,
    engines: Sequence[EngineLoad],
    counters: Mapping[str, int],
) -> bytes:
    """The ``/metrics`` body. ``counters`` has ``prompt``, ``generation``, ``stop``,
    ``length`` and ``abort``."""
    registry = CollectorRegistry(auto_describe=False)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(_Collector(version, model_name, engines, counters))
    return generate_latest(registry)


class _Collector:
    def __init__(
        self,
        version: MetricsVersion,
        model_name: str,
        engines: Sequence[EngineLoad],
        counters: Mapping[str, int],
    ) -> None:
        self._v0 = version == "v0"
        self._version = version
        self._model = model_name
        # The V0 engine has no per-engine series: one series for the whole server.
        self._engines = (
            [
                EngineLoad(
                    sum(e.running for e in engines),
                    sum(e.waiting for e in engines),
                    max(e.cache_usage for e in engines),
                    tuple(t for e in engines for t in e.latencies),
                )
            ]
            if self._v0
            else engines
        )
        self._counters = counters
        self._labels = ["model_name"] if self._v0 else ["model_name", "engine"]

    def _values(self, engine: int) -> list[str]:
        return [self._model] if self._v0 else [self._model, str(engine)]

    def _gauge(self, name: str, doc: str, values: Sequence[float]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=self._labels)
        for engine, value in enumerate(values):
            family.add_metric(self._values(engine), value)
        return family

    def collect(self) -> Iterator[Metric]:
        engines = self._engines
        yield self._gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            [e.running for e in engines],
        )
        yield self._gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            [e.waiting for e in engines],
        )
        cache = [e.cache_usage for e in engines]
        if self._version in ("v0", "v0.9"):
            deprecated = "" if self._v0 else " DEPRECATED: Use vllm:kv_cache_usage_perc instead."
            yield self._gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage." + deprecated,
                cache,
            )
        if not self._v0:
            yield self._gauge(
                "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", cache
            )
        for name, doc, key in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt"),
            ("vllm:generation_tokens", "Number of generation tokens processed.", "generation"),
        ):
            counter = CounterMetricFamily(name, doc, labels=self._labels)
            counter.add_metric(self._values(0), self._counters[key])
            yield counter
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*self._labels, "finished_reason"],
        )
        for reason in ("stop", "length", "abort"):
            success.add_metric([*self._values(0), reason], self._counters[reason])
        yield success
        latency = HistogramMetricFamily(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels=self._labels,
        )
        for index, engine in enumerate(engines):
            buckets = [
                (str(bound), float(sum(1 for t in engine.latencies if t <= bound)))
                for bound in LATENCY_BUCKETS
            ]
            buckets.append(("+Inf", float(len(engine.latencies))))
            latency.add_metric(self._values(index), buckets, sum(engine.latencies))
        yield latency
