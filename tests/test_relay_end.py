"""How a relayed stream ends: the upstream's terminal event ends the client's response at
once, and nothing the upstream or the gateway does after it reaches the client — not bytes
after ``[DONE]``, not a heartbeat, not a timer, not shutdown, not the client's own hang-up.

Driven directly on MockClock with the scripted backends of :mod:`tests.test_relay_states`."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio.testing import MockClock

from gateway.abc import JSONObject, Timeouts, UpstreamProtocolError, UpstreamRequest
from gateway.answer import END_GRACE
from gateway.dialects.responses import RESPONSES, ResponsesFromChat
from gateway.errors import ShuttingDown
from gateway.exchange import Attempt, Exchange
from gateway.inflight import InFlightTable
from gateway.keepalive import KeepaliveSettings
from gateway.relay import relay
from gateway.sse import SSEFramer

from .relay_script import (
    DONE,
    HB,
    Client,
    ScriptedBackend,
    chunk,
    make_exchange,
    run,
    upstreams_of,
)


async def test_bytes_after_done_are_not_relayed(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", body=[chunk("a") + DONE + chunk("late"), b": after\n\n"])
    result = await run(backend)
    assert result.client.body == chunk("a") + DONE
    assert result.client.ended_at == 0.0
    assert result.record.outcome == "completed"


async def test_done_goes_out_with_the_end_of_the_response(autojump_clock: MockClock) -> None:
    """One message: a client never waits, between ``[DONE]`` and the end, on the upstream."""
    backend = ScriptedBackend("b", body=[chunk("a"), 1.0, DONE, 3.0])
    result = await run(backend, interval=0.5)
    [*_, (at, last, _)] = result.client.messages
    assert (at, last["body"], last["more_body"]) == (1.0, DONE, False)
    assert HB not in result.client.body[result.client.body.index(DONE) :]


async def test_upstream_that_ends_its_body_soon_after_done(autojump_clock: MockClock) -> None:
    """The upstream's end arrives within the grace: read to the end (its connection could be
    reused), and the client was not kept waiting for it."""
    backend = ScriptedBackend("b", body=[chunk("a"), DONE, END_GRACE / 2])
    result = await run(backend, interval=0.1)
    assert result.client.ended_at == 0.0
    assert backend.closed_at == END_GRACE / 2
    assert result.record.outcome == "completed"
    assert result.exchange.log == ["b=ok"]


async def test_an_upstream_error_after_done_is_not_the_clients(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", body=[chunk("a"), DONE, 0.1, UpstreamProtocolError("reset")])
    result = await run(backend, interval=0.05)
    assert result.client.body == chunk("a") + DONE
    assert result.record.outcome == "completed"
    assert result.exchange.log == ["b=ok"]
    assert result.upstreams[0].breaker.failures == 0


async def test_timers_do_not_fire_after_done(autojump_clock: MockClock) -> None:
    """An idle timer that would expire while the upstream holds on after ``[DONE]`` is not
    an upstream timeout: the relay was over."""
    backend = ScriptedBackend("b", body=[chunk("a"), DONE, 1000.0], timeouts=Timeouts(idle=0.1))
    result = await run(backend)
    assert result.client.body == chunk("a") + DONE
    assert result.record.outcome == "completed"
    assert result.exchange.log == ["b=ok"]
    assert backend.closed_at == END_GRACE


async def test_client_hanging_up_after_done_completed(autojump_clock: MockClock) -> None:
    """An SDK closes its connection as soon as it read ``[DONE]``; the server then reports a
    disconnect. The request completed all the same."""
    backend = ScriptedBackend("b", body=[chunk("a"), 1.0, DONE, 1000.0])
    result = await run(backend, interval=0.5, disconnect_after=1.0 + END_GRACE / 2)
    assert result.client.body.endswith(DONE)
    assert result.record.outcome == "completed"
    assert result.record.disconnect_phase is None


async def test_shutdown_after_done_adds_no_error_event(autojump_clock: MockClock) -> None:
    backend = ScriptedBackend("b", body=[chunk("a"), 1.0, DONE, 1000.0])
    exchange, finished = make_exchange(upstreams_of(backend), interval=0.5)
    client = Client(exchange.inflight, trio.current_time())

    async def shut_down_during_the_grace() -> None:
        await trio.sleep(1.0 + END_GRACE / 2)
        assert exchange.inflight.abort_all(ShuttingDown("the gateway shut down")) == 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shut_down_during_the_grace)
        await relay(client.send, exchange, None)
    [record] = finished
    body_messages: list[dict[str, Any]] = [
        m for _, m, _ in client.messages if m["type"] == "http.response.body"
    ]
    assert body_messages[-1]["more_body"] is False
    assert len([m for m in body_messages if not m["more_body"]]) == 1  # ended once
    assert client.body.endswith(DONE)
    assert record.outcome == "completed"
    assert backend.closed_at == 1.0 + END_GRACE / 2


async def test_no_heartbeat_while_the_answer_is_stored(autojump_clock: MockClock) -> None:
    """The terminal event is read and the answer stored before the end goes out: no
    heartbeat may go out meanwhile — a Responses keepalive event would follow
    ``response.completed``, numbered after it, or (translated) be asked of a translator that
    has finished, which failed the whole relay."""
    [upstream] = upstreams_of(ScriptedBackend("b", body=[chunk("a"), chunk("b"), DONE]))
    stored: list[JSONObject] = []

    async def keep(response: JSONObject) -> None:  # a store that takes its time
        await trio.sleep(1.0)
        stored.append(response)

    shape = ResponsesFromChat(response_id="resp_1", model="m", request={}, created_at=0)
    shape.keepalive_events = True
    request = UpstreamRequest("chat/completions", {"model": "m", "stream": True}, True, "rid")
    exchange = Exchange(
        pick_attempts=lambda: [Attempt(upstream, request, shape)],
        request_id="rid",
        stream=True,
        route="r",
        endpoint="responses",
        keepalive=KeepaliveSettings(interval=0.1, responses="event"),
        inflight=InFlightTable(),
        dialect=RESPONSES,
        keep=keep,
    )
    client = Client(exchange.inflight, trio.current_time())
    with trio.fail_after(10):
        await relay(client.send, exchange)
    events = [json.loads(e.data or "") for e in SSEFramer().feed(client.body)]
    assert events[-1]["type"] == "response.completed" and stored
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(set(numbers))
