"""The fake vLLM itself: that it speaks vLLM's protocol as vLLM's source describes it
(see the docstring of :mod:`tests.fakes.vllm` for the files and versions). The
gateway tests in ``test_vllm.py`` are only as good as this fake."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.vllm import FakeVLLM

KEY = "sk-fake-vllm"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "say hi"}]}


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeVLLM:
    server = FakeVLLM(api_key=KEY)
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def client(fake: FakeVLLM) -> Any:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as c:
        yield c


def events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return raw[:-2].split(b"\n\n")


def payload(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: {")
    doc: dict[str, Any] = json.loads(event[len(b"data: ") :])
    return doc


async def test_api_key_guards_v1_only(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    for path in ("/v1/models",):
        r = await client.get(path)
        assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
        r = await client.get(path, headers={"authorization": "Bearer nope"})
        assert r.status_code == 401
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": KEY})
    assert r.status_code == 401  # no "Bearer" scheme
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_health_is_empty_200_then_503_when_engine_dead(
    fake: FakeVLLM, client: httpx.AsyncClient
) -> None:
    r = await client.get("/health")
    assert (r.status_code, r.content, r.headers.get("content-type")) == (200, b"", None)
    fake.engine_dead = True
    r = await client.get("/health")
    assert (r.status_code, r.content) == (503, b"")


async def test_models_and_unknown_paths(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models", headers=AUTH)).json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert {
        k: card[k] for k in ("id", "object", "owned_by", "root", "parent", "max_model_len")
    } == {
        "id": "fake-model",
        "object": "model",
        "owned_by": "vllm",
        "root": "org/fake-model-0.5B",
        "parent": None,
        "max_model_len": 2048,
    }
    assert card["permission"][0]["object"] == "model_permission"
    r = await client.get("/v1/nothing-here", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = await client.get("/v1/chat/completions", headers=AUTH)
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
    assert (await client.get("/version")).json() == {"version": "0.12.0"}


@pytest.mark.parametrize(
    "version,names,labels",
    [
        (
            "v1",
            {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"},
            {"model_name", "engine"},
        ),
        (
            "v0.9",
            {
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",
            },
            {"model_name", "engine"},
        ),
        (
            "v0",
            {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc"},
            {"model_name"},
        ),
    ],
)
async def test_metrics_exposition(
    fake: FakeVLLM, client: httpx.AsyncClient, version: str, names: set[str], labels: set[str]
) -> None:
    fake.metrics_version = version  # type: ignore[assignment]
    fake.kv_cache_usage = 0.25
    r = await client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    gauges = {
        sample.name: sample
        for family in text_string_to_metric_families(r.text)
        if family.type == "gauge" and family.name.startswith("vllm:")
        for sample in family.samples
    }
    assert set(gauges) == names
    assert all(set(s.labels) == labels for s in gauges.values())
    assert gauges["vllm:num_requests_running"].labels["model_name"] == "fake-model"
    cache = gauges.get("vllm:kv_cache_usage_perc") or gauges["vllm:gpu_cache_usage_perc"]
    assert cache.value == 0.25


async def test_chat_stream_framing_and_usage(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True}
    r = await client.post("/v1/chat/completions", json=body, headers={**AUTH, "x-request-id": "r1"})
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    evs = events(r.content)
    assert evs[-1] == b"data: [DONE]"
    chunks = [payload(e) for e in evs[:-1]]
    assert b", " not in evs[0] and b'": ' not in evs[0]  # compact JSON, as pydantic dumps it
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["id"] == "chatcmpl-r1" and "usage" not in c for c in chunks)  # no usage asked
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) == 1 + fake.tokens

    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    chunks = [payload(e) for e in events(r.content)[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 4, 4]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "total_tokens": 10, "completion_tokens": 4}


async def test_completion_stream_has_every_field(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    body = {
        "model": "fake-model",
        "prompt": "once upon",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await client.post("/v1/completions", json=body, headers=AUTH)
    chunks = [payload(e) for e in events(r.content)[:-1]]
    assert chunks[0]["usage"] is None and chunks[0]["choices"][0]["stop_reason"] is None
    assert chunks[-1] == {
        **chunks[-1],
        "choices": [],
        "usage": {"prompt_tokens": 2, "total_tokens": 6, "completion_tokens": 4},
    }


@pytest.mark.parametrize(
    "form,expected",
    [
        (
            "openai",
            {
                "error": {
                    "message": "The model `gpt-4` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                }
            },
        ),
        (
            "legacy",
            {
                "object": "error",
                "message": "The model `gpt-4` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            },
        ),
    ],
)
async def test_error_forms(
    fake: FakeVLLM, client: httpx.AsyncClient, form: str, expected: dict[str, Any]
) -> None:
    fake.error_form = form  # type: ignore[assignment]
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}, headers=AUTH)
    assert (r.status_code, r.json()) == (404, expected)


@pytest.mark.parametrize(
    "body,message,type_",
    [
        (
            {**CHAT, "stream_options": {"include_usage": True}},
            "Stream options can only be defined when `stream=True`.",
            "Bad Request",
        ),
        ({"model": "fake-model"}, "messages\n  Field required", "Bad Request"),
        (
            {**CHAT, "max_tokens": 5000},
            (
                "'max_tokens' or 'max_completion_tokens' is too large: 5000. This model's maximum "
                "context length is 2048 tokens"
            ),
            "BadRequestError",
        ),
    ],
)
async def test_bad_requests(
    fake: FakeVLLM, client: httpx.AsyncClient, body: dict[str, Any], message: str, type_: str
) -> None:
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    error = r.json()["error"]
    assert (r.status_code, error["type"], error["code"]) == (400, type_, 400)
    assert message in error["message"]


@pytest.mark.parametrize("form", ["openai", "legacy"])
async def test_failure_after_headers_is_an_error_event_then_done(
    fake: FakeVLLM, client: httpx.AsyncClient, form: Any
) -> None:
    """Written with plain json.dumps (not compact); v0.9.2 wraps its flat body in "error"."""
    fake.fail_stream_after, fake.error_form = 2, form
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    evs = events(r.content)
    assert r.status_code == 200 and evs[-1] == b"data: [DONE]"
    assert len(evs) == 1 + 2 + 2  # role, two tokens, error, [DONE]
    assert evs[-2].startswith(b'data: {"error": {')
    error = payload(evs[-2])["error"]
    assert (error["type"], error["code"], "object" in error) == (
        "BadRequestError",
        400,
        form == "legacy",
    )


async def test_headers_at_once_then_silence_until_first_token(fake: FakeVLLM) -> None:
    fake.prefill = 0.3
    async with (
        httpx.AsyncClient(base_url=fake.url, timeout=10) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
        ) as r,
    ):
        assert r.status_code == 200
        [request] = fake.generation_requests()
        assert request.headers_at is not None and request.first_token_at is None
        await r.aread()
    assert request.headers_at - request.received_at < 0.1
    assert request.first_token_at is not None
    assert request.first_token_at - request.headers_at >= 0.3


async def test_embeddings(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/embeddings", headers=AUTH, json={"model": "fake-model", "input": ["a b", "c"]}
    )
    doc = r.json()
    assert doc["object"] == "list" and doc["id"].startswith("embd-")
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert len(doc["data"][0]["embedding"]) == 8
    assert doc["usage"]["prompt_tokens"] == 3


async def test_disconnect_aborts_and_frees_the_slot(fake: FakeVLLM) -> None:
    fake.max_num_seqs = 1
    fake.prefill = 60
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:

        async def post() -> None:
            await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)
            nursery.start_soon(post)
            await fake.wait_until(lambda: fake.running() == 1 and fake.waiting() == 1)
            nursery.cancel_scope.cancel()
    await fake.wait_until(lambda: all(r.aborted_at is not None for r in fake.requests))
    assert fake.running() == 0 and fake.waiting() == 0
    async with httpx.AsyncClient(base_url=fake.url) as client:
        text = (await client.get("/metrics")).text
    success = {
        s.labels["finished_reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "vllm:request_success"
        for s in family.samples
    }
    assert success == {"stop": 0, "length": 0, "abort": 2}


async def test_metrics_count_finished_requests(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    """Counters and the latency histogram move as requests finish; the exposition also
    carries prometheus_client's python_* families, as vLLM's does."""
    await client.post(
        "/v1/completions",
        headers=AUTH,
        json={"model": "fake-model", "prompt": "one two", "max_tokens": 2},
    )
    families = {
        f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)
    }
    assert "python_info" in families
    samples = {
        (s.name, s.labels.get("finished_reason")): s.value
        for name in (
            "vllm:request_success",
            "vllm:prompt_tokens",
            "vllm:generation_tokens",
            "vllm:e2e_request_latency_seconds",
        )
        for s in families[name].samples
        if "le" not in s.labels
    }
    assert samples[("vllm:request_success_total", "length")] == 1
    assert samples[("vllm:prompt_tokens_total", None)] == 2
    assert samples[("vllm:generation_tokens_total", None)] == 2
    assert samples[("vllm:e2e_request_latency_seconds_count", None)] == 1
