"""The sans-I/O decision modules at their boundaries, table by table: timer arithmetic
(:mod:`gateway.timers`), which route a model name reaches and the request policy
(:mod:`gateway.routing`), target order and passive health (:mod:`gateway.balancer`), token
counts (:mod:`gateway.usage`), and the config limits that bound them. Plain values in,
plain values out: no trio, no sockets, no clock but the numbers given.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.abc import EjectionSettings, Timeouts
from gateway.balancer import (
    Breaker,
    BreakerState,
    Candidate,
    counts_against_backend,
    is_retryable,
    order_targets,
    upstream_load,
)
from gateway.config import Route, Strategy, build_config
from gateway.errors import (
    ConfigError,
    GatewayError,
    NoBackendAvailable,
    Overloaded,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from gateway.keepalive import KeepaliveSettings
from gateway.routing import Router, apply_policy
from gateway.timers import HeartbeatClock, TimerName, UpstreamClock
from gateway.usage import Usage, parse_usage

BACKEND = {"a": {"type": "openai", "url": "http://h/v1"}}
STRATEGIES: list[Strategy] = ["priority", "round_robin", "weighted", "least_busy"]


def below(x: float) -> float:
    """The float just under ``x``: the last instant before a boundary."""
    return math.nextafter(x, -math.inf)


# --- timers: heartbeats -----------------------------------------------------------------


@pytest.mark.parametrize("interval", [0, -1.0, -0.0])
def test_heartbeat_clock_refuses_an_interval_that_is_not_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        HeartbeatClock(interval, now=0.0)


@pytest.mark.parametrize(
    "interval,writes,now,due_at,due",
    [
        (2.0, [], below(12.0), 12.0, False),
        (2.0, [], 12.0, 12.0, True),  # due exactly at the boundary
        (2.0, [11.0], 12.0, 13.0, False),  # a write pushes it back
        (2.0, [11.0], below(13.0), 13.0, False),
        (2.0, [11.0], 13.0, 13.0, True),
        (2.0, [11.0, 12.5], 13.0, 14.5, False),  # the last write counts
        (1e-9, [], 10.0 + 1e-9, 10.0 + 1e-9, True),
        (15.0, [10.0], 25.0, 25.0, True),  # a write at the start instant changes nothing
    ],
)
def test_heartbeat_clock_boundaries(
    interval: float, writes: list[float], now: float, due_at: float, due: bool
) -> None:
    clock = HeartbeatClock(interval, now=10.0)
    for t in writes:
        clock.note_write(t)
    assert clock.due_at == due_at
    assert clock.is_due(now) is due


@pytest.mark.parametrize(
    "interval,valid",
    [(0, True), (0.001, True), (3600, True), (-0.001, False), (-1, False)],
)
def test_keepalive_interval_zero_is_off_and_negative_is_refused(
    interval: float, valid: bool
) -> None:
    if valid:
        assert KeepaliveSettings(interval=interval).interval == interval
    else:
        with pytest.raises(ValidationError, match="greater than or equal to 0"):
            KeepaliveSettings(interval=interval)


# --- timers: upstream ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "timeouts,byte_times,deadline,expired",
    [
        ({"first_byte": 5}, [], 5.0, "first_byte"),
        ({"first_byte": 5, "total": 5}, [], 5.0, "total"),  # a tie is the total's
        ({"first_byte": 5, "total": 6}, [], 5.0, "first_byte"),
        ({"first_byte": 6, "total": 5}, [], 5.0, "total"),
        ({"first_byte": 5, "idle": 2}, [below(5.0)], below(5.0) + 2, "idle"),
        ({"idle": 2}, [1.0, 2.0, 3.0], 5.0, "idle"),  # each byte restarts it
        ({"idle": 2, "total": 10}, [8.0], 10.0, "total"),  # idle at 10 ties total
        ({"idle": 2, "total": 10}, [7.5], 9.5, "idle"),
        ({"first_byte": 1, "idle": 3}, [0.5], 3.5, "idle"),  # first_byte is over at 0.5
        ({"first_byte": 1, "total": 4}, [0.5], 4.0, "total"),  # no idle limit after it
    ],
)
def test_upstream_clock_boundaries(
    timeouts: dict[str, float], byte_times: list[float], deadline: float, expired: str
) -> None:
    clock = UpstreamClock(Timeouts(**timeouts), now=0.0)
    for t in byte_times:
        clock.note_bytes(t)
    assert clock.deadline == deadline
    assert clock.expired() == expired


@pytest.mark.parametrize(
    "timeouts,byte_times",
    [
        ({}, []),
        ({"idle": 2}, []),  # idle starts only with the first byte
        ({"first_byte": 1}, [0.5]),  # and first_byte ends with it
    ],
)
def test_upstream_clock_without_an_armed_timer_never_fires(
    timeouts: dict[str, float], byte_times: list[float]
) -> None:
    clock = UpstreamClock(Timeouts(**timeouts), now=0.0)
    for t in byte_times:
        clock.note_bytes(t)
    assert clock.deadline == math.inf


@pytest.mark.parametrize("name,value", [("first_byte", 5.0), ("idle", None), ("total", 0.25)])
def test_upstream_clock_names_its_limits(name: TimerName, value: float | None) -> None:
    clock = UpstreamClock(Timeouts(first_byte=5, total=0.25), now=0.0)
    assert clock.limit(name) == value


@pytest.mark.parametrize("name", ["connect", "first_byte", "idle", "total"])
@pytest.mark.parametrize("value", [0, -1])
def test_timeouts_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        Timeouts(**{name: value})


# --- routing: which route ------------------------------------------------------------------


def router(routes: dict[str, dict[str, Any]]) -> Router:
    config = build_config(
        {"backends": BACKEND, "routes": {n: {"backend": "a", **r} for n, r in routes.items()}},
        environ={},
    )
    return Router(config.routes)


ROUTES = {
    "one": {"model": "alpha", "aliases": ["al"], "match": ["b*", "shared-*"]},
    "two": {"model": "beta", "aliases": ["b-exact"], "match": ["shared-*", "*-2", "v[12]", "m?"]},
    "last": {"model": "gamma", "match": ["*"]},
}


@pytest.mark.parametrize(
    "model,route",
    [
        ("beta", "two"),  # a later route's exact name beats an earlier route's pattern
        ("b-exact", "two"),  # so does its alias
        ("bx", "one"),
        ("shared-1", "one"),  # two routes' patterns match: the first in the config wins
        ("x-2", "two"),
        ("v1", "two"),
        ("v3", "last"),
        ("m1", "two"),
        ("m12", "last"),  # ? is one character
        ("al", "one"),
        ("Alpha", "last"),  # names and patterns are case-sensitive
        ("BX", "last"),
        ("", "last"),  # * matches the empty name
        ("org/model:tag", "last"),  # * crosses / and :
    ],
)
def test_router_precedence(model: str, route: str) -> None:
    resolved = router(ROUTES).resolve(model)
    assert resolved is not None and resolved.name == route


@pytest.mark.parametrize("model", ["", "alph", "alpha ", " alpha", "shared", "b"])
def test_router_without_a_catch_all(model: str) -> None:
    routes = {"one": {"model": "alpha", "match": ["alpha-*", "shared-?"]}}
    assert router(routes).resolve(model) is None


def test_router_lists_names_and_aliases_in_config_order_never_patterns() -> None:
    assert router(ROUTES).public_models() == ["alpha", "al", "beta", "b-exact", "gamma"]


@pytest.mark.parametrize(
    "routes,message",
    [
        (
            {"one": {"model": "x"}, "two": {"model": "y", "aliases": ["x"]}},
            "routes.two: model name 'x' is already used by routes.one",
        ),
        (
            {"one": {"aliases": ["z"]}, "two": {"model": "z"}},
            "routes.two: model name 'z' is already used by routes.one",
        ),
        (
            {"one": {"max_attempts": 0}},
            "routes.one.max_attempts: Input should be greater than or equal to 1",
        ),
        (
            {"one": {"failover_deadline": 0}},
            "routes.one.failover_deadline: Input should be greater than 0",
        ),
        (
            {"one": {"keepalive": {"interval": -1}}},
            "routes.one.keepalive.interval: Input should be greater than or equal to 0",
        ),
    ],
)
def test_route_limits_in_the_config(routes: dict[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        router(routes)
    assert caught.value.message == message


@pytest.mark.parametrize(
    "settings,max_attempts,deadline",
    [
        ({}, 3, 30.0),  # the defaults
        ({"max_attempts": 1}, 1, 30.0),
        ({"failover_deadline": 0.001}, 3, 0.001),
    ],
)
def test_route_failover_settings(
    settings: dict[str, Any], max_attempts: int, deadline: float
) -> None:
    [route] = router({"one": settings}).routes
    assert (route.settings.max_attempts, route.settings.failover_deadline) == (
        max_attempts,
        deadline,
    )


# --- routing: the request policy ----------------------------------------------------------


def route_with(defaults: dict[str, Any], caps: dict[str, float]) -> Route:
    [route] = router({"r": {"defaults": defaults, "caps": caps}}).routes
    return route


@pytest.mark.parametrize(
    "defaults,caps,body,expected",
    [
        # caps at their limit
        ({}, {"max_tokens": 256}, {"max_tokens": 256}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": 257}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": 255}, {"max_tokens": 255}),
        ({}, {"max_tokens": 256}, {"max_tokens": 256.5}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": 255.5}, {"max_tokens": 255.5}),
        ({}, {"max_tokens": 256}, {"max_tokens": -1}, {"max_tokens": -1}),  # a floor is not ours
        ({}, {"max_tokens": 0}, {"max_tokens": 1}, {"max_tokens": 0}),
        # absent or not a number: set to the cap
        ({}, {"max_tokens": 256}, {}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": None}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": True}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": "100"}, {"max_tokens": 256}),
        ({}, {"max_tokens": 256}, {"max_tokens": [1]}, {"max_tokens": 256}),
        # fractional caps stay fractional
        ({}, {"temperature": 1.5}, {"temperature": 2}, {"temperature": 1.5}),
        ({}, {"temperature": 1.5}, {"temperature": 1.5}, {"temperature": 1.5}),
        ({}, {"temperature": 1.5}, {"temperature": 1}, {"temperature": 1}),
        # defaults fill only what is absent; an explicit null is the client's choice
        ({"top_p": 0.9}, {}, {}, {"top_p": 0.9}),
        ({"top_p": 0.9}, {}, {"top_p": 0.1}, {"top_p": 0.1}),
        ({"top_p": 0.9}, {}, {"top_p": None}, {"top_p": None}),
        # a default above the cap is capped too
        ({"max_tokens": 9000}, {"max_tokens": 256}, {}, {"max_tokens": 256}),
        ({"max_tokens": 100}, {"max_tokens": 256}, {}, {"max_tokens": 100}),
        # nothing configured: the body as it came
        ({}, {}, {"x": 1}, {"x": 1}),
    ],
)
def test_apply_policy_at_its_limits(
    defaults: dict[str, Any], caps: dict[str, float], body: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = dict(body)
    out = apply_policy(body, route_with(defaults, caps))
    assert out == expected
    assert [type(v) for v in out.values()] == [type(v) for v in expected.values()]
    assert body == before  # the client's body is not changed in place


# --- balancer: target order ------------------------------------------------------------------


def c(index: int, **kw: Any) -> Candidate:
    return Candidate(index=index, **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "candidates,expected",
    [
        ([], []),
        ([c(0)], [0]),
        ([c(0, ready=False)], []),
        ([c(0, breaker="open")], []),
        ([c(0, breaker="half_open")], [0]),
        ([c(0, breaker="half_open", ready=False)], []),  # a trial needs a ready backend
        ([c(0, breaker="half_open"), c(1)], [0, 1]),
        ([c(0), c(1, breaker="half_open"), c(2, breaker="half_open")], [1, 2, 0]),
        ([c(0, breaker="open"), c(1, ready=False), c(2)], [2]),
    ],
)
def test_order_targets_with_none_one_or_some_usable(
    strategy: Strategy, candidates: list[Candidate], expected: list[int]
) -> None:
    assert order_targets(strategy, candidates, turn=0, draw=0.0) == expected


@pytest.mark.parametrize(
    "strategy,candidates,turn,draw,expected",
    [
        ("round_robin", [c(0), c(1), c(2)], 10**9 + 1, 0.0, [2, 0, 1]),
        ("round_robin", [c(0), c(1, ready=False), c(2)], 1, 0.0, [2, 0]),
        ("weighted", [c(0), c(1)], 0, 0.0, [0, 1]),
        ("weighted", [c(0), c(1)], 0, below(0.5), [0, 1]),
        ("weighted", [c(0), c(1)], 0, 0.5, [1, 0]),  # the boundary belongs to the next
        ("weighted", [c(0), c(1)], 0, below(1.0), [1, 0]),
        ("weighted", [c(0, weight=1), c(1, weight=3)], 0, 0.25, [1, 0]),
        ("weighted", [c(0, weight=1), c(1, weight=3)], 0, below(0.25), [0, 1]),
        ("weighted", [c(0), c(1, weight=2), c(2, weight=2)], 0, 0.0, [0, 1, 2]),  # ties by index
        ("weighted", [c(0)], 0, below(1.0), [0]),
        ("least_busy", [c(0), c(1), c(2)], 1, 0.0, [1, 2, 0]),  # all idle: rotate
        ("least_busy", [c(0, load=3, weight=3), c(1, load=1)], 0, 0.0, [0, 1]),  # 1.0 each
        ("least_busy", [c(0, load=3, weight=3), c(1, load=1)], 1, 0.0, [1, 0]),
        ("least_busy", [c(0, load=0.5), c(1)], 0, 0.0, [1, 0]),
        ("priority", [c(0), c(1), c(2)], 5, 0.9, [0, 1, 2]),  # turn and draw ignored
    ],
)
def test_order_targets_boundaries(
    strategy: Strategy, candidates: list[Candidate], turn: int, draw: float, expected: list[int]
) -> None:
    assert order_targets(strategy, candidates, turn=turn, draw=draw) == expected


@pytest.mark.parametrize(
    "in_flight,queued,running,waiting,load",
    [(0, 0, None, None, 0.0), (1, 2, None, None, 3.0), (0, 0, 5, 7, 12.0), (1, 1, 0, None, 2.0)],
)
def test_upstream_load(
    in_flight: int, queued: int, running: int | None, waiting: int | None, load: float
) -> None:
    assert upstream_load(in_flight, queued, running, waiting) == load


@pytest.mark.parametrize(
    "error,retry,counts",
    [
        (UpstreamStatusError(599, "x"), True, True),
        (UpstreamStatusError(500, "x"), True, True),
        (UpstreamStatusError(499, "x"), False, False),
        (UpstreamStatusError(429, "x"), True, False),
        (UpstreamStatusError(428, "x"), False, False),
        (UpstreamStatusError(404, "x"), False, False),
        (UpstreamProtocolError("x"), True, True),
        (Overloaded("x", status=429), True, False),
        (NoBackendAvailable("x"), False, False),
        (GatewayError("x"), False, False),
    ],
)
def test_failure_classification_boundaries(error: GatewayError, retry: bool, counts: bool) -> None:
    assert (is_retryable(error), counts_against_backend(error)) == (retry, counts)


# --- balancer: the breaker ------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_breaker_ejects_exactly_at_the_limit(limit: int) -> None:
    breaker = Breaker(EjectionSettings(failures=limit, cooldown=10))
    for t in range(limit - 1):
        assert breaker.on_failure(float(t)) is False
        assert breaker.state(float(t)) == "closed"
    at = float(limit - 1)
    assert breaker.on_failure(at) is True
    assert breaker.failures == limit
    assert breaker.ejected_until == at + 10
    assert breaker.state(at) == "open"
    assert breaker.state(below(at + 10)) == "open"
    assert breaker.state(at + 10) == "half_open"  # cooled down exactly at the boundary


def test_breaker_failures_while_open_do_not_extend_the_ejection() -> None:
    breaker = Breaker(EjectionSettings(failures=2, cooldown=10))
    breaker.on_failure(0)
    assert breaker.on_failure(1) is True
    assert breaker.on_failure(5) is False  # a request that started before the ejection
    assert (breaker.ejected_until, breaker.failures) == (11, 3)


@pytest.mark.parametrize(
    "steps,state",
    [
        ([("attempt", 0)], "closed"),  # no trial while closed
        ([("fail", 0), ("attempt", 5)], "open"),  # nor while still open
        ([("fail", 0), ("attempt", 10)], "open"),  # the trial runs: one at a time
        ([("fail", 0), ("attempt", 10), ("ok", 11)], "closed"),
        ([("fail", 0), ("attempt", 10), ("fail", 12)], "open"),  # until 22
        ([("fail", 0), ("attempt", 10), ("fail", 12), ("at", 22)], "half_open"),
        ([("fail", 0), ("attempt", 10), ("fail", 12), ("at", below(22))], "open"),
        ([("fail", 0), ("at", 10), ("ok", 10)], "closed"),  # a success from an older request
    ],
)
def test_breaker_half_open(steps: list[tuple[str, float]], state: BreakerState) -> None:
    breaker = Breaker(EjectionSettings(failures=1, cooldown=10))
    now = 0.0
    for action, now in steps:
        if action == "attempt":
            breaker.on_attempt(now)
        elif action == "fail":
            breaker.on_failure(now)
        elif action == "ok":
            breaker.on_success()
    assert breaker.state(now) == state


def test_breaker_failed_trial_ejects_again_and_keeps_counting() -> None:
    breaker = Breaker(EjectionSettings(failures=3, cooldown=10))
    for t in (0.0, 1.0, 2.0):
        breaker.on_failure(t)
    breaker.on_attempt(12.0)
    assert breaker.on_failure(12.5) is True  # a failed trial ejects at once, whatever the count
    assert (breaker.failures, breaker.ejected_until) == (4, 22.5)
    breaker.on_success()
    assert (breaker.failures, breaker.ejected_until, breaker.state(22.5)) == (0, None, "closed")


@pytest.mark.parametrize(
    "failures,cooldown,valid",
    [(0, 30, True), (1, 0.001, True), (-1, 30, False), (3, 0, False), (3, -1, False)],
)
def test_ejection_settings_limits(failures: int, cooldown: float, valid: bool) -> None:
    if valid:
        assert EjectionSettings(failures=failures, cooldown=cooldown).failures == failures
    else:
        with pytest.raises(ValidationError):
            EjectionSettings(failures=failures, cooldown=cooldown)


# --- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document,usage",
    [
        # no usage at all
        ('{"choices": []}', None),
        ('{"usage": null}', None),
        ('{"usage": []}', None),
        ('{"usage": 5}', None),
        ('{"usage": "7"}', None),
        ('{"x": {"usage": {"prompt_tokens": 1}}}', None),  # only the top level counts
        ("[DONE]", None),
        ("", None),
        ('"usage"', None),
        ("[1, 2]", None),
        ("null", None),
        (b"\xff\xfe", None),  # not UTF-8
        ('{"usage": {"prompt_tokens": 1}', None),  # cut short
        # partial usage objects
        ('{"usage": {}}', Usage(None, None, only=True)),
        ('{"usage": {"prompt_tokens": 3}, "choices": [{}]}', Usage(3, None, only=False)),
        ('{"usage": {"completion_tokens": 0}}', Usage(None, 0, only=True)),
        ('{"usage": {"prompt_tokens": 3.0, "completion_tokens": 2}}', Usage(None, 2, only=True)),
        ('{"usage": {"prompt_tokens": null, "completion_tokens": "2"}}', Usage(None, None, True)),
        ('{"usage": {"prompt_tokens": false}}', Usage(None, None, only=True)),
        ('{"usage": {"total_tokens": 9}}', Usage(None, None, only=True)),
        # is it a usage-only chunk: no choices, empty or null ones
        ('{"usage": {"prompt_tokens": 1}, "choices": null}', Usage(1, None, only=True)),
        ('{"usage": {"prompt_tokens": 1}, "choices": []}', Usage(1, None, only=True)),
        ('{"usage": {"prompt_tokens": 1}, "choices": [{"index": 0}]}', Usage(1, None, False)),
        (
            b'{"usage": {"prompt_tokens": 12345678901234, "completion_tokens": 1}}',
            Usage(12345678901234, 1, only=True),
        ),
    ],
)
def test_parse_usage(document: str | bytes, usage: Usage | None) -> None:
    assert parse_usage(document) == usage
