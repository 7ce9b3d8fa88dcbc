"""OpenTelemetry traces of relayed requests, exported over OTLP/HTTP off the request path.

One SERVER span per relayed request (a WebSocket's turns each have one), named and
attributed by the OpenTelemetry GenAI semantic conventions, and one CLIENT span under it
per upstream attempt, whose context the upstream gets as its ``traceparent``. A client's
valid ``traceparent`` continues the client's trace; without one, the trace id is the one
the gateway would answer with anyway (:func:`gateway.inbound.traceparent`).

Spans are built from what the relay records on its :class:`~gateway.inflight.InFlight`
entry (times, tokens, heartbeats, queue time, attempts), so nothing is timed twice; its trio
times are put on the wall clock once per request.

Export never touches the event loop: ended spans go into the SDK's
``BatchSpanProcessor``, whose own thread sends them in batches. A collector that is slow or
down costs a request nothing: spans that find the queue full are dropped, and so are those
of a failed export, both counted in ``trio_gateway_trace_spans_dropped_total{reason}``.

With ``[tracing]`` off, :func:`open_tracing` gives ``None`` and nothing here runs: the
relay's only cost is an ``is None`` check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from urllib.parse import urlsplit

import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, Counter

from .abc import Backend, Endpoint, UpstreamRequest
from .client_request import ClientRequest
from .config import TracingSettings
from .errors import GatewayError, UpstreamStatusError
from .inflight import InFlight

__all__ = ["AttemptSpan", "RequestTrace", "Tracing", "open_tracing", "traces_url"]

log = logging.getLogger("gateway.tracing")

# W3C Trace Context: vendors propagate at least 512 characters of tracestate, and may drop a
# longer one. Kept within it, a client's header never reaches the log whole: the SDK logs an
# invalid one at WARNING, so a client could write 30 KiB into the log with each request.
_MAX_TRACESTATE = 512

# gen_ai.operation.name by endpoint (the client's for the request, the upstream's for an
# attempt). The token counts are no GenAI operation; they keep a name of their own.
_OPERATIONS: Mapping[Endpoint, str] = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "messages": "chat",
    "responses": "chat",
    "messages/count_tokens": "count_tokens",
    "responses/input_tokens": "count_tokens",
}


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (``/v1/traces`` appended, unless
    it is there already)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _provider_name(endpoint: Endpoint) -> str:
    # The GenAI conventions name the provider by the instrumentation's best knowledge: here,
    # the API the wire speaks.
    return "anthropic" if endpoint.startswith("messages") else "openai"


def _traceparent(context: trace.SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class _Ids(RandomIdGenerator):
    """Random ids, except a root span's trace id when one is set: the trace id the gateway
    tells the client (derived from its request id where that is 32 hex digits). Spans are
    started in the event loop's thread only, so setting it just before is safe."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        trace_id, self.next_trace_id = self.next_trace_id, 0
        return trace_id or super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False  # a client's request id may be anything but random


class _Backlog:
    """Ended spans handed to the batch processor and not yet taken for export, bounded:
    past ``limit`` a span is dropped and counted here, so the processor's own queue (as
    long) never drops one uncounted. Called from the event loop and the export thread."""

    def __init__(self, limit: int, dropped: Counter) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()
        self._full = dropped.labels("queue_full")

    def take(self) -> bool:
        with self._lock:
            if self._held >= self.limit:
                full = True
            else:
                self._held += 1
                full = False
        if full:
            self._full.inc()
        return not full

    def release(self, count: int) -> None:
        with self._lock:
            self._held = max(0, self._held - count)


class _BoundedProcessor(SpanProcessor):
    """The SDK's batch processor behind a counted bound (:class:`_Backlog`)."""

    def __init__(self, batch: BatchSpanProcessor, backlog: _Backlog) -> None:
        self._batch = batch
        self._backlog = backlog

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled and self._backlog.take():
            self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans of every export that failed."""

    def __init__(self, exporter: SpanExporter, backlog: _Backlog, dropped: Counter) -> None:
        self._exporter = exporter
        self._backlog = backlog
        self._failed = dropped.labels("export_failed")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._backlog.release(len(spans))
        try:
            result = self._exporter.export(spans)
        except Exception:  # the export thread's boundary: log, count, go on
            log.exception("exporting %d spans failed", len(spans))
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._failed.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class Tracing:
    """The gateway's tracer provider, exporter and dropped-span counter (registered in
    ``registry``, the gateway's metrics). One per gateway; :func:`open_tracing` makes it
    and shuts it down."""

    def __init__(self, settings: TracingSettings, registry: CollectorRegistry) -> None:
        if settings.otlp_endpoint is None:
            raise ValueError("tracing needs an otlp_endpoint")
        self.settings = settings
        dropped = Counter(
            "trio_gateway_trace_spans_dropped",
            "Spans never delivered to the collector: the export queue was full "
            "(reason=queue_full), or their export failed (reason=export_failed).",
            ["reason"],
            registry=registry,
        )
        self.backlog = _Backlog(settings.max_queue_size, dropped)
        exporter = OTLPSpanExporter(
            endpoint=traces_url(settings.otlp_endpoint),
            headers={name: value.get_secret_value() for name, value in settings.headers.items()},
            timeout=settings.export_timeout,
        )
        batch = BatchSpanProcessor(
            _CountingExporter(exporter, self.backlog, dropped),
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay * 1000,
            max_export_batch_size=settings.max_export_batch_size,
            export_timeout_millis=settings.export_timeout * 1000,
        )
        self._ids = _Ids()
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource.create({"service.name": settings.service_name or "trio-gateway"}),
            id_generator=self._ids,
            shutdown_on_exit=False,  # open_tracing shuts it down, within its timeout
        )
        self._provider.add_span_processor(_BoundedProcessor(batch, self.backlog))
        self._tracer = self._provider.get_tracer("trio_gateway")

    def start_request(
        self, request: ClientRequest, *, stream: bool, connection: str = ""
    ) -> RequestTrace:
        """Start the SERVER span of ``request`` (routed: its ``route`` and ``model`` are
        set), dated from its arrival. ``connection``: the WebSocket it came on."""
        client = request.headers.get("traceparent", "")
        parent: Context | None = None
        if client and client == request.traceparent:  # the client's own, valid
            state = request.headers.get("tracestate")
            if state and len(state) > _MAX_TRACESTATE:
                state = None  # dropped, as W3C allows, rather than logged whole by the SDK
            parent = trace.set_span_in_context(
                trace.NonRecordingSpan(
                    trace.SpanContext(
                        int(client[3:35], 16),
                        int(client[36:52], 16),
                        is_remote=True,
                        trace_flags=trace.TraceFlags(int(client[53:55], 16)),
                        trace_state=trace.TraceState.from_header([state]) if state else None,
                    )
                )
            )
        else:
            self._ids.next_trace_id = int(request.traceparent[3:35], 16)
        clock = _Clock()
        operation = _OPERATIONS.get(request.endpoint, request.endpoint)
        model = request.model or ""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": _provider_name(request.endpoint),
            "gen_ai.request.model": model,
            "trio_gateway.dialect": request.dialect.name,
            "trio_gateway.endpoint": request.endpoint,
            "trio_gateway.route": request.route,
            "trio_gateway.request_id": request.request_id,
            "trio_gateway.stream": stream,
        }
        if request.identity is not None:
            attributes["trio_gateway.team"] = request.identity.team
        if connection:
            attributes["trio_gateway.connection"] = connection
        else:
            attributes["http.request.method"] = request.method
            attributes["url.path"] = request.path
        try:
            span = self._tracer.start_span(
                f"{operation} {model}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=clock.ns(request.started),
            )
        finally:
            self._ids.next_trace_id = 0
        return RequestTrace(self._tracer, span, clock)

    async def flush(self) -> None:
        """Export every ended span now, from a worker thread; returns when every export
        has succeeded or failed (each within ``export_timeout``)."""
        await trio.to_thread.run_sync(self._provider.force_flush)

    async def aclose(self) -> None:
        """Flush and stop the exporter's thread, waiting ``shutdown_timeout`` at most (even
        when cancelled): a collector that does not answer cannot hold the gateway's exit;
        the thread is then left to end on its own."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.settings.shutdown_timeout
            await trio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning(
                "tracing: the last spans were not exported within %g s",
                self.settings.shutdown_timeout,
            )


@asynccontextmanager
async def open_tracing(
    settings: TracingSettings, registry: CollectorRegistry
) -> AsyncIterator[Tracing | None]:
    """The gateway's :class:`Tracing`, or ``None`` with tracing off; on exit its last spans
    are flushed (see :meth:`Tracing.aclose`)."""
    if not settings.enabled:
        yield None
        return
    tracing = Tracing(settings, registry)
    log.info("tracing: spans go to %s", traces_url(settings.otlp_endpoint or ""))
    try:
        yield tracing
    finally:
        await tracing.aclose()


class _Clock:
    """Trio's clock on the wall clock (nanoseconds since the epoch, as spans take them)."""

    __slots__ = ("_epoch_ns", "_trio")

    def __init__(self) -> None:
        self._epoch_ns = time.time_ns()
        self._trio = trio.current_time()

    def ns(self, at: float) -> int:
        return self._epoch_ns + round((at - self._trio) * 1e9)


class RequestTrace:
    """One request's SERVER span: attempts start their CLIENT spans under it
    (:meth:`attempt`), and :meth:`finish` ends it from the relay's record. ``traceparent``
    is the span's own, which the client is answered with."""

    __slots__ = ("_clock", "_context", "_span", "_tracer", "traceparent")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, clock: _Clock) -> None:
        self._tracer = tracer
        self._span = span
        self._clock = clock
        self._context = trace.set_span_in_context(span)
        self.traceparent = _traceparent(span.get_span_context())

    def attempt(
        self, backend: Backend, request: UpstreamRequest, number: int, entry: InFlight
    ) -> AttemptSpan:
        """Start the CLIENT span of attempt ``number`` (from 1) on ``backend``; its
        ``request`` is ``request`` carrying the span's context upstream."""
        operation = _OPERATIONS.get(request.endpoint, request.endpoint)
        model = request.body.get("model")
        model = model if isinstance(model, str) else ""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": _provider_name(request.endpoint),
            "gen_ai.request.model": model,
            "trio_gateway.backend": backend.id,
            "trio_gateway.backend.type": backend.settings.type,
            "trio_gateway.attempt": number,
        }
        # A managed llama-server's URL is known once it runs; other backends have theirs
        # in their settings. Backends without one (in-process models) have no address.
        url = getattr(backend, "url", None) or getattr(backend.settings, "url", None)
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
                port = parts.port or (443 if parts.scheme == "https" else 80)
                attributes["server.port"] = port
        span = self._tracer.start_span(
            f"{operation} {model}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=self._clock.ns(trio.current_time()),
        )
        context = span.get_span_context()
        headers = {**request.headers, "traceparent": _traceparent(context)}
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()
        return AttemptSpan(
            span, replace(request, headers=headers), self._clock, entry.queue_seconds
        )

    def finish(self, entry: InFlight) -> None:
        """End the span with what the relay recorded; ``entry`` has ended."""
        span = self._span
        if not span.is_recording():
            span.end()
            return
        attributes: dict[str, AttributeValue] = {
            "trio_gateway.outcome": entry.outcome or "error",
            "trio_gateway.heartbeats": entry.heartbeats,
            "trio_gateway.queue_seconds": entry.queue_seconds,
            "trio_gateway.attempts": list(entry.attempts),
        }
        if entry.backend:
            attributes["trio_gateway.backend"] = entry.backend
        if entry.response_model is not None:
            attributes["gen_ai.response.model"] = entry.response_model
        if entry.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = entry.prompt_tokens
        if entry.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = entry.completion_tokens
        if entry.status is not None:
            attributes["http.response.status_code"] = entry.status
        if entry.disconnect_phase is not None:
            attributes["trio_gateway.disconnect_phase"] = entry.disconnect_phase
        if entry.outcome != "completed":
            attributes["error.type"] = entry.outcome or "error"
            if entry.outcome != "client_gone":
                span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)
        ns = self._clock.ns
        if entry.first_byte_at is not None:
            span.add_event("trio_gateway.first_byte", timestamp=ns(entry.first_byte_at))
        if entry.first_token_at is not None:
            span.add_event(
                "trio_gateway.first_token",
                {"gen_ai.server.time_to_first_token": entry.first_token_at - entry.started_at},
                timestamp=ns(entry.first_token_at),
            )
        span.end(ns(entry.ended_at if entry.ended_at is not None else trio.current_time()))


class AttemptSpan:
    """One upstream attempt's CLIENT span. The relay tells it how the attempt went
    (:meth:`answered`, or :meth:`failed` and then :meth:`failed_over` when the next target
    is tried) and :meth:`end`\\ s it however it ended: one told nothing was cancelled (the
    client left, or shutdown ended it)."""

    __slots__ = ("_clock", "_error", "_queued", "_span", "_status", "request")

    def __init__(
        self, span: trace.Span, request: UpstreamRequest, clock: _Clock, queued: float
    ) -> None:
        self._span = span
        self.request = request
        self._clock = clock
        self._queued = queued  # the request's queue time before this attempt
        self._status: int | None = None
        self._error: str | None = "cancelled"

    def answered(self, status: int | None) -> None:
        self._status, self._error = status, None

    def failed(self, error: GatewayError) -> None:
        if isinstance(error, UpstreamStatusError):
            self._status, self._error = error.status, str(error.status)
        else:
            self._error = error.code or type(error).__name__

    def failed_over(self, reason: str) -> None:
        self._span.set_attribute("trio_gateway.failover.reason", reason)

    def end(self, entry: InFlight) -> None:
        span = self._span
        if span.is_recording():
            if self._status is not None:
                span.set_attribute("http.response.status_code", self._status)
            if self._error is not None:
                span.set_attribute("error.type", self._error)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("trio_gateway.queue_seconds", entry.queue_seconds - self._queued)
        span.end(self._clock.ns(trio.current_time()))
