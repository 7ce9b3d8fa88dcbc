"""Sans-I/O pieces: routing decisions, timer arithmetic, error mapping; and the heartbeat
task's timing under trio's MockClock."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import MockClock

from gateway.abc import Timeouts
from gateway.config import build_config
from gateway.dialects import CHAT
from gateway.errors import Overloaded, UpstreamStatusError, error_body, error_event
from gateway.inflight import InFlight
from gateway.keepalive import KeepaliveSettings
from gateway.routing import Router, upstream_body
from gateway.timers import HeartbeatClock, UpstreamClock
from gateway.writer import ResponseWriter, heartbeat


def make_router() -> Router:
    config = build_config(
        {
            "backends": {"a": {"type": "openai", "url": "http://h/v1"}},
            "routes": {
                "one": {
                    "model": "alpha",
                    "aliases": ["a1"],
                    "match": ["alpha-*", "x*"],
                    "backend": "a",
                },
                "two": {"model": "beta", "match": ["*"], "backend": "a", "upstream_model": "b-up"},
            },
        },
        environ={},
    )
    return Router(config.routes)


@pytest.mark.parametrize(
    "model,route",
    [
        ("alpha", "one"),
        ("a1", "one"),
        ("alpha-7b", "one"),
        ("xyz", "one"),
        ("beta", "two"),
        ("anything", "two"),
        ("ALPHA", "two"),
    ],
)
def test_router_resolves(model: str, route: str) -> None:
    resolved = make_router().resolve(model)
    assert resolved is not None and resolved.name == route


def test_router_exact_beats_patterns_and_lists_no_patterns() -> None:
    router = make_router()
    assert router.public_models() == ["alpha", "a1", "beta"]
    beta = router.resolve("beta")
    alpha = router.resolve("alpha-x")
    assert beta is not None and alpha is not None
    [beta_target] = beta.settings.all_targets
    [alpha_target] = alpha.settings.all_targets
    body = {"model": "beta", "x": 1}
    assert upstream_body(body, beta_target) == {"model": "b-up", "x": 1}
    assert upstream_body(body, alpha_target) is body


def test_heartbeat_clock() -> None:
    clock = HeartbeatClock(2.0, now=10.0)
    assert clock.due_at == 12.0 and not clock.is_due(11.9) and clock.is_due(12.0)
    clock.note_write(11.0)
    assert clock.due_at == 13.0
    with pytest.raises(ValueError):
        HeartbeatClock(0, now=0)


def test_upstream_clock_phases() -> None:
    clock = UpstreamClock(Timeouts(first_byte=5, idle=2, total=60), now=0.0)
    assert clock.deadline == 5 and clock.expired() == "first_byte"
    clock.note_bytes(4.0)  # heartbeats never call this; only upstream bytes do
    assert clock.deadline == 6 and clock.expired() == "idle"
    clock.note_bytes(59.5)
    assert clock.deadline == 60 and clock.expired() == "total"


def test_upstream_clock_unlimited() -> None:
    clock = UpstreamClock(Timeouts(), now=0.0)
    assert clock.deadline == float("inf")
    clock.note_bytes(1.0)
    assert clock.deadline == float("inf")


@pytest.mark.parametrize(
    "body,message,type_,code",
    [
        (
            b'{"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}',
            "bad",
            "invalid_request_error",
            "x",
        ),
        (
            b'{"object": "error", "message": "vllm says no", "type": "BadRequestError", "code": 400}',
            "vllm says no",
            "BadRequestError",
            "400",
        ),
        (b'{"error": "plain string"}', "plain string", "invalid_request_error", None),
        (
            b"<html>oops</html>",
            "upstream returned HTTP 400: <html>oops</html>",
            "invalid_request_error",
            None,
        ),
    ],
)
def test_upstream_error_bodies(body, message, type_, code) -> None:
    error = UpstreamStatusError.from_body(400, body)
    assert (error.status, error.message, error.type, error.code) == (400, message, type_, code)


def test_error_shapes() -> None:
    error = Overloaded("queue full", retry_after=2.4, status=429)
    assert error_body(error) == {
        "error": {
            "message": "queue full",
            "type": "rate_limit_error",
            "param": None,
            "code": "overloaded",
        }
    }
    assert error.headers() == {"Retry-After": "2"}
    event = error_event(error)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["code"] == "overloaded"


def test_heartbeat_bytes() -> None:
    assert CHAT.heartbeat(KeepaliveSettings(comment="k")) == b": k\n\n"
    assert CHAT.heartbeat(KeepaliveSettings(comment="")) == b":\n\n"


async def test_heartbeat_task_timing(autojump_clock: MockClock) -> None:
    """Heartbeats go out after `interval` of client silence, and a relay write pushes the
    next one back: virtual time, exact instants."""
    sent: list[tuple[float, bytes]] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            sent.append((trio.current_time(), message["body"]))

    start = trio.current_time()
    writer = ResponseWriter(send, HeartbeatClock(1.0, start))
    entry = InFlight("r", "route", "backend", True, start)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, writer, lambda: b": hb\n\n", entry, None)
        await writer.start(200, [])
        await trio.sleep(3.5)
        await writer.write(b"data: x\n\n")  # at 3.5: the next heartbeat moves to 4.5
        await trio.sleep(2.2)
        nursery.cancel_scope.cancel()
    times = [round(t - start, 6) for t, body in sent if body == b": hb\n\n"]
    assert times == [1.0, 2.0, 3.0, 4.5, 5.5]
    assert entry.heartbeats == 5


def test_parse_usage() -> None:
    from gateway.usage import Usage, parse_usage

    whole = '{"choices": [{"index": 0}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}'
    assert parse_usage(whole) == Usage(7, 3, only=False)
    assert parse_usage(b'{"choices": [], "usage": {"prompt_tokens": 2}}') == Usage(2, None, True)
    assert parse_usage('{"usage": {"prompt_tokens": true, "completion_tokens": "9"}}') == Usage(
        None, None, True
    )
    assert parse_usage('{"choices": []}') is None
    assert parse_usage("[DONE]") is None
    assert parse_usage("[1, 2]") is None
    # What orjson refuses and the stdlib reads still gives its usage.
    surrogate = '{"choices": [{"text": "\\ud800"}], "usage": {"prompt_tokens": 4}}'
    assert parse_usage(surrogate) == Usage(4, None, only=False)
    assert parse_usage('{"x": NaN, "usage": {"completion_tokens": 5}}') == Usage(None, 5, True)
    # A count no upstream could mean is not reported: a negative one, or one of 400
    # digits, broke the counters that take it (and what the relay does after them).
    nonsense = '{"usage": {"prompt_tokens": -5, "completion_tokens": 1%s}}' % ("0" * 400)
    assert parse_usage(nonsense) == Usage(None, None, True)
