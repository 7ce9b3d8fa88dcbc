"""The ``vllm`` backend through the real gateway (:mod:`.vllm_gateway`): vLLM's error forms
and the happy paths — chat and completions, extras, usage, embeddings. Load signals,
keepalive and cancellation are in ``test_vllm_load.py``."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

from tests.fakes.vllm import FakeVLLM

from .vllm_gateway import (
    KEY,
    MESSAGES,
    WRONG_KEY,
    StartGateway,
    data_chunks,
    fake,  # noqa: F401  (fixture)
    split_heartbeats,
    start_gateway,  # noqa: F401  (fixture)
)

# -- (2) errors first --------------------------------------------------------------------


@pytest.mark.parametrize("form", ["openai", "legacy"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    "route,extra,status,type_,code,message",
    [
        ("missing", {}, 404, "NotFoundError", "404", "The model `no-such-model` does not exist."),
        (
            "missing-early",
            {},
            404,
            "NotFoundError",
            "404",
            "The model `no-such-model` does not exist.",
        ),
        (  # vLLM's "'max_tokens' or 'max_completion_tokens' is too large: 4000. This
            # model's maximum context length is 2048 tokens and your request has 10 input
            # tokens (4000 > 2048 - 10).", in OpenAI's words (tests/test_context_window.py)
            "chat-late",
            {"max_tokens": 4000},
            400,
            "invalid_request_error",
            "context_length_exceeded",
            (
                "This model's maximum context length is 2048 tokens. However, you requested "
                "4010 tokens (10 in the messages, 4000 in the completion). Please reduce the "
                "length of the messages or completion."
            ),
        ),
    ],
    ids=["404-model", "404-model-early-headers", "400-context"],
)
async def test_vllm_error_bodies_keep_status_and_message(
    start_gateway: StartGateway,
    fake: FakeVLLM,
    form: Any,
    stream: bool,
    route: str,
    extra: dict[str, Any],
    status: int,
    type_: str,
    code: str,
    message: str,
) -> None:
    """Both of vLLM's error bodies become the gateway's OpenAI shape, vLLM's status kept.
    vLLM refuses before its headers, so even a route with early headers (committed by the
    first heartbeat, 0.5 s later) still has the status to give."""
    fake.error_form = form
    gw = await start_gateway()
    async with gw.client() as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": route, "messages": MESSAGES, "stream": stream, **extra},
        )
    sent = json.loads(fake.generation_requests()[-1].sent)
    assert ("object" in sent) == (form == "legacy")  # vLLM really sent that form
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_first_byte_timeout_from_the_vllm_table_aborts_at_vllm(
    start_gateway: StartGateway, fake: FakeVLLM, stream: bool
) -> None:
    """``timeouts`` in the vllm table are the gateway's upstream timers: a prefill longer
    than ``first_byte`` fails the request (504, or an error event once headers went out),
    and vLLM sees the request aborted."""
    gw = await start_gateway({"timeouts": {"first_byte": 0.5}})
    fake.prefill = 30
    async with gw.client() as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "chat-late", "messages": MESSAGES, "stream": stream},
        )
    [seen] = fake.generation_requests()
    if stream:  # vLLM sent its 200 at once; the relay committed it before the timer fired
        assert r.status_code == 200
        error = data_chunks(split_heartbeats(r.content)[0])[-1]["error"]
    else:
        assert r.status_code == 504
        error = r.json()["error"]
    assert error["code"] == "upstream_timeout"
    with trio.fail_after(5):
        await fake.wait_until(lambda: seen.aborted_at is not None)
    assert seen.finished_at is None and fake.running() == 0


async def test_vllm_validation_error_400(start_gateway: StartGateway, fake: FakeVLLM) -> None:
    """FastAPI's request validation (``type: "Bad Request"``) keeps its 400 too."""
    gw = await start_gateway()
    async with gw.client() as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "chat-late",
                "messages": MESSAGES,
                "stream_options": {"include_usage": True},
            },
        )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "Bad Request" and error["code"] == "400"
    assert "Stream options can only be defined when `stream=True`." in error["message"]


@pytest.mark.parametrize("form", ["openai", "legacy"])
async def test_vllm_failure_mid_stream_is_relayed_as_vllm_sent_it(
    start_gateway: StartGateway, fake: FakeVLLM, form: Any
) -> None:
    """After its 200, vLLM reports a failure as a ``data: {"error": ...}`` event followed by
    ``[DONE]``; the gateway passes those bytes through unchanged and in order."""
    fake.fail_stream_after, fake.error_form = 2, form
    gw = await start_gateway()
    async with gw.client() as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES, "stream": True}
        )
    assert r.status_code == 200
    upstream, _ = split_heartbeats(r.content)
    assert upstream == fake.generation_requests()[-1].sent
    assert data_chunks(upstream)[-1]["error"]["message"] == "fake engine failure mid-stream"
    assert upstream.endswith(b"data: [DONE]\n\n")


async def test_wrong_api_key_fails_readiness_not_the_client(
    start_gateway: StartGateway, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """vLLM's ``/health`` needs no key, but ``/v1/models`` does: a backend whose key vLLM
    rejects (``401 {"error": "Unauthorized"}``) is down with the reason, so the gateway
    answers 503 instead of relaying a 401 that would blame the client's own key. No key is
    ever logged."""
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway(badkey=True)
    bad = gw.vllm("vllm-badkey")
    assert (bad.status.health, bad.status.detail) == (
        "down",
        "the server rejects api_key (/v1/models answered 401)",
    )
    assert [
        r.headers["authorization"]
        for r in fake.requests
        if r.path == "/v1/models" and r.status == 401
    ] == [f"Bearer {WRONG_KEY}"]
    assert gw.backend.status.detail == "serving fake-model (max_model_len 2048)"
    async with gw.client() as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "badkey", "messages": MESSAGES}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (503, "no_backend_available")
        ready = (await client.get("/readyz")).json()
    assert ready["backends"]["vllm-badkey"]["health"] == "down"
    assert (ready["routes"]["badkey"], ready["routes"]["chat"]) == (False, True)
    assert not fake.generation_requests()
    for secret in (KEY, WRONG_KEY):
        assert secret not in caplog.text
        assert secret not in repr(bad.settings) and secret not in str(gw.backend.settings)


# -- (1) the happy paths -----------------------------------------------------------------

VLLM_EXTRAS: dict[str, Any] = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "priority": -3,
    "chat_template_kwargs": {"enable_thinking": False},
    "structured_outputs": {"json": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    "guided_json": {"type": "object"},
    "skip_special_tokens": False,
    "seed": 7,
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_chat_with_vllm_extras_passes_through(
    start_gateway: StartGateway, fake: FakeVLLM, stream: bool
) -> None:
    gw = await start_gateway()
    body = {"model": "chat", "messages": MESSAGES, "stream": stream, **VLLM_EXTRAS}
    async with gw.client() as client:
        r = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
    [seen] = fake.generation_requests()
    assert seen.body == {**body, "model": "fake-model"}  # every extra field, unchanged
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["x-request-id"] == "req-42"
    assert r.status_code == 200
    if stream:
        upstream, _ = split_heartbeats(r.content)
        assert upstream == seen.sent  # byte for byte, in order
        chunks = data_chunks(upstream)
        assert chunks[0]["id"] == "chatcmpl-req-42"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        assert r.content == seen.sent
        doc = r.json()
        assert doc["id"] == "chatcmpl-req-42" and doc["object"] == "chat.completion"
        text = doc["choices"][0]["message"]["content"]
    assert text == "Hello, w\u00f6rld \u2713"


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
@pytest.mark.parametrize(
    "options,usage_in_every_chunk,final_usage",
    [
        (None, False, False),
        ({"include_usage": True}, False, True),
        ({"include_usage": True, "continuous_usage_stats": True}, True, True),
        ({"include_usage": False, "continuous_usage_stats": True}, False, False),
    ],
    ids=["none", "include_usage", "continuous", "continuous-without-include"],
)
async def test_stream_options_usage_relayed(
    start_gateway: StartGateway,
    fake: FakeVLLM,
    endpoint: str,
    options: dict[str, Any] | None,
    usage_in_every_chunk: bool,
    final_usage: bool,
) -> None:
    gw = await start_gateway()
    body: dict[str, Any] = {"model": "chat", "stream": True}
    body.update({"messages": MESSAGES} if endpoint == "chat/completions" else {"prompt": "a b c"})
    if options is not None:
        body["stream_options"] = options
    async with gw.client() as client:
        r = await client.post(f"/v1/{endpoint}", json=body)
    [seen] = fake.generation_requests()
    assert seen.body.get("stream_options") == options  # reached vLLM as the client sent it
    upstream, _ = split_heartbeats(r.content)
    assert upstream == seen.sent
    assert upstream.endswith(b"data: [DONE]\n\n")
    chunks = data_chunks(upstream)
    last = chunks[-1]
    assert (last["choices"] == [] and last.get("usage") is not None) == final_usage
    if final_usage:
        assert last["usage"]["completion_tokens"] == fake.tokens
    token_chunks = chunks[:-1] if final_usage else chunks
    assert all(bool(c.get("usage")) == usage_in_every_chunk for c in token_chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_completions(start_gateway: StartGateway, fake: FakeVLLM, stream: bool) -> None:
    gw = await start_gateway()
    body = {
        "model": "chat",
        "prompt": "The capital of France is",
        "max_tokens": 2,
        "stream": stream,
        "min_tokens": 1,
    }
    async with gw.client() as client:
        r = await client.post("/v1/completions", json=body)
    [seen] = fake.generation_requests()
    assert seen.body == {**body, "model": "fake-model"}
    if stream:
        upstream, _ = split_heartbeats(r.content)
        assert upstream == seen.sent
        finish = [c["choices"][0]["finish_reason"] for c in data_chunks(upstream)]
        assert finish == [None, "length"]
    else:
        assert r.content == seen.sent
        choice = r.json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == ("Hello,", "length")


async def test_embeddings(start_gateway: StartGateway, fake: FakeVLLM) -> None:
    gw = await start_gateway()
    body = {
        "model": "chat",
        "input": ["first text", "second"],
        "encoding_format": "float",
        "truncate_prompt_tokens": 128,
    }
    async with gw.client() as client:
        r = await client.post("/v1/embeddings", json=body)
    [seen] = fake.generation_requests()
    assert seen.body == {**body, "model": "fake-model"}
    assert r.status_code == 200 and r.content == seen.sent
    doc = r.json()
    assert [d["index"] for d in doc["data"]] == [0, 1] and len(doc["data"][0]["embedding"]) == 8
