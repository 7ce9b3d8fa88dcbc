"""OpenAI Responses over WebSocket (``GET /v1/responses``) on the real llama-server, with the
raw wsproto client (:class:`gateway.testing.ws_client.WSClient`): a ``response.create`` is
passed through (llama-server's own events, one text frame each — the ``data`` of its SSE
events as it wrote them), ``store: false`` turns chained by ``previous_response_id`` on one
socket reach llama-server as the whole conversation, and a turn waiting for the one slot
hears ping frames at its route's heartbeat interval, then completes.

The server is the session's shared ``llama_server`` (``--parallel 1``); every test leaves
it idle.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from gateway.testing.waiting import wait_until
from gateway.testing.ws_client import WSClient
from gateway.websocket import FIRST_INTERVAL

from .llamacpp_fixtures import (
    llama_server,  # noqa: F401  (fixture)
    metrics,
    open_events,
    server,  # noqa: F401  (fixture)
    slot_idle,
    slot_task,
)

# The HTTP tests' requests and gateway: INTERVAL, the route's heartbeat interval, is the
# socket's ping interval during a turn.
from .test_responses_llamacpp import (
    ASK,
    INTERVAL,
    MAX_OUTPUT,
    _assert_one_text_message,
    _assert_same_run,
    _parse,
    gateway,  # noqa: F401  (fixture)
    hold_the_slot,
)

ENDS = ("response.completed", "response.incomplete", "response.failed", "error")


async def _frames(ws: WSClient) -> list[str]:
    """The text frames of one response, as sent, through its last."""
    frames: list[str] = []
    while True:
        frames.append(await ws.receive_text())
        if json.loads(frames[-1]).get("type") in ENDS:
            return frames


async def _sse_events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[bytes]:
    """The events of a streamed ``POST /v1/responses``, raw (comments left out), each
    checked to be named by its ``type`` (:func:`_parse`)."""
    out: list[bytes] = []
    async with open_events(client, "/v1/responses", body) as (response, events):
        assert response.status_code == 200, await response.aread()
        async for event in events:
            if not event.startswith(b":"):
                _parse(event)
                out.append(event)
    return out


def _as_event(frame: str) -> bytes:
    """A text frame as the SSE event that carries the same ``data`` over HTTP."""
    return f"event: {json.loads(frame)['type']}\ndata: {frame}".encode()


def _completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The response of a turn that ended in ``response.completed`` (else the assertion
    shows how it ended: an ``error`` event says why)."""
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    return response


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


async def _input_tokens(server: httpx.AsyncClient, given: str | list[dict[str, Any]]) -> int:
    """llama-server's own count of the input ``given``, as a prompt."""
    body = {"model": "gemma", "input": given}
    answer = await server.post("/v1/responses/input_tokens", json=body)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["input_tokens"])


async def test_a_turn_is_llama_servers_own_events(gateway, server) -> None:
    """A ``response.create`` on the socket is the event list llama-server streams for the
    same request sent to it directly: frame for event, text for text, but for its ids (new
    per request) and, in ``response.completed``, the clock and llama-server's timings. No
    event is added or numbered (llama-server sends no ``sequence_number``), its ``model``
    (the GGUF's, not the route's name) is kept, and ``POST /v1/responses`` with
    ``stream: true`` through the gateway streams the same event types."""
    direct = await _sse_events(server, {**ASK, "stream": True})
    ws = await WSClient.connect(gateway.url)
    await ws.send_json({"type": "response.create", **ASK})
    frames = [_as_event(frame) for frame in await _frames(ws)]
    await ws.close()
    async with gateway.client() as client:
        over_http = await _sse_events(client, {**ASK, "stream": True})

    relayed_ids = _assert_same_run(frames, direct)
    relayed = [_parse(f) for f in frames]
    kinds = [e["type"] for e in relayed]
    assert kinds == [_parse(d)["type"] for d in over_http]
    _assert_one_text_message(kinds)
    assert all("sequence_number" not in e for e in relayed)
    final = relayed[-1]["response"]
    assert final["id"] == relayed_ids[0] and final["status"] == "completed"
    props = (await server.get("/props")).json()
    assert final["model"] == props["model_alias"] != "gemma"
    assert final["usage"]["output_tokens"] == MAX_OUTPUT
    [message] = final["output"]
    assert message["id"] == relayed_ids[1]
    assert message["content"][0]["text"] == _text(relayed) != ""
    async with gateway.client() as client:  # stored (no store: false) under its own id
        stored = await client.get(f"/v1/responses/{final['id']}")
    assert stored.status_code == 200 and stored.json() == final


async def test_store_false_turns_chained_on_the_socket_reach_llama_server_whole(
    gateway, server
) -> None:
    """Two ``store: false`` turns on one socket, the second naming the first by
    ``previous_response_id``: the second reaches llama-server as the first's input and
    output items followed by its own — the prompt llama-server evaluates is exactly its
    count of that whole conversation sent directly — and a third continues the second in
    turn. Nothing is stored."""
    first_input = [{"role": "user", "content": "Name three colours."}]
    second_input = [{"role": "user", "content": "And two more."}]
    third_input = [{"role": "user", "content": "Which is your favourite?"}]
    turn = {"type": "response.create", **ASK, "store": False}
    ws = await WSClient.connect(gateway.url)
    try:  # closed whatever happens: a socket left open fails a later test as a warning
        await ws.send_json({**turn, "input": first_input})
        first_events = await ws.events_until_end()
        first = _completed(first_events)
        await ws.send_json({**turn, "input": second_input, "previous_response_id": first["id"]})
        second_events = await ws.events_until_end()
        second = _completed(second_events)
        await ws.send_json({**turn, "input": third_input, "previous_response_id": second["id"]})
        third_events = await ws.events_until_end()
        third = _completed(third_events)
    finally:
        await ws.close()

    for events in (first_events, second_events, third_events):
        assert events[0]["type"] == "response.created"
        assert _text(events) != ""
    assert len({first["id"], second["id"], third["id"]}) == 3
    two_turns = [*first_input, *first["output"], *second_input]
    three_turns = [*two_turns, *second["output"], *third_input]
    assert first["usage"]["input_tokens"] == await _input_tokens(server, first_input)
    assert second["usage"]["input_tokens"] == await _input_tokens(server, two_turns)
    assert third["usage"]["input_tokens"] == await _input_tokens(server, three_turns)
    assert (
        first["usage"]["input_tokens"]
        < second["usage"]["input_tokens"]
        < third["usage"]["input_tokens"]
    )
    async with gateway.client() as client:  # store: false kept nothing in the store
        for response in (first, second, third):
            assert (await client.get(f"/v1/responses/{response['id']}")).status_code == 404


async def test_a_turn_waiting_for_the_slot_hears_pings_at_the_routes_interval(
    gateway, server
) -> None:
    """One slot, taken by a long Responses stream through the gateway. A turn on a socket
    is held by the gateway's slot gate (not sent: llama-server defers nothing) and the
    socket hears nothing but ping frames, one every ``INTERVAL`` s of silence — the
    route's interval, not the socket's first one — each counted as the turn's heartbeat.
    When the long stream's client hangs up, the slot frees and the queued turn runs to
    ``response.completed`` in it."""
    assert FIRST_INTERVAL > 10 * INTERVAL  # pings this often are the route's
    backend = gateway.backend
    queued = {**ASK, "input": "A different question about owls."}
    async with gateway.client() as client, trio.open_nursery() as nursery:
        first = await hold_the_slot(nursery, client, gateway, server)

        ws = await WSClient.connect(gateway.url)
        received: list[dict[str, Any]] = []
        done = trio.Event()

        async def read_turn() -> None:
            # Reading is what sees the pings (and answers them).
            received.extend(await ws.events_until_end())
            done.set()

        sent_at = trio.current_time()
        await ws.send_json({"type": "response.create", **queued})
        nursery.start_soon(read_turn)
        await wait_until((lambda: len(ws.pings) >= 6), within=6 * INTERVAL + 5)
        assert received == []  # nothing from llama-server: the turn was never sent
        [entry] = [e for e in gateway.gateway.inflight if e.connection]
        assert backend.slots.waiting == 1 and backend.slots.own == 1
        assert entry.phase == "connecting" and entry.first_byte_at is None
        assert entry.heartbeats >= 6  # the pings are the turn's heartbeats
        assert (await metrics(server))["llamacpp:requests_deferred"] == 0
        assert await slot_task(server) == first.task
        pings = list(ws.pings)

        first.scope.cancel()  # the long stream's client hangs up: the slot frees
        with trio.fail_after(60):
            await done.wait()
    await ws.close()

    assert received[0]["type"] == "response.created"
    assert received[-1]["type"] == "response.completed", received[-1]
    assert _text(received) != ""
    final = received[-1]["response"]
    assert final["usage"]["input_tokens"] == await _input_tokens(server, queued["input"])
    await wait_until(lambda: slot_idle(server), within=10)
    assert await slot_task(server) != first.task  # the queued turn ran in the slot
    gaps = [b - a for a, b in zip([sent_at, *pings], pings, strict=False)]
    print(f"\n{len(pings)} pings while queued, gaps {min(gaps):.3f}-{max(gaps):.3f} s")
    # A ping after every INTERVAL of silence: none sooner, none much later.
    assert all(INTERVAL * 0.95 <= gap < INTERVAL + 0.5 for gap in gaps[1:]), gaps
    assert gaps[0] < INTERVAL + 0.5, gaps
