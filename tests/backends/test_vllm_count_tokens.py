"""``vllm`` token counts: vLLM's ``POST /tokenize`` over real loopback HTTP (the fake of
:mod:`tests.fakes.vllm` counts as it bills), its failures mapped to the gateway's errors,
and the ``/tokenize`` body built from a chat body (sans-I/O, table-tested)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from backends.vllm import VLLMBackend, VLLMSettings
from backends.vllm._count import read_count, tokenize_body
from gateway.abc import (
    CannotCountTokens,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.config import build_config
from gateway.server import serve
from gateway.service import open_gateway
from tests.fakes.vllm import FakeVLLM

KEY = "sk-vllm-count-6262"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city, now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHATS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hello there"}]},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather in Oslo?"}]},
        ],
        "tools": [TOOL],
        "tool_choice": "auto",
    },
    {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
        ],
        "tools": [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "other"}}],
    },
]


def _chat(body: dict[str, Any], *, model: str = "fake-model", **headers: str) -> UpstreamRequest:
    return UpstreamRequest(
        endpoint="chat/completions",
        body={"model": model, "max_tokens": 1, "temperature": 0.2, **body},
        stream=False,
        request_id="req-count-1",
        headers=headers,
    )


@asynccontextmanager
async def _running(url: str, **settings: Any) -> AsyncIterator[VLLMBackend]:
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url=url, **settings))
    async with backend.running():
        yield backend


async def _prompt_tokens(backend: VLLMBackend, request: UpstreamRequest) -> int:
    async with backend.open_response(request) as response:
        body = b"".join([chunk async for chunk in response.body])
    return int(json.loads(body)["usage"]["prompt_tokens"])


# -- unhappy paths -----------------------------------------------------------------------


async def test_a_backend_that_is_not_running_cannot_count() -> None:
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url="http://127.0.0.1:9"))
    with pytest.raises(UpstreamConnectError, match="not running"):
        await backend.count_tokens(_chat(CHATS[0]))


async def test_an_unreachable_server_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the backend tries it
    async with _running(f"http://127.0.0.1:{port}", poll_timeout=0.5) as backend:
        with pytest.raises(UpstreamConnectError, match=f"backend v: cannot connect.*:{port}"):
            await backend.count_tokens(_chat(CHATS[0]))


async def test_a_server_that_never_answers_times_out(nursery: trio.Nursery) -> None:
    """A server that takes the request and says nothing: the first-byte timer ends it."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    async with _running(
        f"http://127.0.0.1:{port}", poll_timeout=0.2, timeouts={"first_byte": 0.3}
    ) as backend:
        started = trio.current_time()
        with pytest.raises(UpstreamTimeout, match=r"/tokenize did not answer within 0.3 s"):
            await backend.count_tokens(_chat(CHATS[0]))
        assert 0.3 <= trio.current_time() - started < 5
    nursery.cancel_scope.cancel()


async def test_vllms_refusals_keep_their_status_and_message(nursery: trio.Nursery) -> None:
    fake = FakeVLLM(api_key=KEY)
    await nursery.start(fake.serve)
    async with _running(fake.url, api_key=KEY) as backend:
        with pytest.raises(UpstreamStatusError) as unknown:
            await backend.count_tokens(_chat(CHATS[0], model="no-such-model"))
        both = {**CHATS[0], "continue_final_message": True, "add_generation_prompt": True}
        with pytest.raises(UpstreamStatusError) as invalid:
            await backend.count_tokens(_chat(both))
    assert (unknown.value.status, unknown.value.type) == (404, "NotFoundError")
    assert unknown.value.message == "The model `no-such-model` does not exist."
    assert (invalid.value.status, invalid.value.type) == (400, "Bad Request")
    assert "Cannot set both" in invalid.value.message


@pytest.mark.parametrize(
    "status,body,error,match",
    [
        (404, b'{"detail":"Not Found"}', CannotCountTokens, "does not tokenize chats"),
        (501, b'{"detail":"not implemented"}', CannotCountTokens, r"answered 501"),
        (
            404,
            b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError",'
            b'"param":null,"code":404}}',
            UpstreamStatusError,
            "The model `x` does not exist.",
        ),
        (500, b"Internal Server Error", UpstreamStatusError, "Internal Server Error"),
        (200, b'{"max_model_len":2048,"tokens":[]}', UpstreamProtocolError, "without a token"),
        (200, b'{"count":true}', UpstreamProtocolError, "without a token"),
        (200, b'{"count":-1}', UpstreamProtocolError, "without a token"),
        (200, b"[1, 2]", UpstreamProtocolError, "without a token"),
        (200, b"not json", UpstreamProtocolError, "without a token"),
    ],
    ids=[
        "no-route",
        "not-implemented",
        "unknown-model",
        "server-error",
        "no-count",
        "bool",
        "negative",
        "not-an-object",
        "not-json",
    ],
)
def test_read_count_refuses_every_answer_without_a_count(
    status: int, body: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        read_count(status, body, "v")


# -- the body ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chat,expected",
    [
        (
            {"model": "m", "messages": [], "max_tokens": 1, "stream": False, "tool_choice": "auto"},
            {"model": "m", "messages": [], "add_generation_prompt": True},
        ),
        (
            {"model": "m", "messages": [], "tools": [TOOL], "chat_template_kwargs": {"a": 1}},
            {
                "model": "m",
                "messages": [],
                "tools": [TOOL],
                "chat_template_kwargs": {"a": 1},
                "add_generation_prompt": True,
            },
        ),
        (
            {"model": "m", "messages": [], "add_generation_prompt": False, "tools": None},
            {"model": "m", "messages": [], "add_generation_prompt": False},
        ),
        (
            {"model": "m", "messages": [], "continue_final_message": True},
            {"model": "m", "messages": [], "continue_final_message": True},
        ),
        (
            {
                "model": "m",
                "messages": [],
                "chat_template": "{{ messages }}",
                "add_special_tokens": True,
                "mm_processor_kwargs": {"x": 1},
                "media_io_kwargs": {"image": {}},
                "stream_options": {"include_usage": True},
                "logprobs": True,
            },
            {
                "model": "m",
                "messages": [],
                "chat_template": "{{ messages }}",
                "add_special_tokens": True,
                "mm_processor_kwargs": {"x": 1},
                "media_io_kwargs": {"image": {}},
                "add_generation_prompt": True,
            },
        ),
    ],
    ids=["sampling-dropped", "tools-and-kwargs", "no-generation-prompt", "continue", "template"],
)
def test_tokenize_body_keeps_what_shapes_the_prompt(
    chat: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert tokenize_body(chat) == expected


# -- counting ----------------------------------------------------------------------------


async def test_the_count_is_the_prompt_tokens_vllm_bills(nursery: trio.Nursery) -> None:
    fake = FakeVLLM(api_key=KEY)
    await nursery.start(fake.serve)
    async with _running(fake.url, api_key=KEY) as backend:
        counted = [await backend.count_tokens(_chat(chat)) for chat in CHATS]
        billed = [await _prompt_tokens(backend, _chat(chat)) for chat in CHATS]
    assert counted == billed
    assert len(set(counted)) == len(counted)  # the tools count: every chat differs
    tokenize = [r for r in fake.requests if r.path == "/tokenize"]
    assert len(tokenize) == len(CHATS) and len(fake.generation_requests()) == len(CHATS)
    first = tokenize[0]
    assert first.method == "POST" and first.status == 200
    assert first.body == {
        "model": "fake-model",
        "messages": CHATS[0]["messages"],
        "add_generation_prompt": True,
    }
    assert tokenize[2].body["tools"] == CHATS[2]["tools"]
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["x-request-id"] == "req-count-1"
    assert first.headers["content-type"] == "application/json"


async def test_the_gateways_headers_go_with_the_count(nursery: trio.Nursery) -> None:
    fake = FakeVLLM()
    await nursery.start(fake.serve)
    async with _running(fake.url) as backend:
        await backend.count_tokens(_chat(CHATS[0], **{"x-request-id": "mine"}))
    [request] = [r for r in fake.requests if r.path == "/tokenize"]
    assert request.headers["x-request-id"] == "mine"
    assert "authorization" not in request.headers


async def test_a_count_neither_waits_for_nor_takes_a_relay_connection(
    nursery: trio.Nursery,
) -> None:
    """The relay pool's only connection is held by a prefilling request: the count goes
    on a connection of its own, at once."""
    fake = FakeVLLM(prefill=60)
    await nursery.start(fake.serve)
    async with _running(fake.url, max_connections=1) as backend:
        held = trio.Event()

        async def generate() -> None:
            async with backend.open_response(_chat({**CHATS[0], "stream": True})):
                held.set()
                await trio.sleep_forever()

        async with trio.open_nursery() as inner:
            inner.start_soon(generate)
            await held.wait()
            assert backend.pool_connections() == (1, 0)
            with trio.fail_after(5):
                assert await backend.count_tokens(_chat(CHATS[0])) > 0
            assert backend.pool_connections() == (1, 0)
            inner.cancel_scope.cancel()


async def test_messages_count_tokens_through_the_gateway(nursery: trio.Nursery) -> None:
    """Anthropic's count_tokens through the gateway, answered by vLLM's /tokenize: the
    prompt tokens of the chat the Messages request translates to."""
    fake = FakeVLLM(api_key=KEY)
    await nursery.start(fake.serve)
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"vllm": {"type": "vllm", "url": fake.url, "api_key": KEY}},
            "routes": {"claude": {"backend": "vllm", "upstream_model": "fake-model"}},
        },
        environ={},
    )

    async def run(task_status: trio.TaskStatus[str]) -> None:
        async with open_gateway(config) as gateway, trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(binds[0])

    url = await nursery.start(run)
    body = {
        "model": "claude",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city, now.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        counted = await client.post(
            "/v1/messages/count_tokens", json=body, headers={"anthropic-version": "2023-06-01"}
        )
    assert counted.status_code == 200, counted.text
    [tokenize] = [r for r in fake.requests if r.path == "/tokenize"]
    assert tokenize.body["model"] == "fake-model"
    assert [m["role"] for m in tokenize.body["messages"]] == ["system", "user"]
    assert tokenize.body["tools"][0]["function"]["name"] == "get_weather"
    chat = {k: tokenize.body[k] for k in ("messages", "tools")}
    async with _running(fake.url, api_key=KEY) as backend:
        billed = await _prompt_tokens(backend, _chat(chat))
    assert counted.json() == {"input_tokens": billed}
