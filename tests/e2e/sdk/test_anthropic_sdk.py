"""The official ``anthropic`` Python SDK (pinned), unmodified, against a served gateway's
``/v1/messages`` and ``/v1/messages/count_tokens``: in front of the fake upstream speaking
Messages itself (passthrough) or chat only (translation).

What an application sees: whole messages, streams and the stream helper's final message,
a tool-use round trip, counts, each error as its SDK class, a mid-stream failure as an
exception, and a silence longer than the SDK's read timeout that ``event: ping`` keeps
alive, beside a control where the same client, straight at the fake, times out."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trio

from gateway.config import build_config
from gateway.service import Gateway
from gateway.sse import SSEFramer
from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI, messages_events
from gateway.testing.waiting import wait_until
from tests.conftest import serve_config

from .clients import SDK_ASYNCGEN_WARNINGS, _AsyncTapTransport

pytestmark = SDK_ASYNCGEN_WARNINGS

NATIVE = {"native_endpoints": ["chat/completions", "messages", "messages/count_tokens"]}
MODES = {"passthrough": NATIVE, "translated": {}}
ASK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hi"}],
}
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
STREAM_EVENTS = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]
# A silence 1.5 times the SDK's read timeout, heartbeats four times as often as that timeout.
READ_TIMEOUT = 0.8
SILENCE = 1.2
KEEPALIVE = {"interval": 0.2}
# The piece of the fake's script before which the silence between the first and the second
# text delta falls: Messages events count message_start and content_block_start, chat
# chunks the role chunk.
SECOND_DELTA = {"passthrough": 3, "translated": 2}
ALPHA = new_key()


def short_read() -> anthropic.Timeout:
    return anthropic.Timeout(connect=5, read=READ_TIMEOUT, write=5, pool=5)


def tokens_text(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def client(url: str, *, tap: bytearray | None = None, **options: Any) -> anthropic.AsyncAnthropic:
    """The SDK at ``url`` (the server root: the SDK appends ``/v1/messages``), retries off so
    an error is the first failure as it happened; with ``tap``, the raw response bytes are
    also copied there."""
    options.setdefault("api_key", "sk-test")
    options.setdefault("timeout", 10.0)
    if tap is not None:
        options["http_client"] = anthropic.DefaultAsyncHttpxClient(
            transport=_AsyncTapTransport(tap)
        )
    return anthropic.AsyncAnthropic(base_url=url, max_retries=0, **options)


def events_of(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every event with data in ``raw``, pings included."""
    return [(e.event, json.loads(e.data)) for e in SSEFramer().feed(raw) if e.data is not None]


def pings_between_events(raw: bytes) -> list[int]:
    """For each event that is no ping, how many pings came right before it."""
    counts, pending = [], 0
    for name, _ in events_of(raw):
        if name == "ping":
            pending += 1
        else:
            counts.append(pending)
            pending = 0
    return counts


async def collect(
    sdk: anthropic.AsyncAnthropic, into: list[Any], **params: Any
) -> anthropic.types.Message:
    """A streamed ``create``'s events appended to ``into`` as the application gets them,
    then the stream helper's answer for the same request: what both ways of streaming hand
    an application. Returns the helper's final message."""
    stream = await sdk.messages.create(**params, stream=True)
    async with stream:
        async for event in stream:
            into.append(event)
    async with sdk.messages.stream(**params) as helper:
        return await helper.get_final_message()


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads no key from this process's environment."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)


async def serve_with_teams(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path, **limits: Any
) -> tuple[str, Gateway]:
    """A gateway with teams on: ``alpha`` (key ``ALPHA``) may use route ``m`` only, under
    ``limits``; route ``secret-model`` exists for other teams."""
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"fake": {"type": "openai", "url": fake.url, **NATIVE}},
            "routes": {
                "chat": {"model": "m", "backend": "fake", "upstream_model": "upstream-m"},
                "secret": {"model": "secret-model", "backend": "fake"},
            },
            "teams": {
                "alpha": {"keys": [hash_key(ALPHA)], "models": ["m"], "limits": limits},
                "beta": {"keys": [hash_key(new_key())]},
            },
            "usage": {"database": str(tmp_path / "usage.sqlite")},
        },
        environ={},
    )

    served = await serve_config(nursery, config)
    return served.url, served.gateway


# --- errors, each as its SDK class ----------------------------------------------------------


async def test_bad_team_key_is_authentication_error_and_both_key_headers_work(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path, no_env_key: None
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path)
    bearer_bad = client(url, api_key=ALPHA + "x")  # this SDK sends api_key as a bearer token
    header_bad = client(url, api_key=None, default_headers={"x-api-key": ALPHA + "x"})
    with trio.fail_after(10):
        for sdk in (bearer_bad, header_bad):
            async with sdk:
                for stream in (False, True):
                    with pytest.raises(anthropic.AuthenticationError) as raised:
                        await sdk.messages.create(**ASK, stream=stream)
                    assert raised.value.status_code == 401
                    assert raised.value.type == "authentication_error"
                    assert raised.value.body["type"] == "error"
                    assert raised.value.request_id
        assert fake.requests == []  # nothing unauthenticated reached the upstream

        async with client(url, api_key=ALPHA) as by_bearer:
            bearer_answer = await by_bearer.messages.create(**ASK, extra_body={"fake": {}})
        async with client(url, api_key=None, default_headers={"x-api-key": ALPHA}) as by_header:
            header_answer = await by_header.messages.create(**ASK, extra_body={"fake": {}})
    assert bearer_answer.content[0].text == header_answer.content[0].text == tokens_text(3)
    assert len(fake.requests) == 2
    for request in fake.requests:  # the team's key stays at the gateway
        assert request.path == "/v1/messages"
        assert not any(ALPHA in value for value in request.headers.values())


async def test_forbidden_unknown_and_invalid_are_their_sdk_classes(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path)
    cases: list[tuple[dict[str, Any], type[anthropic.APIStatusError], int, str]] = [
        (
            {**ASK, "model": "secret-model"},
            anthropic.PermissionDeniedError,
            403,
            "permission_error",
        ),
        ({**ASK, "model": "nope"}, anthropic.NotFoundError, 404, "not_found_error"),
        ({**ASK, "max_tokens": 0}, anthropic.BadRequestError, 400, "invalid_request_error"),
    ]
    async with client(url, api_key=ALPHA) as sdk:
        with trio.fail_after(10):
            for params, error_class, status, error_type in cases:
                for stream in (False, True):
                    with pytest.raises(error_class) as raised:
                        await sdk.messages.create(**params, stream=stream)
                    assert type(raised.value) is error_class
                    assert (raised.value.status_code, raised.value.type) == (status, error_type)
            # The SDK's create() will not send a request without max_tokens; its low-level
            # post() does, and maps the answer as create() would.
            without = {"model": "m", "messages": ASK["messages"]}
            with pytest.raises(anthropic.BadRequestError) as missing:
                await sdk.post("/v1/messages", body=without, cast_to=anthropic.types.Message)
    assert missing.value.type == "invalid_request_error"
    assert "max_tokens" in str(missing.value.api_message)
    assert fake.requests == []


async def test_team_over_its_requests_per_minute_is_rate_limit_error(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path, requests_per_minute=1)
    async with client(url, api_key=ALPHA) as sdk:
        with trio.fail_after(10):
            first = await sdk.messages.with_raw_response.create(**ASK, extra_body={"fake": {}})
            limited = []
            for stream in (False, True):
                with pytest.raises(anthropic.RateLimitError) as raised:
                    await sdk.messages.create(**ASK, stream=stream)
                limited.append(raised.value)
    assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    for error in limited:
        assert (error.status_code, error.type) == (429, "rate_limit_error")
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["anthropic-ratelimit-requests-limit"] == "1"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")  # RFC 3339
        assert not any(name.startswith("x-ratelimit-") for name in headers)
    assert len(fake.requests) == 1


async def test_no_capacity_is_overloaded_error(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(backend={"admission": {"max_concurrency": 1, "max_queue": 0}})
    async with client(gw.url) as sdk, trio.open_nursery() as holding:
        holding.start_soon(
            partial(sdk.messages.create, **ASK, extra_body={"fake": {"prefill": 30}})
        )
        with trio.fail_after(10):
            await wait_until(lambda: gw.gateway.upstreams["fake"].slots.in_flight == 1)
            refused = []
            for stream in (False, True):
                with pytest.raises(anthropic.OverloadedError) as raised:
                    await sdk.messages.create(**ASK, stream=stream)
                refused.append(raised.value)
        holding.cancel_scope.cancel()
    for error in refused:
        assert (error.status_code, error.type) == (529, "overloaded_error")
        assert "retry-after" in error.response.headers
    assert len(fake.requests) == 1  # only the request holding the slot


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_create_stream_and_helper(start_gateway, fake: FakeOpenAI, mode: str) -> None:
    gw = await start_gateway(backend=MODES[mode])
    events: list[Any] = []
    async with client(gw.url) as sdk:
        with trio.fail_after(10):
            whole = await sdk.messages.create(**ASK, extra_body={"fake": {"tokens": 4}})
            final = await collect(sdk, events, **ASK, extra_body={"fake": {"tokens": 3}})
    assert whole.content[0].type == "text" and whole.content[0].text == tokens_text(4)
    assert whole.stop_reason == "end_turn"
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (5, 4)
    assert whole._request_id  # the gateway's request-id header, as the SDK exposes it
    assert [e.type for e in events] == STREAM_EVENTS
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == (
        tokens_text(3)
    )
    assert final.content[0].type == "text" and final.content[0].text == tokens_text(3)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    if mode == "translated":
        assert whole.model == final.model == "m"  # the public name
        assert whole.id.startswith("msg_") and final.id.startswith("msg_")
        assert fake.requests[-1].path == "/v1/chat/completions"
    else:
        assert fake.requests[-1].path == "/v1/messages"
        assert fake.requests[-1].headers["anthropic-version"]


@pytest.mark.parametrize("mode", MODES)
async def test_sync_client_in_a_thread(start_gateway, mode: str) -> None:
    gw = await start_gateway(backend=MODES[mode])

    def work() -> tuple[anthropic.types.Message, anthropic.types.Message]:
        with anthropic.Anthropic(base_url=gw.url, api_key="sk-test", max_retries=0) as sdk:
            whole = sdk.messages.create(**ASK, extra_body={"fake": {"tokens": 2}})
            with sdk.messages.stream(**ASK, extra_body={"fake": {"tokens": 5}}) as helper:
                return whole, helper.get_final_message()

    with trio.fail_after(10):
        whole, final = await trio.to_thread.run_sync(work)
    assert whole.content[0].text == tokens_text(2)
    assert final.content[0].text == tokens_text(5)
    assert final.stop_reason == "end_turn"


async def test_count_tokens_native_and_refused_by_a_chat_only_backend(start_gateway) -> None:
    native = await start_gateway(backend=NATIVE)
    chat_only = await start_gateway()
    count = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    with trio.fail_after(10):
        async with client(native.url) as sdk:
            counted = await sdk.messages.count_tokens(**count)
            scripted = await sdk.messages.count_tokens(
                **count, extra_body={"fake": {"input_tokens": 42}}
            )
        async with client(chat_only.url) as sdk:
            with pytest.raises(anthropic.BadRequestError) as refused:
                await sdk.messages.count_tokens(**count)
    assert counted.input_tokens == 3 + 10  # the fake's count: words + 10
    assert scripted.input_tokens == 42
    assert refused.value.type == "invalid_request_error"
    assert "cannot count tokens" in str(refused.value.api_message)


def tool_chunks() -> tuple[list[str], list[str]]:
    """A chat stream (the fake's ``chunks``, one SSE event each) of one tool call whose
    arguments arrive in three pieces, ending with finish_reason tool_calls; and the pieces."""
    pieces = ['{"city": ', '"Paris", "unit"', ': "C"}']
    base = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 0, "model": "x"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps({**doc, **extra})}\n\n"

    call = {"index": 0, "id": "call_abc", "type": "function"}
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}),
        *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces),
        chunk({}, "tool_calls"),
        chunk({}, choices=[], usage={"prompt_tokens": 20, "completion_tokens": 9}),
        "data: [DONE]\n\n",
    ], pieces


async def test_tool_use_round_trip_through_translation(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1})
    chunks, pieces = tool_chunks()
    # Silent while the model writes the arguments: heartbeats between the argument pieces.
    paces = [0, 0, 0.3, 0.3, 0, 0, 0, 0]
    tools = [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        }
    ]
    tap = bytearray()
    events: list[Any] = []
    async with client(gw.url, tap=tap) as sdk:
        with trio.fail_after(10):
            async with sdk.messages.stream(
                **ASK, tools=tools, extra_body={"fake": {"chunks": chunks, "paces": paces}}
            ) as helper:
                async for event in helper:
                    events.append(event)
                asked = await helper.get_final_message()
            (call,) = asked.content
            assert call.type == "tool_use"
            answered = await sdk.messages.create(
                **{
                    **ASK,
                    "messages": [
                        *ASK["messages"],
                        {
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "tool_use",
                                    "id": call.id,
                                    "name": call.name,
                                    "input": call.input,
                                }
                            ],
                        },
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}
                            ],
                        },
                    ],
                },
                tools=tools,
                extra_body={"fake": {"tokens": 2}},
            )

    assert (call.id, call.name, call.input) == (
        "call_abc",
        "get_weather",
        {"city": "Paris", "unit": "C"},
    )
    assert asked.stop_reason == "tool_use"
    assert (asked.usage.input_tokens, asked.usage.output_tokens) == (20, 9)
    # The argument pieces reach the application as they arrived, pings between them unseen.
    json_deltas = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json_deltas == pieces
    assert "ping" not in {e.type for e in events}
    raw = [
        data["delta"].get("partial_json") if name == "content_block_delta" else name
        for name, data in events_of(bytes(tap))
    ]
    assert raw[raw.index(pieces[0]) : raw.index(pieces[-1])].count("ping") >= 2
    first_request, second_request = fake.requests
    assert first_request.path == second_request.path == "/v1/chat/completions"
    assert first_request.body["tools"][0]["function"]["name"] == "get_weather"
    # The tool result goes back as the assistant's tool call and a `tool` message.
    assistant, tool = second_request.body["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in assistant["tool_calls"]
    ] == [("call_abc", "get_weather", {"city": "Paris", "unit": "C"})]
    assert tool == {"role": "tool", "tool_call_id": "call_abc", "content": "18 C"}
    assert answered.content[0].text == tokens_text(2)


# --- silence, heartbeats and failures ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_silence_longer_than_the_read_timeout_is_kept_alive_by_pings(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    """A silent prefill and a silent gap between two text deltas, each longer than the SDK's
    read timeout: pings keep both ways of streaming alive, before ``message_start`` and
    between content events, and the application never sees one."""
    gw = await start_gateway(backend=MODES[mode], keepalive=KEEPALIVE)
    script = {"tokens": 3, "prefill": SILENCE, "gap_at": SECOND_DELTA[mode], "gap": SILENCE}
    raw_create, raw_helper = bytearray(), bytearray()
    events: list[Any] = []
    final: list[anthropic.types.Message] = []

    async def create() -> None:
        async with client(gw.url, tap=raw_create, timeout=short_read()) as sdk:
            stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
            async with stream:
                async for event in stream:
                    events.append(event)

    async def helper() -> None:
        async with (
            client(gw.url, tap=raw_helper, timeout=short_read()) as sdk,
            sdk.messages.stream(**ASK, extra_body={"fake": script}) as stream,
        ):
            final.append(await stream.get_final_message())

    started = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            nursery.start_soon(helper)
    assert trio.current_time() - started >= 2 * SILENCE
    assert [e.type for e in events] == STREAM_EVENTS
    assert final[0].content[0].text == tokens_text(3)
    assert final[0].stop_reason == "end_turn"
    for raw in (raw_create, raw_helper):
        names = [name for name, _ in events_of(bytes(raw)) if name != "ping"]
        assert names == STREAM_EVENTS
        before = pings_between_events(bytes(raw))
        assert before[0] >= SILENCE / READ_TIMEOUT  # before message_start
        assert before[3] >= SILENCE / READ_TIMEOUT  # between the first two text deltas


async def test_control_the_same_silence_straight_at_the_upstream_times_out(
    fake: FakeOpenAI,
) -> None:
    """Without the gateway, the silence the tests above cross kills the SDK's stream: the
    prefill of a stream, and the wait for a whole answer."""
    url = f"http://127.0.0.1:{fake.port}"
    script = {"tokens": 3, "prefill": SILENCE}
    seen: list[Any] = []

    async def create_stream(sdk: anthropic.AsyncAnthropic) -> None:
        stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
        with pytest.raises(anthropic.APITimeoutError):
            async with stream:
                async for event in stream:
                    seen.append(event)

    async def helper(sdk: anthropic.AsyncAnthropic) -> None:
        with pytest.raises(anthropic.APITimeoutError):
            async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as stream:
                await stream.get_final_message()

    async def create_whole(sdk: anthropic.AsyncAnthropic) -> None:
        with pytest.raises(anthropic.APITimeoutError):
            await sdk.messages.create(**ASK, extra_body={"fake": script})

    async with client(url, timeout=short_read()) as sdk:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for call in (create_stream, helper, create_whole):
                    nursery.start_soon(call, sdk)
    assert seen == []
    assert len(fake.requests) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_a_wait_in_the_admission_queue_is_kept_alive_by_pings(
    start_gateway, mode: str
) -> None:
    """Queued behind the backend's only slot for longer than the SDK's read timeout: pings
    from the queue on, before any attempt, keep the stream helper waiting."""
    admission = {"max_concurrency": 1, "max_queue": 1}
    gw = await start_gateway(backend={**MODES[mode], "admission": admission}, keepalive=KEEPALIVE)
    slots = gw.gateway.upstreams["fake"].slots
    async with gw.client() as holder, trio.open_nursery() as holding:
        holding.start_soon(
            partial(holder.post, "/v1/messages", json={**ASK, "fake": {"prefill": SILENCE}})
        )
        await wait_until(lambda: slots.in_flight == 1)
        tap = bytearray()
        async with client(gw.url, tap=tap, timeout=short_read()) as sdk:
            with trio.fail_after(10):
                async with sdk.messages.stream(**ASK, extra_body={"fake": {}}) as helper:
                    final = await helper.get_final_message()
    assert final.content[0].text == tokens_text(3)
    assert pings_between_events(bytes(tap))[0] >= 2


@pytest.mark.parametrize("mode", MODES)
async def test_whole_answers_after_a_silence_with_whitespace_keepalive(
    start_gateway, mode: str
) -> None:
    """``non_stream = "whitespace"``: a whole answer after a silence longer than the read
    timeout arrives; one that fails after the 200 went out raises, never a clean answer."""
    keepalive = {**KEEPALIVE, "non_stream": "whitespace"}
    gw = await start_gateway(backend=MODES[mode], keepalive=keepalive)
    answers: list[anthropic.types.Message] = []

    async def answered(sdk: anthropic.AsyncAnthropic) -> None:
        answers.append(await sdk.messages.create(**ASK, extra_body={"fake": {"prefill": SILENCE}}))

    async def failed(sdk: anthropic.AsyncAnthropic) -> None:
        script = {"headers_delay": SILENCE, "status": 500}
        with pytest.raises(anthropic.APIConnectionError):
            await sdk.messages.create(**ASK, extra_body={"fake": script})

    async with client(gw.url, timeout=short_read()) as sdk:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answered, sdk)
                nursery.start_soon(failed, sdk)
    assert answers[0].content[0].text == tokens_text(3)


async def test_pings_between_every_two_events_are_harmless(start_gateway, fake: FakeOpenAI) -> None:
    """A native upstream pausing after every event: a ping lands in every position of the
    stream, and the SDK hands the application the events, and the message, as if there
    were none."""
    gw = await start_gateway(backend=NATIVE, keepalive={"interval": 0.1})
    chunks = [e.decode() for e in messages_events(3, model="upstream-m")]
    script = {"chunks": chunks, "pace": 0.25}
    tap = bytearray()
    events: list[Any] = []
    async with client(gw.url, tap=tap) as sdk:
        with trio.fail_after(10):
            async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as helper:
                async for event in helper:
                    events.append(event)
                final = await helper.get_final_message()
    pings = pings_between_events(bytes(tap))
    # message_start is held until the first content event, so it comes with
    # content_block_start; every other event follows a pause, and a ping in it.
    assert len(pings) == len(STREAM_EVENTS)
    assert all(n >= 1 for i, n in enumerate(pings) if i != 1), pings
    assert bytes(tap).replace(PING, b"") == b"".join(messages_events(3, model="upstream-m"))
    assert [e.type for e in events if e.type in STREAM_EVENTS] == STREAM_EVENTS
    assert final.content[0].text == tokens_text(3)


@pytest.mark.parametrize("fault", ["reset_mid_stream", "no_done"])
@pytest.mark.parametrize("mode", MODES)
async def test_upstream_failure_mid_stream_raises_in_the_sdk(
    start_gateway, mode: str, fault: str
) -> None:
    """The upstream resets mid-stream, or ends without ``message_stop`` (which the SDK alone
    would take for a whole stream): the gateway's ``event: error`` makes both ways of
    streaming raise instead of returning a clean-looking message."""
    gw = await start_gateway(backend=MODES[mode])
    script = {"tokens": 6, "fault": fault}
    seen: list[str] = []
    async with client(gw.url) as sdk:
        with trio.fail_after(10):
            stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with stream:
                    async for event in stream:
                        seen.append(event.type)
            with pytest.raises(anthropic.APIStatusError) as helper_raised:
                async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as helper:
                    await helper.get_final_message()
    assert "message_stop" not in seen
    if fault == "reset_mid_stream":
        assert "content_block_delta" in seen
    for error in (raised.value, helper_raised.value):
        assert error.type == "api_error"
        assert error.body["type"] == "error"
