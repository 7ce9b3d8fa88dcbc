"""The relay's state machine, driven directly: scripted backends, a recording ASGI ``send``,
and trio's MockClock, so every instant below is exact.

A :class:`ScriptedBackend` is a real :class:`~gateway.abc.Backend` whose upstream is a
script: sleeps, byte pieces, and errors raised where an upstream would fail. Everything on
the gateway's side is the real code: :func:`~gateway.relay.relay`, its writer and heartbeat,
backend slots, breakers and :func:`~gateway.balancer.order_targets`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from gateway.abc import (
    AdmissionSettings,
    Backend,
    BackendSettings,
    EjectionSettings,
    JSONObject,
    Timeouts,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
)
from gateway.admission import BackendSlots
from gateway.answer import END_GRACE
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


# --- phases ---------------------------------------------------------------------------


async def test_phases_connecting_prefill_streaming_finishing(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b",
        before=[1.0],  # connecting: one second until the upstream's headers
        body=[2.0, b": upstream comment\n\n", 3.0, chunk("a"), 1.0, chunk("b"), DONE],
    )
    result = await run(backend)
    # Steps: the wait for headers; then prefill through the comment (not a data event);
    # streaming from the first data event on.
    assert backend.phases == [
        "connecting",
        "prefill",
        "prefill",
        "prefill",
        "prefill",
        "streaming",
        "streaming",
        "streaming",
    ]
    assert [(t, phase) for t, m, phase in result.client.messages if not m.get("more_body")] == [
        (1.0, "prefill"),  # the headers, sent once the upstream's arrived
        (7.0, "finishing"),  # the closing message
    ]
    record = result.record
    assert record.outcome == "completed" and record.status == 200
    assert record.first_byte_at is not None and record.first_byte_at - record.started_at == 3.0
    assert record.first_token_at is not None and record.first_token_at - record.started_at == 6.0
    assert record.upstream_seconds == 7.0
    assert result.exchange.log == ["b=ok"]


async def test_queued_phase_until_a_slot_frees(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b", body=[chunk("a"), DONE], admission=AdmissionSettings(max_concurrency=1)
    )
    [upstream] = upstreams_of(backend)
    release = trio.Event()

    async def occupy(task_status: trio.TaskStatus[None]) -> None:
        async with upstream.slots.hold():
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(occupy)
        done: list[Run] = []

        async def request() -> None:
            done.append(await run(backend, upstreams=[upstream], interval=1.0))

        nursery.start_soon(request)
        await trio.sleep(2.5)
        assert [e.phase for e in backend.watch or ()] == ["queued"]
        assert upstream.slots.queued == 1
        release.set()
    [result] = done
    assert result.record.queue_seconds == 2.5
    assert backend.opened_at is not None
    # Heartbeats (early headers) kept the queued client alive; then the stream, at 2.5.
    assert result.client.writes == [(1.0, HB), (2.0, HB), (2.5, chunk("a")), (2.5, DONE)]


# --- heartbeats -----------------------------------------------------------------------


async def test_heartbeats_only_between_whole_events(autojump_clock: MockClock) -> None:
    event = chunk("split")
    a, b = event[:9], event[9:-1]  # the event arrives in three pieces, 2.25 s apart
    backend = ScriptedBackend("b", body=[a, 2.25, b, 2.25, event[-1:], DONE])
    result = await run(backend, interval=1.0)
    assert result.client.writes == [
        (1.0, HB),
        (2.0, HB),
        (3.0, HB),  # the event is held back whole: heartbeats go out meanwhile
        (4.0, HB),
        (4.5, event),
        (4.5, DONE),
    ]
    assert events_of(result.client.body) == [HB] * 4 + [event, DONE]
    assert result.record.heartbeats == 4


async def test_heartbeat_before_a_split_bom_never_lets_the_bom_through(
    autojump_clock: MockClock,
) -> None:
    """A BOM split across chunks with silence between: heartbeats fill the silence, and the
    BOM is stripped, so no client ever sees one after a heartbeat (where it would be data)."""
    backend = ScriptedBackend("b", body=[b"\xef", 2.25, b"\xbb", 2.25, b"\xbf" + chunk("a"), DONE])
    result = await run(backend, interval=1.0)
    assert result.client.writes == [
        (1.0, HB),
        (2.0, HB),
        (3.0, HB),
        (4.0, HB),
        (4.5, chunk("a")),
        (4.5, DONE),
    ]
    assert b"\xef\xbb\xbf" not in result.client.body


async def test_a_first_byte_that_is_not_a_bom_is_kept(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", body=[b"\xef", 1.5, b": x\n\n", chunk("a"), DONE])
    result = await run(backend, interval=1.0)
    assert result.client.writes == [
        (1.0, HB),
        (1.5, b"\xef: x\n\n"),
        (1.5, chunk("a")),
        (1.5, DONE),
    ]


async def test_interval_zero_means_no_heartbeat_at_all(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", before=[100.0], body=[200.0, chunk("a"), DONE])
    result = await run(backend, interval=0)
    assert result.client.writes == [(300.0, chunk("a")), (300.0, DONE)]
    assert result.client.messages[0][0] == 100.0  # headers waited for the upstream's
    assert result.record.heartbeats == 0


async def test_late_headers_without_early_headers(autojump_clock: MockClock) -> None:
    """early_headers off: nothing at all until the upstream's headers, then heartbeats."""
    backend = ScriptedBackend("b", before=[3.5], body=[2.5, chunk("a"), DONE])
    result = await run(backend, interval=1.0, early_headers=False)
    assert result.client.messages[0][0] == 3.5
    assert result.client.writes == [(4.5, HB), (5.5, HB), (6.0, chunk("a")), (6.0, DONE)]


async def test_response_ends_at_done_though_the_upstream_stays_open(
    autojump_clock: MockClock,
) -> None:
    """After the terminal ``[DONE]`` the client's response ends: no heartbeats while an
    upstream holds its connection open; the upstream gets ``END_GRACE`` to end its body
    (so its connection could go back to the pool), then its request is closed."""
    backend = ScriptedBackend("b", body=[chunk("a"), 1.0, DONE, 1000.0])
    # interval 1.5: no heartbeat is due at the very instant [DONE] arrives (a tie either wins)
    result = await run(backend, interval=1.5)
    assert result.client.writes == [(0.0, chunk("a")), (1.0, DONE)]
    assert result.client.ended_at == 1.0
    assert backend.closed_at is not None
    assert backend.closed_at - result.client.t0 == 1.0 + END_GRACE
    assert result.record.outcome == "completed"


# --- failover -------------------------------------------------------------------------


async def test_failover_before_any_data_event_even_after_comments(
    autojump_clock: MockClock,
) -> None:
    """Headers, heartbeats and an upstream comment went out, then the upstream broke: no
    data event reached the client, so the next target may still serve it."""
    broken = ScriptedBackend(
        "broken", body=[b": warming up\n\n", 2.5, UpstreamProtocolError("reset by peer")]
    )
    spare = good("spare")
    result = await run(broken, spare, interval=1.0)
    assert result.client.status == 200
    assert result.client.writes == [
        (0.0, b": warming up\n\n"),
        (1.0, HB),
        (2.0, HB),
        (2.5, chunk("t0")),
        (2.5, chunk("t1")),
        (2.5, DONE),
    ]
    assert [r.endpoint for r in spare.requests] == ["chat/completions"]
    assert result.exchange.log[-2:] == ["broken=502:upstream_protocol_error", "spare=ok"]
    assert result.record.outcome == "completed" and result.record.backend == "spare"


async def test_failover_after_a_heartbeat_committed_the_headers(
    autojump_clock: MockClock,
) -> None:
    result = await run(down("a", after=2.5), good("b"), interval=1.0)
    assert result.client.status == 200
    assert b"x-gateway-attempts" not in result.client.headers  # committed before any outcome
    assert result.client.writes == [
        (1.0, HB),
        (2.0, HB),
        (2.5, chunk("t0")),
        (2.5, chunk("t1")),
        (2.5, DONE),
    ]
    assert result.exchange.log == ["a=503", "b=ok"]


async def test_no_failover_after_the_first_data_event(autojump_clock: MockClock) -> None:
    broken = ScriptedBackend(
        "broken", body=[chunk("a"), 1.0, UpstreamProtocolError("upstream reset mid-stream")]
    )
    spare = good("spare")
    result = await run(broken, spare)
    assert spare.requests == []  # tokens would have been duplicated
    assert result.client.status == 200
    [first, error] = [b for _, b in result.client.writes]
    assert first == chunk("a")
    assert error_of(error) == {
        "message": "upstream reset mid-stream",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_protocol_error",
    }
    assert DONE not in result.client.body
    assert result.client.ended_at == 1.0
    assert result.record.outcome == "upstream_error"


async def test_an_attempt_broken_mid_stream_is_logged_once(autojump_clock: MockClock) -> None:
    """One upstream attempt is one entry of the attempts log (issue 16: it was two, ``ok``
    when the headers came and the failure after)."""
    broken = ScriptedBackend("b", body=[chunk("a"), UpstreamProtocolError("cut")])
    result = await run(broken)
    assert result.exchange.log == ["b=502:upstream_protocol_error"]
    assert result.record.attempts == ("b=502:upstream_protocol_error",)


async def test_client_error_is_not_retried(autojump_clock: MockClock) -> None:
    spare = good("spare")
    result = await run(down("a", 400), spare)
    assert spare.requests == []
    assert result.client.status == 400
    assert json.loads(result.client.messages[1][1]["body"])["error"]["message"] == "a says 400"
    assert result.client.headers[b"x-gateway-attempts"] == b"a=400"


async def test_no_target_at_all_is_503(autojump_clock: MockClock) -> None:
    result = await run()
    assert result.client.status == 503
    body = json.loads(result.client.messages[1][1]["body"])
    assert body["error"]["code"] == "no_backend_available"
    assert result.record.outcome == "rejected"


@pytest.mark.parametrize(
    "max_attempts,tried,status",
    [(1, ["a"], 500), (2, ["a", "b"], 503), (3, ["a", "b", "c"], 502), (4, ["a", "b", "c"], 502)],
)
async def test_max_attempts_bounds_the_targets_tried(
    autojump_clock: MockClock, max_attempts: int, tried: list[str], status: int
) -> None:
    backends = [down("a", 500), down("b", 503), down("c", 502)]
    result = await run(*backends, max_attempts=max_attempts)
    assert [b.id for b in backends if b.requests] == tried
    assert result.client.status == status  # the last attempt's failure
    assert (
        result.exchange.log
        == [f"{b.id}={s}" for b, s in zip(backends, (500, 503, 502), strict=True)][: len(tried)]
    )


@pytest.mark.parametrize(
    "deadline,tried",
    [
        (None, ["a", "b"]),  # no deadline
        (2.5, ["a", "b"]),  # a failed at 2.0, before it
        (2.0, ["a"]),  # a failed exactly at it: no new attempt starts
        (0.5, ["a"]),  # the first attempt always runs
    ],
)
async def test_failover_deadline_boundary(
    autojump_clock: MockClock, deadline: float | None, tried: list[str]
) -> None:
    a, b = down("a", after=2.0), good("b")
    result = await run(a, b, failover_deadline=deadline)
    assert [x.id for x in (a, b) if x.requests] == tried
    assert result.client.status == (200 if "b" in tried else 503)


async def test_deadline_does_not_cut_an_attempt_already_started(
    autojump_clock: MockClock,
) -> None:
    """b starts before the deadline and fails after it: its own failure is reported, and
    c, which would start after the deadline, is not tried."""
    a, b, c = down("a", after=1.0), down("b", after=9.0), good("c")
    result = await run(a, b, c, failover_deadline=5.0)
    assert c.requests == []
    assert b.closed_at is not None and b.closed_at - result.client.t0 == 10.0
    assert result.client.status == 503
    assert result.exchange.log == ["a=503", "b=503"]


# --- timers on upstream bytes only ------------------------------------------------------


async def test_first_byte_timeout_ignores_heartbeats(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b", before=[3.0], body=[100.0, chunk("late"), DONE], timeouts=Timeouts(first_byte=5)
    )
    result = await run(backend, interval=2.0)
    [hb1, hb2, error] = result.client.writes
    assert (hb1, hb2) == ((2.0, HB), (4.0, HB))
    assert error[0] == 5.0  # from the request, headers included; not reset by heartbeats
    assert error_of(error[1]) == {
        "message": "upstream timed out: no byte within the first_byte limit of 5 s",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_timeout",
    }
    assert backend.closed_at is not None and backend.closed_at - result.client.t0 == 5.0
    assert result.record.outcome == "timeout"


async def test_idle_timeout_runs_from_the_last_upstream_byte(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b", body=[chunk("a"), 100.0, DONE], timeouts=Timeouts(idle=3, first_byte=1)
    )
    result = await run(backend, interval=2.0)
    [first, hb, error] = result.client.writes
    assert (first, hb) == ((0.0, chunk("a")), (2.0, HB))
    assert error[0] == 3.0
    assert error_of(error[1])["message"] == (
        "upstream timed out: no byte within the idle limit of 3 s"
    )
    assert DONE not in result.client.body


async def test_partial_event_bytes_reset_the_idle_timer(autojump_clock: MockClock) -> None:
    """Upstream bytes, not whole events, are what the idle timer hears."""
    event = chunk("slowly")
    pieces: list[Step] = []
    for i in range(0, len(event), 4):
        pieces += [event[i : i + 4], 2.0]
    backend = ScriptedBackend("b", body=[*pieces, DONE], timeouts=Timeouts(idle=3))
    result = await run(backend, interval=1.0)
    assert result.record.outcome == "completed"
    assert [e for e in events_of(result.client.body) if e != HB] == [event, DONE]
    assert result.record.heartbeats > 0  # the client heard only heartbeats meanwhile


async def test_total_timeout_though_bytes_keep_coming(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b", body=[chunk("a")] + [1.0, b": tick\n\n"] * 50, timeouts=Timeouts(total=10, idle=3)
    )
    result = await run(backend)
    t, error = result.client.writes[-1]
    assert t == 10.0
    assert error_of(error)["message"] == (
        "upstream timed out: no completion within the total limit of 10 s"
    )


async def test_timeout_before_first_data_event_fails_over(autojump_clock: MockClock) -> None:
    silent = ScriptedBackend("silent", body=[100.0], timeouts=Timeouts(first_byte=4))
    result = await run(silent, good("b"), interval=1.5)
    assert result.client.writes == [
        (1.5, HB),
        (3.0, HB),
        (4.0, chunk("t0")),
        (4.0, chunk("t1")),
        (4.0, DONE),
    ]
    assert result.exchange.log[-2:] == ["silent=504:upstream_timeout", "b=ok"]


# --- how a stream may end ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tail,message",
    [
        ([], "upstream closed the stream before [DONE]"),
        ([b'data: {"cut'], "upstream closed the stream in the middle of an event"),
    ],
)
async def test_unclean_end_is_an_error_event(
    autojump_clock: MockClock, tail: list[Step], message: str
) -> None:
    backend = ScriptedBackend("b", body=[chunk("a"), *tail])
    result = await run(backend)
    [first, error] = [b for _, b in result.client.writes]
    assert first == chunk("a")  # the partial event is never forwarded
    assert error_of(error)["message"] == message
    assert result.record.outcome == "upstream_error"


async def test_streamed_request_answered_with_json_is_a_protocol_error(
    autojump_clock: MockClock,
) -> None:
    backend = ScriptedBackend("b", body=[b"{}"], content_type="application/json")
    result = await run(backend)
    assert result.client.status == 502
    body = json.loads(result.client.messages[1][1]["body"])
    assert body["error"]["code"] == "upstream_protocol_error"


# --- client gone ------------------------------------------------------------------------


@pytest.mark.parametrize("told_by", ["receive", "disconnect"])
@pytest.mark.parametrize("interval", [0.75, 0])
@pytest.mark.parametrize(
    "before,body,phase",
    [
        ([100.0], [], "connecting"),
        ([], [100.0], "prefill"),
        ([], [chunk("a"), 100.0], "streaming"),
    ],
)
async def test_client_disconnect_closes_the_upstream_at_once(
    autojump_clock: MockClock,
    before: list[Step],
    body: list[Step],
    phase: str,
    interval: float,
    told_by: str,
) -> None:
    """With heartbeats or without (no task beside the relay but the disconnect's own,
    with ``receive``, or none at all, with the server's :class:`Disconnect`)."""
    backend = ScriptedBackend("b", before=before, body=body)
    result = await run(backend, interval=interval, disconnect_after=2.0, told_by=told_by)
    assert backend.closed_at is not None and backend.closed_at - result.client.t0 == 2.0
    assert result.record.outcome == "client_gone"
    assert result.record.disconnect_phase == phase
    assert result.client.ended_at is None  # nothing more was written to a gone client


@pytest.mark.parametrize("told_by", ["receive", "disconnect"])
async def test_client_disconnect_while_queued_never_reaches_the_upstream(
    autojump_clock: MockClock, told_by: str
) -> None:
    backend = ScriptedBackend(
        "b", body=[chunk("a"), DONE], admission=AdmissionSettings(max_concurrency=1)
    )
    [upstream] = upstreams_of(backend)
    async with upstream.slots.hold():
        result = await run(backend, upstreams=[upstream], disconnect_after=2.0, told_by=told_by)
    assert backend.requests == []
    assert upstream.slots.queued == 0
    assert result.record.disconnect_phase == "queued"
    assert result.record.queue_seconds == 2.0


async def test_refused_heartbeat_write_closes_the_upstream(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", body=[100.0])
    result = await run(backend, interval=1.5, refuse=b":")
    assert backend.closed_at is not None and backend.closed_at - result.client.t0 == 1.5
    assert result.record.outcome == "client_gone"
    assert result.record.disconnect_phase == "prefill"


# --- passive health across requests -----------------------------------------------------


async def _eject(upstreams: list[Upstream]) -> float:
    """One request that ejects the first upstream (ejection after 1 failure); returns when."""
    first = await run(upstreams=upstreams)
    assert first.exchange.log[0].endswith("=503")
    return trio.current_time()


@pytest.mark.parametrize(
    "trial,disconnect_after",
    [
        ([0.0, UpstreamStatusError(429, "busy")], None),  # the trial was refused as busy
        ([0.0, UpstreamStatusError(400, "bad request")], None),  # the client's own fault
        ([100.0], 1.0),  # the trial's client went away
    ],
    ids=["429", "400", "client-gone"],
)
async def test_a_trial_without_a_verdict_does_not_eject_for_ever(
    autojump_clock: MockClock, trial: list[Step], disconnect_after: float | None
) -> None:
    """A half-open backend's trial request that ends with neither a success nor a failure
    that counts must leave the backend able to get another trial, not ejected for ever."""
    flaky = ScriptedBackend(
        "flaky",
        before=[UpstreamStatusError(503, "down")],
        ejection=EjectionSettings(failures=1, cooldown=10),
    )
    upstreams = upstreams_of(flaky, good("steady"))
    ejected_at = await _eject(upstreams)
    breaker = upstreams[0].breaker
    assert breaker.state(ejected_at) == "open"
    await trio.sleep(10)
    assert breaker.state(trio.current_time()) == "half_open"
    flaky.before = trial
    await run(upstreams=upstreams, disconnect_after=disconnect_after)
    assert breaker.state(trio.current_time() + 1000) != "open"


async def test_trial_success_closes_and_trial_failure_reopens(autojump_clock: MockClock) -> None:
    flaky = ScriptedBackend(
        "flaky",
        before=[UpstreamStatusError(503, "down")],
        ejection=EjectionSettings(failures=1, cooldown=10),
    )
    upstreams = upstreams_of(flaky, good("steady"))
    breaker = upstreams[0].breaker
    await _eject(upstreams)
    skipped = await run(upstreams=upstreams)
    assert skipped.exchange.log == ["steady=ok"]  # ejected: not even tried
    await trio.sleep(10)
    failed_trial = await run(upstreams=upstreams)
    assert failed_trial.exchange.log[0] == "flaky=503" and failed_trial.client.status == 200
    assert breaker.state(trio.current_time()) == "open"
    await trio.sleep(10)
    flaky.before = []
    flaky.body = [chunk("x"), DONE]
    trial = await run(upstreams=upstreams)
    assert trial.exchange.log == ["flaky=ok"]
    assert breaker.state(trio.current_time()) == "closed" and breaker.failures == 0


# --- unary answers and usage ------------------------------------------------------------


async def test_unary_answer_is_one_message_with_its_length(autojump_clock: MockClock) -> None:
    answer = b'{"choices": [{"index": 0}], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}'
    backend = ScriptedBackend(
        "b", before=[1.0], body=[answer[:10], 2.0, answer[10:]], content_type="application/json"
    )
    result = await run(backend, stream=False)
    [(t, start, _), (t_body, last, phase)] = result.client.messages
    assert (t, start["status"]) == (3.0, 200)  # headers wait for the whole body
    assert dict(start["headers"])[b"content-length"] == str(len(answer)).encode()
    assert (t_body, last["body"], last["more_body"], phase) == (3.0, answer, False, "finishing")
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (4, 2)


async def test_unary_first_byte_timeout_is_a_real_504(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend(
        "b", body=[100.0, b"{}"], content_type="application/json", timeouts=Timeouts(first_byte=5)
    )
    result = await run(backend, stream=False)
    assert (result.client.messages[0][0], result.client.status) == (5.0, 504)
    body = json.loads(result.client.messages[1][1]["body"])
    assert body["error"]["code"] == "upstream_timeout"
    assert result.record.outcome == "timeout"


@pytest.mark.parametrize("hide", [False, True])
async def test_usage_only_chunk_is_counted_and_hidden_when_asked(
    autojump_clock: MockClock, hide: bool
) -> None:
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}}\n\n'
    backend = ScriptedBackend("b", body=[chunk("a"), usage, DONE])
    result = await run(backend, hide_usage=hide)
    assert events_of(result.client.body) == (
        [chunk("a"), DONE] if hide else [chunk("a"), usage, DONE]
    )
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (7, 1)
