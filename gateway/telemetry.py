"""Prometheus metrics and the access log: what every request did, in one place.

Metric names follow Prometheus conventions (``trio_gateway_`` prefix, ``_total`` counters,
``_seconds`` histograms, base units). Labels are route, backend, endpoint, status, outcome,
phase and form — names from the config and small fixed sets, never request ids, keys or the
client's model string — so their cardinality is bounded whatever clients send. A request
for an unknown model is counted under ``route=""``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .inflight import InFlight

access_log = logging.getLogger("gateway.access")

# `_created` timestamps double every series and say nothing an operator needs here.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def config_reloads_counter(registry: CollectorRegistry) -> Counter:
    """``trio_gateway_config_reloads_total`` in ``registry``: a worker's, or the parent's
    (which refuses a bad file before any worker sees it), merged into one by the scrape."""
    return Counter(
        "trio_gateway_config_reloads",
        "Config reloads (SIGHUP): applied (result=ok) or refused (result=rejected, "
        "the running config kept).",
        ["result"],
        registry=registry,
    )


class Telemetry:
    """The gateway's metrics, in a registry of its own (one per gateway instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Children by (metric, label values): prometheus-client's own lookup takes a lock
        # and rebuilds the key on every call; label values are config names and fixed sets,
        # so this stays as small as the set of series.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "trio_gateway_requests",
            "Requests answered, by final status and outcome.",
            ["route", "backend", "endpoint", "status", "outcome"],
            registry=r,
        )
        self.streams_active = Gauge(
            "trio_gateway_streams_active", "Streaming requests in flight.", ["route"], registry=r
        )
        self.first_byte = Histogram(
            "trio_gateway_upstream_first_byte_seconds",
            "From request to the first upstream body byte.",
            ["route", "backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.first_token = Histogram(
            "trio_gateway_first_token_seconds",
            "From request to the first data event written to the client (streams).",
            ["route", "backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "trio_gateway_upstream_duration_seconds",
            "Time spent in upstream exchanges.",
            ["route", "backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "trio_gateway_overhead_seconds",
            "The gateway's own time per request: total less upstream and queue time.",
            ["route"],
            buckets=_OVERHEAD,
            registry=r,
        )
        self.tokens = Counter(
            "trio_gateway_tokens",
            "Tokens reported by upstream usage.",
            ["route", "backend", "kind"],
            registry=r,
        )
        self.heartbeats = Counter(
            "trio_gateway_heartbeats", "Heartbeats written to clients.", ["route"], registry=r
        )
        self.disconnects = Counter(
            "trio_gateway_client_disconnects",
            "Clients that went away, by the phase they were in.",
            ["route", "phase"],
            registry=r,
        )
        self.cancellations = Counter(
            "trio_gateway_upstream_cancellations",
            "Upstream requests closed early because the client went away or shutdown.",
            ["route", "backend"],
            registry=r,
        )
        self.failovers = Counter(
            "trio_gateway_failovers",
            "Attempts that failed and moved on to the next target.",
            ["route", "backend"],
            registry=r,
        )
        self.ejections = Counter(
            "trio_gateway_ejections",
            "Backends taken out of rotation by passive health.",
            ["backend"],
            registry=r,
        )
        self.late_errors = Counter(
            "trio_gateway_late_errors",
            "Errors told after a 200 was committed: an SSE error event ending a stream "
            "(form=event), or an error object cut short after whitespace keepalive "
            "(form=cut_body).",
            ["route", "backend", "form"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "trio_gateway_queue_wait_seconds",
            "Time requests waited for a backend slot.",
            ["backend"],
            buckets=_LATENCY,
            registry=r,
        )

        self.config_reloads = config_reloads_counter(r)
        self.config_info = Gauge(
            "trio_gateway_config_info",
            "The config in force: 1 for the sha256 (first 16 hex digits) of its file.",
            ["hash"],
            registry=r,
        )

    def on_config(self, digest: str) -> None:
        """The config whose file hashes to ``digest`` is now in force."""
        self.config_info.clear()
        self.config_info.labels(digest).set(1)

    def on_reload(self, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "rejected").inc()

    def _child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def attach(self, read: Callable[[], Iterable[UpstreamGauges]]) -> None:
        """Expose the gateway's live state (queues, backend health and load): ``read`` is
        called at every scrape, in the scraping task, and must not block."""
        self.registry.register(_UpstreamCollector(read))

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    # Hooks called by the relay.

    def on_start(self, entry: InFlight) -> None:
        if entry.stream:
            self._child(self.streams_active, entry.route).inc()
        entry.on_heartbeat = self._count_heartbeat

    def _count_heartbeat(self, entry: InFlight) -> None:
        self._child(self.heartbeats, entry.route).inc()

    def on_failover(self, entry: InFlight, backend: str) -> None:
        self._child(self.failovers, entry.route, backend).inc()

    def on_ejection(self, backend: str) -> None:
        self._child(self.ejections, backend).inc()

    def on_late_error(self, entry: InFlight, form: str) -> None:
        self._child(self.late_errors, entry.route, entry.backend, form).inc()

    def on_finish(self, entry: InFlight) -> None:
        """Count a finished relayed request and write its access-log line."""
        route, backend = entry.route, entry.backend
        if entry.stream:
            self._child(self.streams_active, route).dec()
        status = str(entry.status) if entry.status is not None else "499"
        self._child(
            self.requests, route, backend, entry.endpoint, status, entry.outcome or "error"
        ).inc()
        if entry.first_byte_at is not None:
            self._child(self.first_byte, route, backend).observe(
                entry.first_byte_at - entry.started_at
            )
        if entry.first_token_at is not None and entry.stream:
            self._child(self.first_token, route, backend).observe(
                entry.first_token_at - entry.started_at
            )
        if entry.upstream_seconds:
            self._child(self.upstream_duration, route, backend).observe(entry.upstream_seconds)
        if entry.queue_seconds:
            self._child(self.queue_wait, backend).observe(entry.queue_seconds)
        if entry.ended_at is not None:
            total = entry.ended_at - entry.started_at
            self._child(self.overhead, route).observe(
                max(0.0, total - entry.upstream_seconds - entry.queue_seconds)
            )
        if entry.prompt_tokens:
            self._child(self.tokens, route, backend, "prompt").inc(entry.prompt_tokens)
        if entry.completion_tokens:
            self._child(self.tokens, route, backend, "completion").inc(entry.completion_tokens)
        if entry.outcome == "client_gone":
            self._child(self.disconnects, route, entry.disconnect_phase or "unknown").inc()
        if entry.outcome in ("client_gone", "shutdown") and entry.disconnect_phase in (
            "connecting",
            "prefill",
            "streaming",
        ):
            self._child(self.cancellations, route, backend).inc()
        if access_log.isEnabledFor(logging.INFO):
            write_access_log(_entry_fields(entry))

    def on_answered(
        self,
        *,
        route: str,
        endpoint: str,
        status: int,
        fields: Mapping[str, Any],
        outcome: str | None = None,
    ) -> None:
        """Count a request the gateway answered itself (bad input, unknown model, model
        list, health...) and write its access-log line; ``outcome`` by default from the
        status (``client_gone`` for one whose client left before it was answered)."""
        outcome = outcome or ("completed" if status < 400 else "rejected")
        self._child(self.requests, route, "", endpoint, str(status), outcome).inc()
        write_access_log({**fields, "route": route, "status": status, "outcome": outcome})


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _entry_fields(entry: InFlight) -> dict[str, Any]:
    end = entry.ended_at if entry.ended_at is not None else entry.started_at
    return {
        "request_id": entry.request_id,
        "route": entry.route,
        "backend": entry.backend,
        "endpoint": entry.endpoint,
        "model": entry.model,
        "status": entry.status if entry.status is not None else 499,
        "stream": entry.stream,
        "outcome": entry.outcome,
        "phase": entry.disconnect_phase,
        "ttft_ms": _ms(
            None if entry.first_token_at is None else entry.first_token_at - entry.started_at
        ),
        "duration_ms": _ms(end - entry.started_at),
        "upstream_ms": _ms(entry.upstream_seconds),
        "queue_ms": _ms(entry.queue_seconds),
        "bytes": entry.bytes_out,
        "heartbeats": entry.heartbeats,
        "attempts": list(entry.attempts),
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        # With teams: who sent it, by key fingerprint (never the key).
        **({"team": entry.team, "key_id": entry.key_id} if entry.team else {}),
        **({"connection": entry.connection} if entry.connection else {}),
    }


PROCESS_FIELDS: dict[str, Any] = {}
"""Fields every access-log line of this process carries (a worker's ``worker`` id)."""


def write_access_log(fields: Mapping[str, Any]) -> None:
    """One JSON line per request. Carries no headers and no body: nothing secret."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            json.dumps(
                {"ts": round(time.time(), 3), **PROCESS_FIELDS, **fields}, separators=(",", ":")
            )
        )


@dataclass(frozen=True, slots=True)
class UpstreamGauges:
    """One backend's live state at the moment of a scrape. ``None``: the backend does not
    say."""

    backend: str
    queued: int  # waiting for one of the gateway's slots
    in_flight: int  # holding one
    ready: bool  # by the backend's own health
    ejected: bool  # by the gateway's passive health
    reported_running: int | None = None
    reported_waiting: int | None = None
    cache_usage: float | None = None

    def values(self) -> dict[str, float | None]:
        """The gauges by name (after ``trio_gateway_``), as :data:`_BACKEND_GAUGES` lists them."""
        return {
            "queue_depth": self.queued,
            "backend_in_flight": self.in_flight,
            "backend_ready": 1.0 if self.ready else 0.0,
            "backend_ejected": 1.0 if self.ejected else 0.0,
            "backend_reported_running": self.reported_running,
            "backend_reported_waiting": self.reported_waiting,
            "backend_cache_usage_ratio": self.cache_usage,
        }


# Live per-backend state, read at scrape time: name (after ``trio_gateway_``) → help.
_BACKEND_GAUGES = {
    "queue_depth": "Requests waiting for a slot.",
    "backend_in_flight": "Requests the gateway has at the backend.",
    "backend_ready": "1 when the backend is ready by its own health.",
    "backend_ejected": "1 while passive health keeps the backend out.",
    "backend_reported_running": "Requests the backend reports running.",
    "backend_reported_waiting": "Requests the backend reports waiting.",
    "backend_cache_usage_ratio": "KV-cache usage the backend reports, 0..1.",
}


class _UpstreamCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[UpstreamGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(f"trio_gateway_{name}", text, labels=["backend"])
            for name, text in _BACKEND_GAUGES.items()
        }
        for gauges in self._read():
            for name, value in gauges.values().items():
                if value is not None:
                    families[name].add_metric([gauges.backend], value)
        yield from families.values()
