"""The relay's state machine, driven directly (:mod:`tests.relay_script`): its phases, the
heartbeats through each, timers measured on upstream bytes only, how a stream may end, and a
client gone in every phase, each instant exact under trio's MockClock."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import MockClock

from gateway.abc import (
    AdmissionSettings,
    Timeouts,
)
from gateway.answer import END_GRACE
from tests.relay_script import (
    DONE,
    HB,
    Run,
    ScriptedBackend,
    Step,
    chunk,
    error_of,
    events_of,
    good,
    run,
    upstreams_of,
)

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
