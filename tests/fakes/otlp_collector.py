"""A test OTLP/HTTP collector: a real HTTP/1.1 server on loopback (h11 over trio sockets)
that decodes every ``POST /v1/traces`` body as the OpenTelemetry exporter sends it — an
``ExportTraceServiceRequest`` protobuf (``opentelemetry-proto``) — and keeps its spans.

With :attr:`OTLPCollector.stuck` set it reads each request and never answers: a collector
that is up but hangs. (A collector that is down is a port nobody listens on:
:func:`gateway.testing.serving.unused_port`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h11
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.testing.http11 import read_request

__all__ = ["CollectedSpan", "OTLPCollector"]

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


@dataclass(frozen=True)
class CollectedSpan:
    """One span as the collector decoded it: ids in lower-case hex ("" for no parent),
    times in nanoseconds since the epoch."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    attributes: dict[str, Any]
    events: dict[str, tuple[int, dict[str, Any]]]  # name → (time, attributes)
    start_ns: int
    end_ns: int
    status_code: int
    resource: dict[str, Any]

    @classmethod
    def of(cls, span: Span, resource: dict[str, Any]) -> CollectedSpan:
        return cls(
            name=span.name,
            kind=span.kind,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            trace_state=span.trace_state,
            attributes=_attributes(span.attributes),
            events={e.name: (e.time_unix_nano, _attributes(e.attributes)) for e in span.events},
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            status_code=span.status.code,
            resource=resource,
        )

    def traceparent(self, flags: str = "01") -> str:
        return f"00-{self.trace_id}-{self.span_id}-{flags}"


@dataclass(eq=False)
class OTLPCollector:
    stuck: bool = False
    port: int = 0
    spans: list[CollectedSpan] = field(default_factory=list)
    exports: list[dict[str, str]] = field(default_factory=list)  # each request's headers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    def of_kind(self, kind: int) -> list[CollectedSpan]:
        return [s for s in self.spans if s.kind == kind]

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            try:
                while True:
                    incoming = await read_request(stream, conn)
                    if incoming is None:
                        return
                    headers = {k.decode(): v.decode() for k, v in incoming.head.headers}
                    self.exports.append(headers)
                    if self.stuck:
                        await trio.sleep_forever()
                    self._collect(incoming.body)
                    await self._answer(stream, conn)
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, h11.RemoteProtocolError):
                return

    def _collect(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(CollectedSpan.of(s, resource) for s in scope_spans.spans)

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        body = ExportTraceServiceResponse().SerializeToString()
        head = h11.Response(
            status_code=200,
            headers=[
                ("content-type", "application/x-protobuf"),
                ("content-length", str(len(body))),
            ],
        )
        await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
