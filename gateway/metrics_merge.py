"""One ``/metrics`` scrape for every worker process: their expositions merged into one.

Each worker keeps its own registry (:class:`gateway.telemetry.Telemetry`); a scrape asks
every worker for its text (:mod:`gateway.machine`) and merges them here. Counters,
histograms and summaries are summed series by series, so a rate or a quantile over the
scrape covers the machine. Gauges are kept per process with a ``worker`` label (the
parent's own with ``worker="parent"``): a sum would be wrong for most of them (the
backends' machine-wide in-flight counts, which every worker reports alike; a config
digest), and ``sum by`` gives the total where one makes sense.

A summed series must never go down while the gateway runs (Prometheus reads a drop as a
counter reset), yet a worker's counts die with it, and its restart counts from 0 again.
So the parent keeps, with :func:`add_cumulative`, the sums of the last reports of the
workers that are gone — their cumulative series only: a dead worker's gauges no longer
say anything true — and every later scrape merges that total in as one more report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["add_cumulative", "merge_expositions"]

# The kinds whose samples only ever grow (a histogram's buckets, _sum and _count too):
# summed across processes, and kept for the processes that are gone.
_SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class _Fixed:
    """A collector of metric families made already."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(reports: Iterable[tuple[str, str]]) -> bytes:
    """The text exposition of ``reports`` (``(worker, text)``) merged as the module says."""
    return _merge(reports, gauges=True)


def add_cumulative(total: str, report: str) -> str:
    """``total`` with the counters, histograms and summaries of ``report`` (a worker's
    last exposition, the worker gone) added series by series; ``report``'s gauges, and
    any other kind, are left out. ``total`` is ``""`` or what this returned before."""
    return _merge([("", total), ("", report)], gauges=False).decode()


def _merge(reports: Iterable[tuple[str, str]], *, gauges: bool) -> bytes:
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in reports:
        for family in text_string_to_metric_families(text):
            summed = family.type in _SUMMED
            if not (summed or gauges):
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                sums[family.name] = {}
            if summed:
                series = sums[family.name]
                for sample in family.samples:
                    # Sorted: a retired total comes back from the writer with its labels
                    # in another order than a live worker's.
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    series[key] = series.get(key, 0.0) + sample.value
            else:
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "worker": worker}, s.value) for s in family.samples
                )
    for name, series in sums.items():
        families[name].samples.extend(
            Sample(sample, dict(labels), value) for (sample, labels), value in series.items()
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)
