"""OpenAI Responses over WebSocket (``GET /v1/responses``) on a served gateway, with a raw
wsproto client (:class:`gateway.testing.ws_client.WSClient`): every frame as the server
sends it, pings with their arrival times, and pongs only when the test wants them.

The fake upstream speaks Responses itself (passthrough) or chat only (translation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.protocol import h11 as hypercorn_h11

from gateway.config import build_config
from gateway.teams.keys import hash_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from gateway.testing.ws_client import Rejected, WSClient
from gateway.websocket import MAX_QUEUED
from gateway.ws_stream import GatewayWSStream, install
from tests.conftest import RunningGateway, StartGateway, serve_config

from .teams_gateway import ALPHA, bearer, raw_config
from .test_responses import MODES, events_of, serve_failover_pair

CREATE: dict[str, Any] = {"type": "response.create", "model": "m", "input": "Hi"}


async def serve_and_connect(
    start_gateway: StartGateway, **config: Any
) -> tuple[RunningGateway, WSClient]:
    """A gateway from ``start_gateway(**config)``, and a socket open on it."""
    gw = await start_gateway(**config)
    return gw, await WSClient.connect(gw.url)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def test_hypercorn_builds_the_gateways_websocket_stream() -> None:
    """The ping extension rides on hypercorn internals (gateway.ws_stream): serving
    installs it, and the pinned hypercorn still builds its stream by that name."""
    install()
    assert hypercorn_h11.WSStream is GatewayWSStream


@pytest.mark.parametrize("mode", MODES)
async def test_turns_on_one_socket_are_answered_in_order_with_the_sse_events(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw, ws = await serve_and_connect(start_gateway, backend=MODES[mode])
    # Three turns sent at once: run one at a time, in arrival order.
    for n in (1, 2, 3):
        await ws.send_json({**CREATE, "fake": {"tokens": n}})
    answers = [await ws.events_until_end() for _ in range(3)]
    await ws.close()
    for n, events in zip((1, 2, 3), answers, strict=True):
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] == "response.completed"
        assert text_of(events) == "".join(f"tok{i} " for i in range(n))
        if mode == "translated":
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # Over HTTP the same request streams the same events (ids and times aside).
    async with gw.client() as client:
        resp = await client.post(
            "/v1/responses", json={**CREATE, "stream": True, "fake": {"tokens": 2}}
        )
    over_http = events_of(resp.content)
    assert [e["type"] for e in over_http] == [e["type"] for e in answers[1]]
    upstream = [r for r in fake.requests if r.path.endswith(("/responses", "/completions"))]
    assert [r.body.get("stream") for r in upstream] == [True] * 4
    assert all(r.sent for r in upstream)


async def test_store_false_turns_chain_on_the_socket_without_the_store(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw, ws = await serve_and_connect(start_gateway, backend=MODES["native"])
    await ws.send_json({**CREATE, "store": False, "fake": {"tokens": 1}})
    first = (await ws.events_until_end())[-1]["response"]
    await ws.send_json(
        {
            **CREATE,
            "input": "And then?",
            "store": False,
            "previous_response_id": first["id"],
            "fake": {"tokens": 1},
        }
    )
    second = (await ws.events_until_end())[-1]["response"]
    # A third turn may go back to the first, which is not the socket's last any more and
    # was never stored: the socket answers with an error event and stays usable.
    await ws.send_json({**CREATE, "store": False, "previous_response_id": first["id"]})
    [error] = await ws.events_until_end()
    await ws.send_json({**CREATE, "previous_response_id": second["id"], "fake": {"tokens": 1}})
    third = await ws.events_until_end()
    await ws.close()
    # The second turn reached the backend with the whole conversation as its input.
    sent = [r.body for r in fake.requests if r.path.endswith("/responses")]
    assert [item["content"] for item in sent[1]["input"] if item.get("role") == "user"] == [
        [{"type": "input_text", "text": "Hi"}],
        [{"type": "input_text", "text": "And then?"}],
    ]
    assert [item["role"] for item in sent[1]["input"]] == ["user", "assistant", "user"]
    assert "previous_response_id" not in sent[1]
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"]["param"] == "previous_response_id"
    assert error["error"]["code"] == "previous_response_not_found"
    assert third[-1]["type"] == "response.completed"
    assert len(sent[2]["input"]) == 5  # three of the chain, the new one, and the output
    async with gw.client() as client:  # store: false kept nothing in the store
        assert (await client.get(f"/v1/responses/{first['id']}")).status_code == 404


async def test_pings_fill_a_silent_prefill_at_the_routes_interval(
    start_gateway, fake: FakeOpenAI, caplog
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    gw, ws = await serve_and_connect(start_gateway, keepalive={"interval": 0.1})
    sent_at = trio.current_time()
    await ws.send_json({**CREATE, "fake": {"prefill": 0.6, "tokens": 1}})
    events = await ws.events_until_end()
    done_at = trio.current_time()
    await ws.close()
    assert events[-1]["type"] == "response.completed"
    pings = [t for t in ws.pings if sent_at < t < done_at]
    # The silence was 0.6 s: a ping after every 0.1 s of it (the first 0.1 s after the
    # turn was sent), none sooner than the interval after the last.
    assert len(pings) >= 4, pings
    gaps = [b - a for a, b in zip([sent_at, *pings], pings, strict=False)]
    assert all(gap >= 0.095 for gap in gaps), gaps

    # The pings are the turn's heartbeats: counted on its route, in its access-log line.
    def access_log() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]

    # The socket's own line is written once it has seen the close.
    await wait_until(lambda: any(line.get("status") == 101 for line in access_log()), within=5)
    [turn] = [line for line in access_log() if line.get("endpoint") == "responses"]
    [socket] = [line for line in access_log() if line.get("status") == 101]
    assert turn["heartbeats"] >= 4 and turn["stream"] is True
    assert turn["connection"] == socket["connection"] and socket["connection"].startswith("ws_")
    assert socket["turns"] == 1 and socket["close"] == "client"
    async with gw.client() as client:
        metrics = (await client.get("/metrics")).text
    [beats] = [
        line
        for line in metrics.splitlines()
        if line.startswith('trio_gateway_heartbeats_total{route="chat"}')
    ]
    assert float(beats.split()[-1]) >= 4


async def test_a_client_that_answers_no_ping_is_gone_and_its_upstream_closed(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1})
    ws = await WSClient.connect(gw.url, answer_pings=False)
    await ws.send_json({**CREATE, "fake": {"prefill": 30}})
    with trio.fail_after(5):
        closed = await ws.wait_closed()  # reading, so the pings are seen (and not answered)
        [upstream] = fake.connections
        await upstream.closed_event.wait()
    assert upstream.closed_at is not None
    # Gone two intervals after the first unanswered ping; the upstream closed within a
    # second of that.
    assert upstream.closed_at - ws.pings[0] < 0.2 + 1.0
    assert (closed.code, closed.reason) == (1011, "keepalive ping timeout")
    await wait_until(lambda: len(gw.gateway.inflight) == 0, within=5)


@pytest.mark.parametrize("how", ["close-frame", "dropped"])
async def test_a_client_that_leaves_mid_response_closes_the_upstream(
    start_gateway, fake: FakeOpenAI, how: str
) -> None:
    gw, ws = await serve_and_connect(start_gateway, keepalive={"interval": 0.1})
    await ws.send_json({**CREATE, "fake": {"tokens": 1000, "pace": 0.01}})
    while (await ws.receive_json())["type"] != "response.output_text.delta":
        pass
    await (ws.close() if how == "close-frame" else ws.abort())
    left_at = trio.current_time()
    upstream = fake.connections[-1]
    with trio.fail_after(5):
        await upstream.closed_event.wait()
    assert upstream.closed_at is not None and upstream.closed_at - left_at < 1.0
    await wait_until(lambda: len(gw.gateway.inflight) == 0, within=5)


async def test_an_oversized_message_closes_the_socket_with_1009_and_a_reason(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw, ws = await serve_and_connect(start_gateway, server={"websocket_max_message_bytes": 1000})
    await ws.send_json({**CREATE, "input": "x" * 1000})
    with trio.fail_after(5):
        closed = await ws.wait_closed()
    assert closed.code == 1009
    assert closed.reason == "message larger than the gateway's limit of 1000 bytes"
    assert not fake.requests
    # A message within the limit, on a new socket, is served.
    ws = await WSClient.connect(gw.url)
    await ws.send_json({**CREATE, "fake": {"tokens": 1}})
    assert (await ws.events_until_end())[-1]["type"] == "response.completed"
    await ws.close()


async def test_an_oversized_message_ends_the_running_turn_at_once(
    start_gateway, fake: FakeOpenAI
) -> None:
    """The 1009 close goes out and the running turn's upstream is closed then — not once
    the client answers the close (one that never does kept the turn going to its end)."""
    _, ws = await serve_and_connect(start_gateway, server={"websocket_max_message_bytes": 1000})
    await ws.send_json({**CREATE, "fake": {"tokens": 600, "pace": 0.05}})  # 30 s of frames
    await ws.receive_json()  # it streams
    await ws.send_json({**CREATE, "input": "x" * 1000})
    [connection] = fake.connections
    async with trio.open_nursery() as nursery:

        async def drain() -> None:  # read every byte, answer nothing (not the close)
            while await ws.stream.receive_some(65536):
                pass

        nursery.start_soon(drain)
        with trio.fail_after(5):
            await connection.closed_event.wait()
        nursery.cancel_scope.cancel()
    await ws.abort()


async def test_bad_messages_get_error_events_and_the_socket_serves_on(
    start_gateway, fake: FakeOpenAI
) -> None:
    _, ws = await serve_and_connect(start_gateway)
    await ws.send_text("{not json")
    await ws.send_json(["response.create"])
    await ws.send_json({"type": "response.cancel"})
    await ws.send_json({**CREATE, "model": "no-such-model"})
    await ws.send_json({**CREATE, "input": 42})
    await ws.send_json({**CREATE, "fake": {"status": 500}})  # the upstream fails
    await ws.send_json({**CREATE, "fake": {"tokens": 2}})
    errors = [await ws.receive_json() for _ in range(6)]
    good = await ws.events_until_end()
    await ws.close()
    assert [e["type"] for e in errors] == ["error"] * 6
    assert [e["status"] for e in errors] == [400, 400, 400, 404, 400, 500]
    assert "not valid JSON" in errors[0]["error"]["message"]
    assert (
        errors[2]["error"]["param"] == "type" and "response.cancel" in errors[2]["error"]["message"]
    )
    assert errors[3]["error"]["code"] == "model_not_found"
    assert errors[4]["error"]["param"] == "input"
    assert all({"type", "message", "code", "param"} <= set(e["error"]) for e in errors)
    assert text_of(good) == "tok0 tok1 "
    assert len(fake.requests) == 2  # only the last two reached the upstream


async def test_messages_that_are_no_sendable_json_are_refused_as_over_http_and_it_serves_on(
    start_gateway, fake: FakeOpenAI
) -> None:
    # The checks of an HTTP body hold for a socket's message: nesting past 128 levels (it
    # closed the socket with 1011), a lone surrogate escape (a 500) and NaN (sent on as null).
    # Each error comes back on the message's lane, as any refusal's does — but for a
    # message too deep to read at all.
    _, ws = await serve_and_connect(start_gateway)
    lane = {**CREATE, "stream_id": "s1"}
    deep = '{"type": "response.create", "stream_id": "s1", "x": ' + "[" * 100_000
    await ws.send_text(deep + "]" * 100_000 + "}")
    await ws.send_text("[" * 100_000)
    await ws.send_text(json.dumps({**lane, "input": "\ud800"}, ensure_ascii=True))
    await ws.send_text(json.dumps({**lane, "top_k": 1})[:-1] + ', "temperature": NaN}')
    await ws.send_json({**CREATE, "fake": {"tokens": 2}})
    errors = [await ws.receive_json() for _ in range(4)]
    good = await ws.events_until_end()
    await ws.close()
    assert [(e["type"], e["status"]) for e in errors] == [("error", 400)] * 4
    assert [e.get("stream_id") for e in errors] == [None, None, "s1", "s1"]
    assert [e["error"]["code"] for e in errors] == ["invalid_json"] * 4
    messages = [e["error"]["message"] for e in errors]
    assert "nested deeper than 128" in messages[0] and "nested deeper" in messages[1]
    assert "surrogate" in messages[2] and "NaN" in messages[3]
    assert text_of(good) == "tok0 tok1 " and len(fake.requests) == 1


async def test_the_idle_timeout_closes_only_a_socket_with_no_turn_in_flight(
    start_gateway, fake: FakeOpenAI
) -> None:
    _, ws = await serve_and_connect(start_gateway, server={"websocket_idle_timeout": 0.3})
    await ws.send_json({**CREATE, "fake": {"prefill": 0.6, "tokens": 1}})  # longer than 0.3
    assert (await ws.events_until_end())[-1]["type"] == "response.completed"
    finished_at = trio.current_time()
    with trio.fail_after(5):
        closed = await ws.wait_closed()
    assert (closed.code, closed.reason) == (1000, "idle for 0.3 s")
    assert trio.current_time() - finished_at >= 0.29


async def test_shutdown_finishes_the_running_turn_refuses_new_ones_then_closes_1001(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(server={"graceful_timeout": 10})
    busy = await WSClient.connect(gw.url)
    idle = await WSClient.connect(gw.url)
    await busy.send_json({**CREATE, "fake": {"prefill": 0.5, "tokens": 2}})
    await wait_until(lambda: len(fake.requests) == 1, within=5)
    gw.shutdown.set()
    await wait_until(lambda: gw.gateway.draining, within=5)
    await busy.send_json({**CREATE, "fake": {"tokens": 1}})  # after the drain began
    with trio.fail_after(5):
        idle_closed = await idle.wait_closed()
        running = await busy.events_until_end()
        [refused] = await busy.events_until_end()
        busy_closed = await busy.wait_closed()
    assert (idle_closed.code, idle_closed.reason) == (1001, "server shutting down")
    assert running[-1]["type"] == "response.completed" and text_of(running) == "tok0 tok1 "
    assert refused["status"] == 503 and refused["error"]["code"] == "shutting_down"
    assert busy_closed.code == 1001
    assert len(fake.requests) == 1


async def test_keys_are_checked_before_the_upgrade(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    teams = {
        "alpha": {
            "keys": [hash_key(ALPHA)],
            "models": ["m"],
            "limits": {"concurrent_streams": 1},
        }
    }
    config = build_config(raw_config(fake.url, tmp_path, teams), environ={})
    url = (await serve_config(nursery, config)).url
    for headers in ([], [("authorization", "Bearer sk-unknown")]):
        with pytest.raises(Rejected) as refused:
            await WSClient.connect(url, headers=headers)
        assert refused.value.status == 401
        error = json.loads(refused.value.body)["error"]
        assert error["type"] == "invalid_request_error" and "API key" in error["message"]
    assert not fake.requests
    # Both ways of giving a key; the team's limits hold per response, across sockets.
    first = await WSClient.connect(url, headers=list(bearer(ALPHA).items()))
    second = await WSClient.connect(url, headers=[("x-api-key", ALPHA)])
    await first.send_json({**CREATE, "fake": {"prefill": 0.5, "tokens": 1}})
    await wait_until(lambda: len(fake.requests) == 1, within=5)
    await second.send_json({**CREATE, "fake": {"tokens": 1}})
    [limited] = await second.events_until_end()
    assert limited["status"] == 429 and "retry-after" in limited["error"].get("headers", {})
    assert (await first.events_until_end())[-1]["type"] == "response.completed"
    await second.send_json({**CREATE, "model": "secret-model"})  # not the team's
    [denied] = await second.events_until_end()
    await second.send_json({**CREATE, "fake": {"tokens": 1}})
    assert (await second.events_until_end())[-1]["type"] == "response.completed"
    assert denied["status"] in (403, 404)
    await first.close()
    await second.close()


@pytest.mark.parametrize(("first", "second"), [("native", "translated"), ("translated", "native")])
async def test_failover_before_the_first_output_event_is_invisible_on_the_socket(
    nursery: trio.Nursery, tmp_path: Path, first: str, second: str
) -> None:
    fakes, url, script = await serve_failover_pair(nursery, tmp_path, first, second)
    # The headers the official SDKs send on the handshake are taken as they come.
    ws = await WSClient.connect(
        url, headers=[("openai-beta", "responses_websockets=2026-02-06"), ("user-agent", "t")]
    )
    await ws.send_json({**CREATE, "model": "pool", "fake": script})
    events = await ws.events_until_end()
    await ws.close()
    assert fakes["a"].requests[-1].sent and len(fakes["b"].requests) == 1
    kinds = [e["type"] for e in events]
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
    assert text_of(events) == "tok0 tok1 "


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_failing_mid_response_is_response_failed_then_the_next_turn_runs(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    _, ws = await serve_and_connect(start_gateway, backend=MODES[mode])
    await ws.send_json({**CREATE, "fake": {"tokens": 4, "fault": "reset_mid_stream"}})
    failed = await ws.events_until_end()
    await ws.send_json({**CREATE, "fake": {"tokens": 1}})
    good = await ws.events_until_end()
    await ws.close()
    assert failed[0]["type"] == "response.created"
    assert failed[-1]["type"] == "response.failed"
    assert failed[-1]["response"]["error"]["code"] == "server_error"
    assert good[-1]["type"] == "response.completed"


@pytest.mark.parametrize("mode", MODES)
async def test_a_stored_turn_is_found_over_http_and_continued_there(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw, ws = await serve_and_connect(start_gateway, backend=MODES[mode])
    await ws.send_json({**CREATE, "fake": {"tokens": 2}})
    response = (await ws.events_until_end())[-1]["response"]
    await ws.close()
    async with gw.client() as client:
        stored = await client.get(f"/v1/responses/{response['id']}")
        continued = await client.post(
            "/v1/responses",
            json={"model": "m", "input": "More", "previous_response_id": response["id"]},
        )
    assert stored.status_code == 200 and stored.json() == response
    assert continued.status_code == 200
    sent = fake.requests[-1].body
    history = sent["input"] if mode == "native" else sent["messages"]
    assert len(history) == 3  # the socket's turn, its answer, and the new input


@pytest.mark.parametrize("mode", MODES)
async def test_the_envelope_stays_on_the_socket_stream_id_comes_back_on_every_event(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    _, ws = await serve_and_connect(start_gateway, backend=MODES[mode])
    await ws.send_json({**CREATE, "stream_id": "lane-7", "fake": {"tokens": 2}})
    events = await ws.events_until_end()
    await ws.send_json({**CREATE, "model": "nope", "stream_id": "lane-8"})
    [error] = await ws.events_until_end()
    await ws.send_json({**CREATE, "background": True})
    [background] = await ws.events_until_end()
    await ws.close()
    assert {e["stream_id"] for e in events} == {"lane-7"} and text_of(events) == "tok0 tok1 "
    assert error["stream_id"] == "lane-8" and error["status"] == 404
    assert background["status"] == 400 and background["error"]["param"] == "background"
    [sent] = fake.requests  # what the upstream got carries nothing of the envelope
    assert "stream_id" not in sent.body and "generate" not in sent.body


@pytest.mark.parametrize("mode", MODES)
async def test_each_lane_keeps_its_last_response_and_a_fork_reads_another_lanes(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    """As the official SDKs' WebSocket helpers use lanes: each lane continues its own last
    response, another lane may fork from it, all without the store (``store: false``)."""
    _, ws = await serve_and_connect(start_gateway, backend=MODES[mode])

    async def turn(lane: str | None, previous: str | None, said: str) -> dict[str, Any]:
        create = {**CREATE, "input": said, "store": False, "fake": {"tokens": 1}}
        if lane is not None:
            create["stream_id"] = lane
        if previous is not None:
            create["previous_response_id"] = previous
        await ws.send_json(create)
        events: list[dict[str, Any]] = await ws.events_until_end()
        return events[-1]

    a1 = (await turn("a", None, "A1"))["response"]["id"]
    b1 = (await turn("b", None, "B1"))["response"]["id"]
    a2 = await turn("a", a1, "A2")  # lane b's turn came between
    fork = await turn("c", b1, "C1")  # forks lane b's last
    b2 = await turn("b", b1, "B2")  # lane b goes on from the same response
    stale = await turn(None, a1, "A1 again")  # no lane's last any more: a2 replaced it
    await ws.close()
    assert [e["type"] for e in (a2, fork, b2)] == ["response.completed"] * 3
    assert stale["type"] == "error" and stale["status"] == 400
    assert stale["error"]["code"] == "previous_response_not_found"

    def said(n: int) -> list[str]:
        body = fake.requests[n].body
        if mode == "native":
            return [i["content"][0]["text"] for i in body["input"] if i.get("role") == "user"]
        return [m["content"] for m in body["messages"] if m["role"] == "user"]

    assert said(2) == ["A1", "A2"]
    assert said(3) == ["B1", "C1"]
    assert said(4) == ["B1", "B2"]
    assert len(fake.requests) == 5


async def test_turns_past_the_queue_are_refused_on_their_own_lane(
    start_gateway, fake: FakeOpenAI
) -> None:
    _, ws = await serve_and_connect(start_gateway)
    await ws.send_json({**CREATE, "fake": {"prefill": 0.5, "tokens": 1}})  # runs
    for _ in range(MAX_QUEUED + 2):  # 16 wait; two more find the queue full
        await ws.send_json({**CREATE, "stream_id": "busy", "fake": {"tokens": 1}})
    refused = [await ws.receive_json() for _ in range(2)]
    answers = [await ws.events_until_end() for _ in range(MAX_QUEUED + 1)]
    await ws.close()
    for error in refused:
        assert error["type"] == "error" and error["status"] == 503
        assert error["stream_id"] == "busy" and error["error"]["code"] == "overloaded"
    assert all(events[-1]["type"] == "response.completed" for events in answers)
    assert len(fake.requests) == MAX_QUEUED + 1


async def test_a_warm_up_answers_without_a_backend_and_the_next_turn_continues_it(
    start_gateway, fake: FakeOpenAI
) -> None:
    _, ws = await serve_and_connect(start_gateway, backend=MODES["native"])
    await ws.send_json({**CREATE, "input": "Context", "generate": False, "store": False})
    warm = await ws.events_until_end()
    await ws.send_json(
        {
            **CREATE,
            "input": "Go",
            "previous_response_id": warm[-1]["response"]["id"],
            "store": False,
        }
    )
    turn = await ws.events_until_end()
    await ws.send_json({**CREATE, "model": "nope", "generate": False})
    [refused] = await ws.events_until_end()
    await ws.close()
    assert [e["type"] for e in warm] == ["response.created", "response.completed"]
    assert [e["sequence_number"] for e in warm] == [0, 1]
    response = warm[-1]["response"]
    assert response["status"] == "completed" and response["output"] == []
    assert response["id"].startswith("resp_") and response["model"] == "m"
    assert turn[-1]["type"] == "response.completed"
    [sent] = fake.requests  # the warm-up reached no backend; the turn has its input
    assert [i["content"] for i in sent.body["input"]] == [
        [{"type": "input_text", "text": "Context"}],
        [{"type": "input_text", "text": "Go"}],
    ]
    assert refused["status"] == 404  # a warm-up is checked and routed as any turn
