"""The relay choosing and leaving backends, driven directly (:mod:`tests.relay_script`):
failover before the first data event and never after, passive health (ejection) across
requests, and unary answers with their usage, under trio's MockClock."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import MockClock

from gateway.abc import (
    EjectionSettings,
    Timeouts,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from gateway.service import Upstream
from tests.relay_script import (
    DONE,
    HB,
    ScriptedBackend,
    Step,
    chunk,
    down,
    error_of,
    events_of,
    good,
    run,
    upstreams_of,
)

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
