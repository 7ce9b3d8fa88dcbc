"""The ollama backend through a real gateway, found through its installed entry point, in
front of the fake Ollama: what a client sends and gets, and what Ollama receives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from ollama_fake import Behaviour, FakeOllama

from gateway.testing.openai_shapes import check_stream, check_unary, parse_sse
from gateway.testing.serving import ServedGateway, open_test_gateway


@pytest.fixture
async def ollama(nursery: trio.Nursery) -> FakeOllama:
    fake = FakeOllama()
    await nursery.start(fake.serve)
    return fake


@asynccontextmanager
async def serving(ollama: FakeOllama, **keepalive: Any) -> AsyncIterator[ServedGateway]:
    config = {
        "backends": {"local": {"type": "ollama", "url": ollama.url, "keep_alive": "1m"}},
        "routes": {
            "chat": {
                "model": "gpt-local",
                "backend": "local",
                "upstream_model": "llama3.2",
                "keepalive": {"interval": 0.1, **keepalive},
            }
        },
    }
    async with open_test_gateway(config) as served:
        yield served


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-local", "messages": [{"role": "user", "content": "say hi"}], **extra}


async def test_a_stream_with_usage_through_the_gateway(ollama: FakeOllama) -> None:
    ollama.models["llama3.2"] = Behaviour(tokens=5, prefill=0.5)
    async with serving(ollama) as served, served.client() as client:
        resp = await client.post(
            "/v1/chat/completions",
            json=_chat(stream=True, stream_options={"include_usage": True}, max_tokens=5),
        )
    assert resp.status_code == 200
    events = parse_sse(resp.content)
    answer = check_stream("chat/completions", events, usage=True)
    assert answer.text == "tok0 tok1 tok2 tok3 tok4 "
    assert answer.usage == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    first_data = next(i for i, e in enumerate(events) if e.data is not None)
    assert first_data >= 2, "heartbeats while Ollama prefilled"
    sent = ollama.requests[-1]
    assert sent.path == "/api/chat"
    assert sent.body["model"] == "llama3.2"
    assert sent.body["options"] == {"num_predict": 5}
    assert sent.body["keep_alive"] == "1m"
    assert sent.headers["x-request-id"] == resp.headers["x-request-id"]


async def test_a_whole_completion_through_the_gateway(ollama: FakeOllama) -> None:
    async with serving(ollama) as served, served.client() as client:
        resp = await client.post(
            "/v1/completions", json={"model": "gpt-local", "prompt": "one two", "stream": False}
        )
    assert resp.status_code == 200
    answer = check_unary("completions", resp.content, usage=True)
    assert answer.text == "tok0 tok1 tok2 "
    assert ollama.requests[-1].path == "/api/generate"


async def test_a_model_not_pulled_is_ollamas_404_with_its_message(ollama: FakeOllama) -> None:
    del ollama.models["llama3.2"]
    async with serving(ollama, early_headers=False) as served, served.client() as client:
        resp = await client.post("/v1/chat/completions", json=_chat(stream=True))
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == 'model "llama3.2" not found, try pulling it first'


async def test_an_error_line_mid_stream_becomes_an_error_event(ollama: FakeOllama) -> None:
    ollama.models["llama3.2"] = Behaviour(
        tokens=6, fault="error_line", fault_after=3, message="llama runner process has terminated"
    )
    async with serving(ollama) as served, served.client() as client:
        resp = await client.post("/v1/chat/completions", json=_chat(stream=True))
    data = [e.data for e in parse_sse(resp.content) if e.data is not None]
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["message"] == "ollama: llama runner process has terminated"
    texts = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:-1]]
    assert texts == ["tok0 ", "tok1 ", "tok2 "]


async def test_a_connection_cut_mid_stream_is_an_error_event_not_a_clean_end(
    ollama: FakeOllama,
) -> None:
    ollama.models["llama3.2"] = Behaviour(tokens=6, fault="cut", fault_after=3)
    async with serving(ollama) as served, served.client() as client:
        resp = await client.post("/v1/chat/completions", json=_chat(stream=True))
    data = [e.data for e in parse_sse(resp.content) if e.data is not None]
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["code"] == "upstream_protocol_error"


async def test_a_request_ollama_cannot_serve_is_refused_before_it_is_sent(
    ollama: FakeOllama,
) -> None:
    async with serving(ollama, early_headers=False) as served, served.client() as client:
        resp = await client.post(
            "/v1/chat/completions", json=_chat(tools=[{"type": "function", "function": {}}])
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "tools"
    assert ollama.requests == []
