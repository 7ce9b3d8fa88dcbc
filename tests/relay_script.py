"""The relay driven directly, for its tests: :class:`ScriptedBackend`, a real
:class:`~gateway.abc.Backend` whose upstream is a script (sleeps, byte pieces, and errors
raised where an upstream would fail), a recording ASGI ``send`` (:class:`Client`), and
:func:`run`, which relays one request through the real :func:`~gateway.relay.relay`, its
writer and heartbeat, backend slots, breakers and :func:`~gateway.balancer.order_targets`
under trio's MockClock, so every instant is exact."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.abc import (
    AdmissionSettings,
    Backend,
    BackendSettings,
    EjectionSettings,
    JSONObject,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
)
from gateway.admission import BackendSlots
from gateway.balancer import Breaker, order_targets
from gateway.dialects.chat import ChatPassthrough
from gateway.errors import GatewayError
from gateway.exchange import Attempt, Exchange
from gateway.http_stream import Disconnect
from gateway.inflight import InFlight, InFlightTable
from gateway.keepalive import KeepaliveSettings
from gateway.relay import relay
from gateway.service import Upstream
from gateway.sse import SSEFramer

# A script step: seconds to wait, bytes to send, or an error to fail with.
Step = float | bytes | GatewayError

HB = b": keepalive\n\n"
DONE = b"data: [DONE]\n\n"
LIMIT = 10_000.0  # virtual seconds: a relay that never ends fails the test instead of spinning


def chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"


class ScriptedBackend(Backend):
    """An upstream played from a script. ``before`` runs before the 2xx headers (sleeps
    and an error: a slow connect, a 503); ``body`` runs after them. It records when it was
    opened and closed, and the request's phase at each step."""

    def __init__(
        self,
        id: str,
        *,
        before: Sequence[Step] = (),
        body: Sequence[Step] = (),
        content_type: str = "text/event-stream",
        timeouts: Timeouts | None = None,
        ejection: EjectionSettings | None = None,
        admission: AdmissionSettings | None = None,
    ) -> None:
        super().__init__(
            id,
            BackendSettings(
                type="scripted",
                timeouts=timeouts or Timeouts(),
                ejection=ejection or EjectionSettings(),
                admission=admission or AdmissionSettings(),
            ),
        )
        self.before = list(before)
        self.body = list(body)
        self.content_type = content_type
        self.requests: list[UpstreamRequest] = []
        self.opened_at: float | None = None
        self.closed_at: float | None = None
        self.phases: list[str | None] = []  # the request's phase at each script step
        self.watch: InFlightTable | None = None

    def _note_phase(self) -> None:
        entries = list(self.watch) if self.watch is not None else []
        self.phases.append(entries[0].phase if entries else None)

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        self.requests.append(request)
        self.opened_at = trio.current_time()
        body = self._body()
        try:
            for step in self.before:
                self._note_phase()
                await _play(step)
            yield UpstreamResponse(200, self.content_type, body)
        finally:
            await body.aclose()
            self.closed_at = trio.current_time()

    async def _body(self) -> AsyncGenerator[bytes, None]:
        for step in self.body:
            self._note_phase()
            if isinstance(step, bytes):
                yield step
            else:
                await _play(step)


async def _play(step: Step) -> None:
    if isinstance(step, GatewayError):
        raise step
    assert isinstance(step, float | int)
    await trio.sleep(step)


@dataclass
class Client:
    """The ASGI side: every message with its instant and the request's phase then."""

    table: InFlightTable
    t0: float
    messages: list[tuple[float, dict[str, Any], str | None]] = field(default_factory=list)
    refuse: bytes | None = None  # a body starting with this is refused: the client is gone

    async def send(self, message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        if self.refuse is not None and body.startswith(self.refuse):
            raise OSError("connection reset by peer")
        entries = list(self.table)
        self.messages.append(
            (trio.current_time() - self.t0, message, entries[0].phase if entries else None)
        )

    @property
    def status(self) -> int:
        return int(self.messages[0][1]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0][1]["headers"])

    @property
    def writes(self) -> list[tuple[float, bytes]]:
        """Body pieces as written, with their instants (the empty closing one left out)."""
        return [
            (t, m["body"])
            for t, m, _ in self.messages
            if m["type"] == "http.response.body" and m["body"]
        ]

    @property
    def body(self) -> bytes:
        return b"".join(b for _, b in self.writes)

    @property
    def ended_at(self) -> float | None:
        last = self.messages[-1] if self.messages else None
        if last is None or last[1]["type"] != "http.response.body" or last[1]["more_body"]:
            return None
        return last[0]


@dataclass
class Run:
    client: Client
    exchange: Exchange
    record: InFlight
    upstreams: list[Upstream]


def upstreams_of(*backends: ScriptedBackend) -> list[Upstream]:
    return [
        Upstream(b, BackendSlots(b.id, b.settings.admission), Breaker(b.settings.ejection))
        for b in backends
    ]


def make_exchange(
    upstreams: Sequence[Upstream],
    *,
    stream: bool = True,
    max_attempts: int = 3,
    failover_deadline: float | None = None,
    hide_usage: bool = False,
    **keepalive: Any,
) -> tuple[Exchange, list[InFlight]]:
    """An exchange over ``upstreams`` in priority order, ordered by the real balancer (so
    ejected and half-open backends are treated as the gateway treats them)."""
    finished: list[InFlight] = []
    body: JSONObject = {"model": "m", "stream": stream}

    def pick_attempts() -> list[Attempt]:
        now = trio.current_time()
        candidates = [u.candidate(i, 1.0, now) for i, u in enumerate(upstreams)]
        order = order_targets("priority", candidates, turn=0, draw=0.0)
        return [
            Attempt(
                upstreams[i],
                UpstreamRequest("chat/completions", body, stream, "rid"),
                ChatPassthrough(hide_usage),
            )
            for i in order
        ]

    keepalive.setdefault("interval", 0)
    exchange = Exchange(
        pick_attempts=pick_attempts,
        request_id="rid",
        stream=stream,
        route="r",
        keepalive=KeepaliveSettings(**keepalive),
        inflight=InFlightTable(),
        max_attempts=max_attempts,
        failover_deadline=failover_deadline,
        on_finish=finished.append,
    )
    for upstream in upstreams:
        assert isinstance(upstream.backend, ScriptedBackend)
        upstream.backend.watch = exchange.inflight
    return exchange, finished


async def run(
    *backends: ScriptedBackend,
    disconnect_after: float | None = None,
    told_by: str = "receive",
    upstreams: list[Upstream] | None = None,
    refuse: bytes | None = None,
    **options: Any,
) -> Run:
    """Relay one request over ``backends`` (in priority order) and record what happened.
    ``disconnect_after``: the client hangs up that many seconds in, told to the relay by
    ``told_by``: ``"receive"`` (an ASGI receive callable that then returns
    ``http.disconnect``, as under any server) or ``"disconnect"`` (the gateway's server's
    :class:`Disconnect`, fired then)."""
    upstreams = upstreams if upstreams is not None else upstreams_of(*backends)
    exchange, finished = make_exchange(upstreams, **options)
    client = Client(exchange.inflight, trio.current_time(), refuse=refuse)
    gone: object = None
    async with trio.open_nursery() as nursery:
        if disconnect_after is not None and told_by == "receive":

            async def receive() -> dict[str, Any]:
                await trio.sleep(disconnect_after)
                return {"type": "http.disconnect"}

            gone = receive
        elif disconnect_after is not None:
            disconnect = gone = Disconnect()

            async def hang_up() -> None:
                await trio.sleep(disconnect_after)
                disconnect.fire()

            nursery.start_soon(hang_up)
        with trio.fail_after(LIMIT):
            await relay(client.send, exchange, gone)
        nursery.cancel_scope.cancel()
    [record] = finished
    assert len(exchange.inflight) == 0
    return Run(client, exchange, record, upstreams)


def events_of(body: bytes) -> list[bytes]:
    """The client's byte stream cut into whole SSE events (nothing may be left over)."""
    framer = SSEFramer()
    events = framer.feed(body)
    assert not framer.pending, f"a partial event reached the client: {body!r}"
    return [e.raw for e in events]


def error_of(piece: bytes) -> dict[str, Any]:
    assert piece.startswith(b"data: ") and piece.endswith(b"\n\n"), piece
    error: dict[str, Any] = json.loads(piece[6:])["error"]
    return error


def good(id: str = "good", *, n: int = 2) -> ScriptedBackend:
    return ScriptedBackend(id, body=[chunk(f"t{i}") for i in range(n)] + [DONE])


def down(id: str, status: int = 503, *, after: float = 0.0) -> ScriptedBackend:
    """Fails with ``status`` before its headers, ``after`` seconds in."""
    return ScriptedBackend(id, before=[after, UpstreamStatusError(status, f"{id} says {status}")])
