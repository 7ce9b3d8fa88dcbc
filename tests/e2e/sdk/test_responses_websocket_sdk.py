"""The official ``openai`` Python SDK's WebSocket mode for Responses,
``client.responses.connect()``, against ``GET /v1/responses`` on a served gateway, in front
of the fake upstream speaking Responses itself (``native``: passthrough) or chat only
(``translated``).

On one socket: a ``store: false`` chain by ``previous_response_id``, a function-call round
trip, and errors (an unknown model, an upstream failure) followed by turns that complete.
Every event is the SDK's own parse (``connection.recv()``) into its own types.

The SDK's WebSocket connections are the ``websockets`` package's: the sync one blocks, the
async one runs on asyncio. Neither runs on trio, so a whole conversation runs in a worker
thread: the sync client as it is, the async one on an asyncio loop of its own. A
conversation is a list of turns, each a function from the answers so far to its
``response.create`` fields; a turn ends at the event that ends a response or at an
``error`` event. ``connection.response.create()`` takes no ``extra_body``, so a turn that
scripts the fake (its ``fake`` field) goes out through ``connection.send()``, the SDK's
method for any client event, which sends unknown keys as given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
import trio
from openai.types.responses import ResponseCompletedEvent, ResponseFunctionToolCall
from openai.types.responses.responses_server_event import (
    ResponsesServerEvent,
    ResponseTextWsDelta,
    ResponseWsCompleted,
    ResponseWsCreated,
    ResponseWsError,
)

from gateway.testing.fake_openai import FakeOpenAI

from .scripts import tokens_text
from .test_responses_sdk import (
    MODES,
    NATIVE_ARGUMENTS,
    WEATHER_TOOL,
    function_call_items,
    function_call_script,
    tool_calls_sent,
)
from .test_responses_sdk import said as said_in

Answers = list[list[ResponsesServerEvent]]
Turn = Callable[[Answers], dict[str, Any]]

# The events after which the client sends its next turn.
TURN_ENDS = {"response.completed", "response.failed", "response.incomplete", "error"}
LIMIT = 20.0  # seconds for a whole conversation


def _create(connection: Any, fields: dict[str, Any]) -> Any:
    """Send one turn: ``connection.response.create(**fields)``, or with a ``fake`` script
    ``connection.send`` of the same event. Returns what the send returned (an awaitable
    on the async connection)."""
    if "fake" in fields:
        return connection.send({"type": "response.create", **fields})
    return connection.response.create(**fields)


def _converse_sync(base_url: str, turns: list[Turn]) -> Answers:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    answers: Answers = []
    try:
        with client.responses.connect() as connection:
            for turn in turns:
                _create(connection, turn(answers))
                events = [connection.recv()]
                while events[-1].type not in TURN_ENDS:
                    events.append(connection.recv())
                answers.append(events)
    finally:
        client.close()
    return answers


async def _converse_async(base_url: str, turns: list[Turn]) -> Answers:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    answers: Answers = []
    try:
        async with client.responses.connect() as connection:
            for turn in turns:
                await _create(connection, turn(answers))
                events = [await connection.recv()]
                while events[-1].type not in TURN_ENDS:
                    events.append(await connection.recv())
                answers.append(events)
    finally:
        await client.close()
    return answers


async def converse(kind: str, base_url: str, turns: list[Turn]) -> Answers:
    """The events of each turn, in order, as the SDK parsed them, all on one socket.

    A conversation that outlives :data:`LIMIT` fails the test; its thread is left to end
    when the gateway (a fixture) closes the socket at teardown."""

    def work() -> Answers:
        if kind == "sync":
            return _converse_sync(base_url, turns)
        return asyncio.run(_converse_async(base_url, turns))

    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)


def final(events: list[ResponsesServerEvent], *, validate: bool = True) -> Any:
    """The finished response of a turn that completed, with the SDK's types checked.

    The SDK builds its events without validation; with ``validate`` each is validated here
    against the SDK's own model. Off only where the events are a test script's, relayed
    as sent (passthrough), not the gateway's."""
    first, last = events[0], events[-1]
    assert isinstance(first, ResponseWsCreated), events
    assert isinstance(last, ResponseWsCompleted) and isinstance(last, ResponseCompletedEvent)
    for event in events if validate else ():
        type(event).model_validate(event.to_dict(mode="json"))
    assert first.response.id == last.response.id
    return last.response


def text_of(events: list[ResponsesServerEvent]) -> str:
    return "".join(e.delta for e in events if isinstance(e, ResponseTextWsDelta))


def said(body: dict[str, Any]) -> list[str]:
    """The texts of the conversation the upstream got, in order, a string ``input`` (passed
    through as the client sent it) included."""
    if isinstance(body.get("input"), str):
        return [body["input"]]
    return said_in(body)


def upstream_turns(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """The bodies of the generation requests the fake upstream got, in order."""
    return [r.body for r in fake.requests if r.path.endswith(("/responses", "/completions"))]


@pytest.mark.parametrize("mode", MODES)
async def test_store_false_turns_chain_on_one_socket(
    start_gateway, fake: FakeOpenAI, mode: str, sdk_kind: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])

    def chained(text: str) -> Turn:
        return lambda answers: {
            "model": "m",
            "input": text,
            "store": False,
            "previous_response_id": final(answers[-1]).id,
        }

    turns: list[Turn] = [
        lambda _: {"model": "m", "input": "One", "store": False},
        chained("Two"),
        chained("Three"),
    ]
    answers = await converse(sdk_kind, gw.url + "/v1", turns)

    responses = [final(events) for events in answers]
    assert [text_of(events) for events in answers] == [tokens_text(3)] * 3
    assert [r.output_text for r in responses] == [tokens_text(3)] * 3
    assert [r.status for r in responses] == ["completed"] * 3
    assert len({r.id for r in responses}) == 3
    sent = upstream_turns(fake)
    assert len(sent) == 3
    assert all("previous_response_id" not in body for body in sent)
    # Each later turn reached the upstream with the whole conversation as its input.
    assert said(sent[0]) == ["One"]
    assert said(sent[1]) == ["One", tokens_text(3), "Two"]
    assert said(sent[2]) == ["One", tokens_text(3), "Two", tokens_text(3), "Three"]
    if mode == "native":
        assert all(body["store"] is False for body in sent)
    async with gw.client() as client:  # store: false kept none of them
        for response in responses:
            assert (await client.get(f"/v1/responses/{response.id}")).status_code == 404


@pytest.mark.parametrize("mode", MODES)
async def test_function_call_round_trip_on_one_socket(
    start_gateway, fake: FakeOpenAI, mode: str, sdk_kind: str
) -> None:
    """The model calls a function (native: a Responses stream with one call; translated:
    a chat stream with two parallel calls in odd pieces); the application answers on the
    same socket with ``function_call_output`` items and ``previous_response_id``."""
    gw = await start_gateway(backend=MODES[mode])
    pieces, calls = function_call_script(mode)

    # function_call_events' usage predates a field the SDK's models now require
    # (input_tokens_details.cache_write_tokens); passthrough relays it as scripted.
    ours = mode == "translated"

    def answer(answers: Answers) -> dict[str, Any]:
        asked = final(answers[-1], validate=ours)
        return {
            "model": "m",
            "store": False,
            "previous_response_id": asked.id,
            "input": [
                {"type": "function_call_output", "call_id": o.call_id, "output": f"out {o.name}"}
                for o in asked.output
                if isinstance(o, ResponseFunctionToolCall)
            ],
            "tools": [WEATHER_TOOL],
        }

    turns: list[Turn] = [
        lambda _: {
            "model": "m",
            "input": "Weather and a file?",
            "store": False,
            "tools": [WEATHER_TOOL],
            "fake": {"chunks": pieces},
        },
        answer,
    ]
    asking, answering = await converse(sdk_kind, gw.url + "/v1", turns)

    asked = final(asking, validate=ours)
    got = [
        (o.call_id, o.name, o.arguments)
        for o in asked.output
        if isinstance(o, ResponseFunctionToolCall)
    ]
    assert got == calls
    assert len(asked.output) == len(calls)
    assert "response.function_call_arguments.delta" in [e.type for e in asking]
    assert final(answering).output_text == tokens_text(3)
    first, second = upstream_turns(fake)
    assert "previous_response_id" not in second
    if mode == "native":
        assert first["tools"] == [WEATHER_TOOL]
        assert function_call_items(second) == [
            ("function_call", "call_n1", NATIVE_ARGUMENTS),
            ("function_call_output", "call_n1", "out get_weather"),
        ]
        assert said(second) == ["Weather and a file?"]
    else:
        assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
        messages = second["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
        assert messages[0]["content"] == "Weather and a file?"
        assert tool_calls_sent(messages[1]) == calls
        assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [
            ("call_a", "out get_weather"),
            ("call_b", "out read_file"),
        ]


@pytest.mark.parametrize("mode", MODES)
async def test_errors_mid_connection_then_good_turns(
    start_gateway, fake: FakeOpenAI, mode: str, sdk_kind: str
) -> None:
    """A good turn, then an unknown model (refused by the gateway) and an upstream 500
    (refused by the upstream), each an ``error`` event the SDK parses; then, on the same
    socket, a turn continuing the socket's last response, which the errors did not
    replace, and a plain one."""
    gw = await start_gateway(backend=MODES[mode])
    turns: list[Turn] = [
        lambda _: {"model": "m", "input": "One", "store": False},
        lambda _: {"model": "no-such-model", "input": "Hi"},
        lambda _: {"model": "m", "input": "Hi", "fake": {"status": 500, "message": "on fire"}},
        lambda answers: {
            "model": "m",
            "input": "Two",
            "store": False,
            "previous_response_id": final(answers[0]).id,
        },
        lambda _: {"model": "m", "input": "Three"},
    ]
    good, unknown, failed, continued, plain = await converse(sdk_kind, gw.url + "/v1", turns)

    for events, status in ((unknown, 404), (failed, 500)):
        [error] = events  # nothing of a response before the error
        assert isinstance(error, ResponseWsError)
        ResponseWsError.model_validate(error.to_dict(mode="json"))
        assert error.type == "error" and error.status == status
        assert error.error.message and error.error.type
    assert unknown[0].error.code == "model_not_found"
    assert "no-such-model" in unknown[0].error.message
    assert "on fire" in failed[0].error.message
    assert final(good).output_text == tokens_text(3)
    assert final(continued).output_text == tokens_text(3)
    assert final(plain).output_text == tokens_text(3)
    sent = upstream_turns(fake)
    # The unknown model never reached the upstream; the failed turn did.
    assert [said(body) for body in sent] == [
        ["One"],
        ["Hi"],
        ["One", tokens_text(3), "Two"],
        ["Three"],
    ]
