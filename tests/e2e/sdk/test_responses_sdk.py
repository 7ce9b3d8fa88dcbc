"""The official ``openai`` Python SDK (``AsyncOpenAI``) on ``/v1/responses`` through the
gateway, in front of the fake upstream speaking Responses itself (``native``: passthrough)
or chat only (``translated``).

Every call the SDK offers for Responses that the gateway serves, a three-turn
``previous_response_id`` chain, a function-call round trip (Codex's requests are in
``test_responses_codex_sdk.py``), and the silence the gateway exists for: an upstream that says nothing for longer
than the client's read timeout, heard through both heartbeat modes (SSE comments, and
Responses ``keepalive`` events after ``response.created``), beside the same client failing
straight at the upstream.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .clients import SDK_ASYNCGEN_WARNINGS
from .scripts import tokens_text, tool_call_stream

pytestmark = SDK_ASYNCGEN_WARNINGS

NATIVE = {"native_endpoints": ["chat/completions", "responses", "responses/input_tokens"]}
MODES = {"native": NATIVE, "translated": {}}
CODEX = Path(__file__).resolve().parents[2] / "fixtures" / "codex_request.json"

PREFILL = 1.2  # seconds of upstream silence, each time
READ_TIMEOUT = 0.8  # the client's read timeout: shorter than any silence
INTERVAL = 0.2  # the gateway's heartbeat interval


def client(base: str, *, read: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base,
        api_key="sk-test",
        max_retries=0,
        timeout=openai.Timeout(10.0, read=read),
    )


def upstream_for(fake: FakeOpenAI, case: str) -> Any:
    (request,) = [r for r in fake.requests if (r.body.get("fake") or {}).get("case") == case]
    return request


def said(body: dict[str, Any]) -> list[str]:
    """The texts of the conversation the upstream got, in order, whichever dialect."""
    if "messages" in body:
        return [m["content"] for m in body["messages"] if isinstance(m.get("content"), str)]
    texts = []
    for item in body["input"]:
        if item.get("type", "message") == "message":
            content = item["content"]
            texts.extend([content] if isinstance(content, str) else [p["text"] for p in content])
    return texts


@pytest.mark.parametrize("mode", MODES)
async def test_create_stream_helper_retrieve_items_delete(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])
    sdk = client(gw.url + "/v1")
    try:
        with trio.fail_after(20):
            whole = await sdk.responses.create(
                model="m", input="Hi", extra_body={"fake": {"tokens": 2}}
            )
            again = await sdk.responses.retrieve(whole.id)
            events = []
            async with await sdk.responses.create(
                model="m", input="Hi", stream=True, extra_body={"fake": {"tokens": 3}}
            ) as stream:
                async for event in stream:
                    events.append(event)
            async with sdk.responses.stream(
                model="m",
                input=[{"role": "user", "content": "Hello there"}],
                instructions="Be brief.",
                extra_body={"fake": {"tokens": 4, "pace": 0.01}},
            ) as helper:
                helped = [event.type async for event in helper]
                final = await helper.get_final_response()
            stored = await sdk.responses.retrieve(final.id)
            items = [item async for item in sdk.responses.input_items.list(final.id)]
            deleted = await sdk.responses.delete(final.id)
            with pytest.raises(openai.NotFoundError):
                await sdk.responses.retrieve(final.id)
    finally:
        await sdk.close()

    assert whole.status == "completed" and whole.output_text == tokens_text(2)
    assert again.id == whole.id and again.output_text == tokens_text(2)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        tokens_text(3)
    )
    assert events[-1].response.output_text == tokens_text(3)
    assert helped[0] == "response.created" and helped[-1] == "response.completed"
    assert final.output_text == tokens_text(4) and final.usage and final.usage.output_tokens == 4
    assert stored.id == final.id and stored.output_text == final.output_text
    assert [(i.type, i.role) for i in items] == [("message", "user")]
    assert items[0].content[0].text == "Hello there"
    assert deleted is None  # the SDK's delete returns nothing on success
    upstream = fake.requests[-1]
    if mode == "native":
        assert upstream.path == "/v1/responses" and upstream.body["model"] == "upstream-m"
    else:
        assert upstream.path == "/v1/chat/completions"
        assert upstream.body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ]


@pytest.mark.parametrize("mode", MODES)
async def test_three_turn_previous_response_id_chain(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])
    sdk = client(gw.url + "/v1")
    try:
        with trio.fail_after(20):
            first = await sdk.responses.create(
                model="m", input="One", extra_body={"fake": {"tokens": 1}}
            )
            second = await sdk.responses.create(
                model="m",
                input="Two",
                previous_response_id=first.id,
                extra_body={"fake": {"tokens": 2}},
            )
            async with sdk.responses.stream(
                model="m",
                input="Three",
                previous_response_id=second.id,
                extra_body={"fake": {"tokens": 3, "case": "third"}},
            ) as helper:
                third = await helper.get_final_response()
    finally:
        await sdk.close()
    assert third.output_text == tokens_text(3)
    upstream = upstream_for(fake, "third").body
    assert "previous_response_id" not in upstream
    assert said(upstream) == ["One", tokens_text(1), "Two", tokens_text(2), "Three"]


def _responses_sse(docs: list[dict[str, Any]]) -> list[str]:
    """Named, numbered Responses events as the fake's raw ``chunks``."""
    out = []
    for number, doc in enumerate(docs):
        data = json.dumps({**doc, "sequence_number": number})
        out.append(f"event: {doc['type']}\ndata: {data}\n\n".encode().decode("latin-1"))
    return out


def function_call_events(call_id: str, name: str, arguments: str) -> list[str]:
    """A Responses stream whose one output item is a function call, its arguments in
    pieces, as a server speaking Responses natively streams it."""
    response = {
        "id": "resp_tool",
        "object": "response",
        "created_at": 0,
        "model": "upstream-m",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "status": "in_progress",
        "output": [],
    }
    item = {"type": "function_call", "id": "fc_1", "call_id": call_id, "name": name}
    at = {"item_id": "fc_1", "output_index": 0}
    done_item = {**item, "arguments": arguments, "status": "completed"}
    usage = {
        "input_tokens": 5,
        "output_tokens": 7,
        "total_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    return _responses_sse(
        [
            {"type": "response.created", "response": response},
            {"type": "response.in_progress", "response": response},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "arguments": "", "status": "in_progress"},
            },
            *(
                {
                    "type": "response.function_call_arguments.delta",
                    **at,
                    "delta": arguments[i : i + 5],
                }
                for i in range(0, len(arguments), 5)
            ),
            {"type": "response.function_call_arguments.done", **at, "arguments": arguments},
            {"type": "response.output_item.done", "output_index": 0, "item": done_item},
            {
                "type": "response.completed",
                "response": {
                    **response,
                    "status": "completed",
                    "output": [done_item],
                    "usage": usage,
                },
            },
        ]
    )


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
# The arguments of the one call in the native function-call script.
NATIVE_ARGUMENTS = json.dumps({"city": "Zürich"}, ensure_ascii=False)


def function_call_script(mode: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The fake's ``chunks`` for a turn in which the model calls functions, and the calls
    as (id, name, arguments). Native: a Responses stream with one call; translated: a chat
    stream with two parallel calls in odd pieces."""
    if mode == "native":
        calls = [("call_n1", "get_weather", NATIVE_ARGUMENTS)]
        return function_call_events(*calls[0]), calls
    pieces, _, calls = tool_call_stream()
    return pieces, calls


def function_call_items(body: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The function calls and their outputs in a Responses request's ``input``, as (type,
    call id, arguments or output)."""
    return [
        (i["type"], i.get("call_id"), i.get("arguments") or i.get("output"))
        for i in body["input"]
        if i.get("type") in ("function_call", "function_call_output")
    ]


def tool_calls_sent(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The tool calls of a chat request's assistant ``message``, as (id, name, arguments)."""
    return [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_function_call_round_trip(start_gateway, fake: FakeOpenAI, mode: str) -> None:
    """The model calls a function; the application answers with ``function_call_output``
    items and ``previous_response_id``; the upstream gets the call and its answer. Translated:
    a chat stream with two parallel tool calls in odd pieces; native: a Responses stream."""
    gw = await start_gateway(backend=MODES[mode])
    pieces, calls = function_call_script(mode)
    sdk = client(gw.url + "/v1")
    try:
        with trio.fail_after(20):
            async with sdk.responses.stream(
                model="m",
                input="Weather and a file?",
                tools=[WEATHER_TOOL],
                extra_body={"fake": {"chunks": pieces}},
            ) as helper:
                kinds = [event.type async for event in helper]
                asked = await helper.get_final_response()
            answer = await sdk.responses.create(
                model="m",
                previous_response_id=asked.id,
                input=[
                    {"type": "function_call_output", "call_id": call_id, "output": f"out {i}"}
                    for i, (call_id, _, _) in enumerate(calls)
                ],
                tools=[WEATHER_TOOL],
                extra_body={"fake": {"tokens": 2, "case": "answer"}},
            )
    finally:
        await sdk.close()

    got = [(o.call_id, o.name, o.arguments) for o in asked.output if o.type == "function_call"]
    assert got == calls
    assert all(o.id and o.id.startswith("fc_") for o in asked.output)
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert answer.output_text == tokens_text(2)
    upstream = upstream_for(fake, "answer").body
    if mode == "native":
        assert function_call_items(upstream) == [
            ("function_call", "call_n1", NATIVE_ARGUMENTS),
            ("function_call_output", "call_n1", "out 0"),
        ]
    else:
        messages = upstream["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
        assert tool_calls_sent(messages[1]) == calls
        assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [
            ("call_a", "out 0"),
            ("call_b", "out 1"),
        ]


async def _stream_through(
    base: str,
    way: str,
    script: dict[str, Any],
    results: dict[tuple[str, str], tuple[str, str]],
    kinds_by: dict[tuple[str, str], list[str]],
) -> None:
    """One streamed request per SDK entry point (``create(stream=True)`` and the
    ``responses.stream`` helper): its outcome in ``results[(way, entry)]``, the types of
    the events the application got in ``kinds_by[(way, entry)]``."""

    async def one(entry: str) -> None:
        sdk = client(base, read=READ_TIMEOUT)
        body = {
            "model": "m",
            "input": "Hi",
            "extra_body": {"fake": {**script, "case": way + entry}},
        }
        text, kinds = "", kinds_by[(way, entry)]
        try:
            if entry == "create":
                async with await sdk.responses.create(stream=True, **body) as stream:
                    async for event in stream:
                        kinds.append(event.type)
                        if event.type == "response.output_text.delta":
                            text += event.delta
            else:
                async with sdk.responses.stream(**body) as helper:
                    async for event in helper:
                        kinds.append(event.type)
                    text = (await helper.get_final_response()).output_text
            results[(way, entry)] = ("ok", text)
        except openai.APIError as exc:
            results[(way, entry)] = (type(exc).__name__, text)
        finally:
            await sdk.close()

    async with trio.open_nursery() as nursery:
        for entry in ("create", "helper"):
            nursery.start_soon(one, entry)


@pytest.mark.parametrize("script", ["no_answer", "fails_first"])
async def test_a_stream_that_fails_before_any_output_is_a_failed_response(
    start_gateway, script: str
) -> None:
    """The headers are out (committed by a heartbeat) when the stream fails, before any
    output: the SDK sees a response created and failed — its stream helper too, which takes
    nothing before ``response.created`` — not an error it cannot place."""
    fake = (
        {"headers_delay": 0.5, "status": 503}
        if script == "no_answer"
        else {"prefill": 0.5, "chunks": ['data: {"error": {"message": "too long"}}\n\n']}
    )
    gw = await start_gateway(keepalive={"interval": INTERVAL})
    sdk = client(gw.url + "/v1")
    stream = await sdk.responses.create(
        model="m", input="Hi", stream=True, extra_body={"fake": fake}
    )
    seen = [event.type async for event in stream]
    helper_seen: list[str] = []
    async with sdk.responses.stream(model="m", input="Hi", extra_body={"fake": fake}) as helper:
        async for event in helper:
            helper_seen.append(event.type)
            if event.type == "response.failed":
                assert event.response.status == "failed"
                assert event.response.error is not None and event.response.model == "m"
    await sdk.close()
    assert seen[0] == helper_seen[0] == "response.created"
    assert seen[-1] == helper_seen[-1] == "response.failed"


@pytest.mark.parametrize("heartbeat", ["comment", "event"])
async def test_silence_longer_than_the_read_timeout(
    start_gateway, fake: FakeOpenAI, heartbeat: str
) -> None:
    """A prefill of 1.2 s (nothing after the headers) and a 1.2 s gap after the first
    output text, against a read timeout of 0.8 s: through the gateway, native and
    translated, every SDK entry point gets the whole answer; straight at the upstream the
    same client raises ``APITimeoutError``."""
    keepalive = {"interval": INTERVAL, "responses": heartbeat}
    gateways = {
        mode: await start_gateway(backend=backend, keepalive=keepalive)
        for mode, backend in MODES.items()
    }
    # the gap comes before the second text delta: native after created, in_progress, the
    # item, the part and one delta; translated after the role chunk and one token
    gap_at = {"native": 5, "translated": 2, "direct": 5}
    bases = {"direct": fake.url, **{m: g.url + "/v1" for m, g in gateways.items()}}
    results: dict[tuple[str, str], tuple[str, str]] = {}
    kinds_by: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for way, base in bases.items():
                script = {"tokens": 3, "prefill": PREFILL, "gap_at": gap_at[way], "gap": PREFILL}
                nursery.start_soon(_stream_through, base, way, script, results, kinds_by)
    assert results == {
        ("direct", "create"): ("APITimeoutError", ""),
        ("direct", "helper"): ("APITimeoutError", ""),
        ("native", "create"): ("ok", tokens_text(3)),
        ("native", "helper"): ("ok", tokens_text(3)),
        ("translated", "create"): ("ok", tokens_text(3)),
        ("translated", "helper"): ("ok", tokens_text(3)),
    }
    for mode in MODES:
        # the fake did keep silent that long
        request = upstream_for(fake, mode + "helper")
        assert request.finished_at - request.received_at >= 2 * PREFILL
        for entry in ("create", "helper"):
            kinds = kinds_by[(mode, entry)]
            assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
            # comments never reach the application; keepalive events do, after created
            # (the gap after the first delta is 1.2 s: several heartbeats)
            beats = kinds.count("keepalive")
            assert beats >= 3 if heartbeat == "event" else beats == 0, (mode, entry, kinds)


async def test_input_items_pages_and_input_tokens(start_gateway) -> None:
    """The SDK's auto-pager walks ``input_items`` a page at a time (newest first, as
    OpenAI lists them; ``order="asc"`` oldest first); ``input_tokens.count`` answers from a
    backend that counts and is a clear 400 from one that cannot."""
    native = await start_gateway(backend=NATIVE)
    translated = await start_gateway()
    sdk = client(native.url + "/v1")
    other = client(translated.url + "/v1")
    said = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    try:
        with trio.fail_after(20):
            done = await sdk.responses.create(model="m", input=said)
            first = await sdk.responses.input_items.list(done.id, limit=2)
            paged = [
                i.content[0].text async for i in sdk.responses.input_items.list(done.id, limit=2)
            ]
            oldest = [
                i.content[0].text
                async for i in sdk.responses.input_items.list(done.id, order="asc")
            ]
            counted = await sdk.responses.input_tokens.count(
                model="m", input="Hi", extra_body={"fake": {"input_tokens": 7}}
            )
            with pytest.raises(openai.BadRequestError) as refused:
                await other.responses.input_tokens.count(model="m", input="Hi")
    finally:
        await sdk.close()
        await other.close()
    assert [i.content[0].text for i in first.data] == ["m4", "m3"] and first.has_more
    assert paged == ["m4", "m3", "m2", "m1", "m0"]
    assert oldest == ["m0", "m1", "m2", "m3", "m4"]
    assert counted.input_tokens == 7
    assert "cannot count" in refused.value.message
