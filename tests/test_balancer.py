"""Routing decisions over scripted backend states: pure functions, no sockets."""

from __future__ import annotations

import pytest

from gateway.abc import EjectionSettings
from gateway.balancer import Breaker, Candidate, counts_against_backend, is_retryable, order_targets
from gateway.config import build_config
from gateway.errors import (
    ContextWindowExceeded,
    InvalidRequest,
    Overloaded,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.routing import apply_policy


def c(index: int, **kw) -> Candidate:
    return Candidate(index=index, **kw)


THREE = [c(0), c(1), c(2)]


def test_priority_keeps_config_order_and_skips_unusable() -> None:
    assert order_targets("priority", THREE, turn=7, draw=0.9) == [0, 1, 2]
    states = [c(0, ready=False), c(1, breaker="open"), c(2)]
    assert order_targets("priority", states, turn=0, draw=0) == [2]


def test_round_robin_rotates_over_healthy_targets() -> None:
    orders = [order_targets("round_robin", THREE, turn=t, draw=0)[0] for t in range(6)]
    assert orders == [0, 1, 2, 0, 1, 2]
    assert order_targets("round_robin", THREE, turn=1, draw=0) == [1, 2, 0]
    with_down = [c(0), c(1, ready=False), c(2)]
    assert [order_targets("round_robin", with_down, turn=t, draw=0)[0] for t in range(4)] == [
        0,
        2,
        0,
        2,
    ]


def test_weighted_draw_picks_by_weight_then_heaviest_first() -> None:
    states = [c(0, weight=1), c(1, weight=3), c(2, weight=1)]
    assert order_targets("weighted", states, turn=0, draw=0.1) == [0, 1, 2]  # 0.5 of 5 → first
    assert order_targets("weighted", states, turn=0, draw=0.5) == [1, 0, 2]  # 2.5 of 5 → second
    assert order_targets("weighted", states, turn=0, draw=0.99) == [2, 1, 0]
    draws = [i / 1000 for i in range(1000)]
    firsts = [order_targets("weighted", states, turn=0, draw=d)[0] for d in draws]
    assert (firsts.count(0), firsts.count(1), firsts.count(2)) == (200, 600, 200)


def test_least_busy_prefers_low_load_per_weight() -> None:
    states = [c(0, load=5), c(1, load=1), c(2, load=3)]
    assert order_targets("least_busy", states, turn=0, draw=0) == [1, 2, 0]
    weighted = [c(0, load=4, weight=4), c(1, load=2)]  # 1.0 per weight vs 2.0
    assert order_targets("least_busy", weighted, turn=0, draw=0) == [0, 1]


def test_least_busy_ties_rotate() -> None:
    tied = [c(0, load=2), c(1, load=2)]
    assert [order_targets("least_busy", tied, turn=t, draw=0)[0] for t in range(4)] == [0, 1, 0, 1]


def test_all_ejected_or_all_loading_gives_nothing() -> None:
    assert (
        order_targets("priority", [c(0, breaker="open"), c(1, breaker="open")], turn=0, draw=0)
        == []
    )
    assert order_targets("least_busy", [c(0, ready=False), c(1, ready=False)], turn=0, draw=0) == []


def test_half_open_target_gets_its_trial_first() -> None:
    states = [c(0), c(1, breaker="half_open"), c(2, breaker="open")]
    assert order_targets("priority", states, turn=0, draw=0) == [1, 0]
    assert order_targets("priority", [c(0, breaker="half_open")], turn=0, draw=0) == [0]


def test_breaker_ejects_after_consecutive_failures_and_recovers() -> None:
    breaker = Breaker(EjectionSettings(failures=3, cooldown=10))
    assert not breaker.on_failure(0) and not breaker.on_failure(1)
    breaker.on_success()  # the count is of consecutive failures
    assert not breaker.on_failure(2) and not breaker.on_failure(3)
    assert breaker.on_failure(4)
    assert breaker.state(5) == "open" and breaker.state(13.9) == "open"
    assert breaker.state(14) == "half_open"
    breaker.on_attempt(14)
    assert breaker.state(14.1) == "open"  # one trial at a time
    breaker.on_success()
    assert breaker.state(14.2) == "closed" and breaker.failures == 0


def test_breaker_failed_trial_reopens() -> None:
    breaker = Breaker(EjectionSettings(failures=1, cooldown=5))
    assert breaker.on_failure(0)
    breaker.on_attempt(5)
    assert breaker.on_failure(5.5)
    assert breaker.state(6) == "open" and breaker.state(10.5) == "half_open"


def test_a_trial_without_a_verdict_hands_the_trial_on() -> None:
    breaker = Breaker(EjectionSettings(failures=1, cooldown=5))
    assert breaker.on_failure(0)
    breaker.on_attempt(5)
    assert breaker.state(5) == "open"  # the trial runs
    breaker.on_no_verdict()  # its client left, or the upstream was busy
    assert breaker.state(5) == "half_open"  # the next request is the trial
    breaker.on_attempt(6)
    breaker.on_success()
    assert breaker.state(6) == "closed"


def test_no_verdict_outside_a_trial_changes_nothing() -> None:
    breaker = Breaker(EjectionSettings(failures=2, cooldown=5))
    breaker.on_failure(0)
    breaker.on_no_verdict()
    assert breaker.failures == 1 and breaker.state(0) == "closed"
    assert breaker.on_failure(1)  # still consecutive: no verdict is not a success


def test_one_identified_client_cannot_eject_a_backend_for_everyone() -> None:
    breaker = Breaker(EjectionSettings(failures=3, cooldown=10))
    assert not any(breaker.on_failure(t, client="key-a") for t in range(10))
    assert breaker.state(10) == "closed"
    assert breaker.on_failure(10, client="key-b")  # a second client: the backend it is
    assert breaker.state(11) == "open"


def test_failures_of_clients_that_cannot_be_told_apart_eject_as_configured() -> None:
    breaker = Breaker(EjectionSettings(failures=2, cooldown=10))
    assert not breaker.on_failure(0, client="")
    assert breaker.on_failure(1, client="")


def test_success_forgets_who_failed() -> None:
    breaker = Breaker(EjectionSettings(failures=2, cooldown=10))
    breaker.on_failure(0, client="key-a")
    breaker.on_success()
    breaker.on_failure(1, client="key-b")
    assert not breaker.on_failure(2, client="key-b")  # key-a's failure no longer counts


def test_breaker_never_ejects_with_zero_failures_setting() -> None:
    breaker = Breaker(EjectionSettings(failures=0))
    assert not any(breaker.on_failure(t) for t in range(100))
    assert breaker.state(100) == "closed"


@pytest.mark.parametrize(
    "error,retry,counts",
    [
        (UpstreamConnectError("x"), True, True),
        (UpstreamTimeout("x"), True, True),
        (UpstreamStatusError(503, "x"), True, True),
        (UpstreamStatusError(429, "x"), True, False),
        (UpstreamStatusError(400, "x"), False, False),
        (Overloaded("x"), True, False),
        (InvalidRequest("x"), False, False),
        # The next target may serve a longer context; the refusing one is not at fault.
        (ContextWindowExceeded("x", tokens=9000, limit=8192), True, False),
    ],
)
def test_failure_classification(error, retry, counts) -> None:
    assert is_retryable(error) is retry
    assert counts_against_backend(error) is counts


def test_request_policy_defaults_and_caps() -> None:
    config = build_config(
        {
            "backends": {"a": {"type": "openai", "url": "http://h/v1"}},
            "routes": {
                "r": {
                    "backend": "a",
                    "defaults": {"temperature": 0.2, "top_p": 0.9},
                    "caps": {"max_tokens": 256},
                }
            },
        },
        environ={},
    )
    [route] = config.routes
    assert apply_policy({"model": "r"}, route) == {
        "model": "r",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
    }
    assert apply_policy({"temperature": 1.0, "max_tokens": 9000}, route) == {
        "temperature": 1.0,
        "top_p": 0.9,
        "max_tokens": 256,
    }
    assert apply_policy({"max_tokens": 100}, route)["max_tokens"] == 100
    # The SDKs' newer name for the same limit (which vLLM and llama-cpp-python read first)
    # is capped too, where it is given.
    assert apply_policy({"max_completion_tokens": 9000}, route) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 256,
        "max_tokens": 256,
    }
    both = apply_policy({"max_completion_tokens": 100, "max_tokens": 50}, route)
    assert (both["max_completion_tokens"], both["max_tokens"]) == (100, 50)


def test_route_needs_backend_or_targets() -> None:
    from gateway.errors import ConfigError

    base = {"backends": {"a": {"type": "openai", "url": "http://h/v1"}}}
    with pytest.raises(ConfigError, match=r"routes\.r: Value error, give either"):
        build_config({**base, "routes": {"r": {}}}, environ={})
    with pytest.raises(ConfigError, match=r"routes.r.targets.1.backend: unknown backend 'zz'"):
        build_config(
            {**base, "routes": {"r": {"targets": [{"backend": "a"}, {"backend": "zz"}]}}},
            environ={},
        )
