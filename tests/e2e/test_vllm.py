"""The ``vllm`` backend through the real gateway: hypercorn on port 0 in front of the
protocol-faithful fake vLLM (:mod:`tests.fakes.vllm`), real sockets both sides.

Sections follow issue 5's "What it must show": (1) chat and completions, extras, usage;
(2) vLLM's error forms; (3) load signals; (4) a silent prefill and the heartbeat;
(5) a client disconnect aborts the request at vLLM."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from backends.vllm import ServedModel, VLLMBackend
from gateway.abc import BackendStatus
from gateway.config import GatewayConfig, build_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.sse import SSEFramer
from tests.fakes.vllm import FakeVLLM

KEY = "sk-vllm-secret-4242"
WRONG_KEY = "sk-not-the-key-1717"
POLL = 0.2
HEARTBEAT = b": keepalive\n\n"
MESSAGES = [{"role": "user", "content": "Write one short line about trio."}]


def vllm_config(
    url: str, backend: dict[str, Any] | None = None, *, badkey: bool = False
) -> GatewayConfig:
    """Backend ``vllm`` and routes to it: ``chat`` (early headers, heartbeats every 0.5 s),
    ``chat-late`` (headers wait for vLLM, so its status is kept), ``chat-quiet`` (no
    heartbeats), ``missing`` and ``missing-early`` (a model vLLM does not serve); with
    ``badkey``, backend ``vllm-badkey`` (same server, wrong key) and route ``badkey``."""
    common = {"type": "vllm", "url": url, "poll_interval": POLL, "poll_timeout": 1.0}
    late = {"interval": 0.5, "early_headers": False}
    extra_backends, extra_routes = {}, {}
    if badkey:
        extra_backends = {"vllm-badkey": {**common, "api_key": WRONG_KEY}}
        extra_routes = {
            "badkey": {"backend": "vllm-badkey", "upstream_model": "fake-model", "keepalive": late}
        }
    return build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"vllm": {**common, "api_key": KEY, **(backend or {})}, **extra_backends},
            "routes": {
                "chat": {
                    "backend": "vllm",
                    "upstream_model": "fake-model",
                    "keepalive": {"interval": 0.5},
                },
                "chat-late": {"backend": "vllm", "upstream_model": "fake-model", "keepalive": late},
                "chat-quiet": {
                    "backend": "vllm",
                    "upstream_model": "fake-model",
                    "keepalive": {"interval": 0},
                },
                "missing": {
                    "backend": "vllm",
                    "upstream_model": "no-such-model",
                    "keepalive": late,
                },
                "missing-early": {
                    "backend": "vllm",
                    "upstream_model": "no-such-model",
                    "keepalive": {"interval": 0.5},
                },
                **extra_routes,
            },
        },
        environ={},
    )


@dataclass
class VLLMGateway:
    url: str
    gateway: Gateway

    @property
    def backend(self) -> VLLMBackend:
        return self.vllm("vllm")

    def vllm(self, id: str) -> VLLMBackend:
        backend = self.gateway.backends[id]
        assert isinstance(backend, VLLMBackend)
        return backend

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.AsyncClient(base_url=self.url, **kwargs)


StartGateway = Callable[..., Awaitable[VLLMGateway]]


async def serve_gateway(nursery: trio.Nursery, config: GatewayConfig) -> VLLMGateway:
    async def run(task_status: trio.TaskStatus[VLLMGateway]) -> None:
        async with open_gateway(config) as gateway, trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(VLLMGateway(binds[0], gateway))

    result: VLLMGateway = await nursery.start(run)
    return result


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeVLLM:
    server = FakeVLLM(api_key=KEY)
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def start_gateway(nursery: trio.Nursery, fake: FakeVLLM) -> StartGateway:
    """Serve a gateway in front of ``fake``; ``backend`` overrides the vllm backend's table.
    Started from the test body, so a test can set its clock first."""

    async def start(backend: dict[str, Any] | None = None, badkey: bool = False) -> VLLMGateway:
        return await serve_gateway(nursery, vllm_config(fake.url, backend, badkey=badkey))

    return start


def split_heartbeats(raw: bytes) -> tuple[bytes, int]:
    """The client's bytes without the gateway's heartbeats, and how many there were."""
    upstream, beats = bytearray(), 0
    for event in SSEFramer().feed(raw):
        if event.raw == HEARTBEAT:
            beats += 1
        else:
            upstream += event.raw
    return bytes(upstream), beats


def data_chunks(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(e.raw[len(b"data: ") :])
        for e in SSEFramer().feed(raw)
        if e.raw.startswith(b"data: {")
    ]


async def wait_status(
    backend: VLLMBackend, predicate: Callable[[BackendStatus], bool]
) -> BackendStatus:
    """The first status the poller publishes that satisfies ``predicate``."""
    status = backend.status
    with trio.fail_after(10):
        while not predicate(status):
            status = await backend.wait_status_change()
    return status


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


# -- (3) load and health -----------------------------------------------------------------


async def test_load_signals_reach_status_within_one_poll(
    start_gateway: StartGateway, fake: FakeVLLM
) -> None:
    """Three streams on a vLLM with two batch slots: 2 running, 1 waiting, with the KV-cache
    usage it reports, show in the backend's status within one polling interval; when the
    clients leave, vLLM's numbers (and the status) fall back to zero."""
    gw = await start_gateway()
    backend = gw.backend
    assert backend.status.health == "ready" and backend.status.running == 0
    assert backend.served_models == (ServedModel("fake-model", 2048),)
    fake.max_num_seqs, fake.prefill, fake.kv_cache_usage = 2, 60, 0.37

    async def stream() -> None:
        async with gw.client() as client:
            body = {"model": "chat", "messages": MESSAGES, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                await r.aread()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(stream)
        await fake.wait_until(lambda: fake.running() == 2 and fake.waiting() == 1)
        reached = trio.current_time()
        status = await wait_status(backend, lambda s: s.running == 2)
        assert trio.current_time() - reached <= POLL + 0.5
        assert (status.health, status.queued, status.cache_usage) == ("ready", 1, 0.37)
        nursery.cancel_scope.cancel()
    await fake.wait_until(lambda: fake.running() == 0 and fake.waiting() == 0)
    fake.kv_cache_usage = None
    status = await wait_status(backend, lambda s: s.running == 0)
    assert (status.queued, status.cache_usage) == (0, 0.0)


async def test_least_busy_avoids_the_vllm_with_a_queue(nursery: trio.Nursery) -> None:
    """vLLM's own counts steer the gateway: with ``least_busy``, requests go to the server
    whose ``/metrics`` shows a queue, although the gateway itself has sent nothing to it:
    the load on ``a`` comes from other clients. (The llama.cpp backend fills the same
    ``running``/``queued`` fields.)"""
    a, b = FakeVLLM(max_num_seqs=1, prefill=60), FakeVLLM()
    for fake in (a, b):
        await nursery.start(fake.serve)
    common = {"type": "vllm", "poll_interval": POLL}
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"a": {**common, "url": a.url}, "b": {**common, "url": b.url}},
            "routes": {
                "pool": {
                    "targets": [
                        {"backend": "a", "model": "fake-model"},
                        {"backend": "b", "model": "fake-model"},
                    ],
                    "strategy": "least_busy",
                }
            },
        },
        environ={},
    )
    gw = await serve_gateway(nursery, config)
    async with (
        httpx.AsyncClient(base_url=a.url + "/v1", timeout=None) as other,
        trio.open_nursery() as others,
    ):
        for _ in range(3):
            others.start_soon(partial(other.post, "/completions", json={"prompt": "x"}))
        await a.wait_until(lambda: (a.running(), a.waiting()) == (1, 2))
        await wait_status(gw.vllm("a"), lambda s: (s.running, s.queued) == (1, 2))
        async with gw.client() as client:
            for _ in range(4):
                r = await client.post("/v1/completions", json={"model": "pool", "prompt": "y"})
                assert r.status_code == 200
        others.cancel_scope.cancel()
    assert len(b.generation_requests()) == 4 and len(a.generation_requests()) == 3


@pytest.mark.parametrize("fault", ["hang", "error"])
async def test_metrics_outage_does_not_break_requests(
    start_gateway: StartGateway, fake: FakeVLLM, fault: Any
) -> None:
    """A vLLM whose ``/metrics`` hangs or fails stays ready with its load unknown, and
    requests keep working; the numbers come back with ``/metrics``."""
    gw = await start_gateway()
    fake.metrics_fault = fault
    status = await wait_status(gw.backend, lambda s: "load unknown" in s.detail)
    assert (status.health, status.running, status.queued, status.cache_usage) == (
        "ready",
        None,
        None,
        None,
    )
    async with gw.client() as client:
        r = await client.post("/v1/chat/completions", json={"model": "chat", "messages": MESSAGES})
        assert r.status_code == 200
        r = await client.post(
            "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES, "stream": True}
        )
        assert split_heartbeats(r.content)[0].endswith(b"data: [DONE]\n\n")
        assert (await client.get("/readyz")).status_code == 200
    fake.metrics_fault = None
    await wait_status(gw.backend, lambda s: s.running == 0)


async def test_dead_engine_fails_readiness_until_it_recovers(
    start_gateway: StartGateway, fake: FakeVLLM
) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["backends"]["vllm"] == {
            "health": "ready",
            "detail": "serving fake-model (max_model_len 2048)",
        }
        fake.engine_dead = True
        status = await wait_status(gw.backend, lambda s: s.health == "down")
        assert "503" in status.detail
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["backends"]["vllm"]["health"] == "down"
        assert r.json()["routes"]["chat"] is False
        fake.engine_dead = False
        await wait_status(gw.backend, lambda s: s.health == "ready")
        assert (await client.get("/readyz")).status_code == 200


# -- (4) keepalive -----------------------------------------------------------------------


async def test_silent_prefill_survives_with_keepalive_and_not_without(
    start_gateway: StartGateway, fake: FakeVLLM, mock_clock: MockClock
) -> None:
    """vLLM answers a stream's headers at once and then sends nothing for a 20 s prefill.
    A client with a 3 s read timeout survives through route ``chat`` (heartbeats every
    0.5 s) and times out through ``chat-quiet``. Sockets are real; the clock runs 5x, so
    every trio timer (httpx's read timeout included) sees 20 s pass."""
    mock_clock.rate = 5
    gw = await start_gateway({"poll_interval": 5})
    fake.prefill = 20
    results: dict[str, bytes | Exception] = {}

    async def run(route: str) -> None:
        timeout = httpx.Timeout(30.0, read=3.0)
        async with gw.client(timeout=timeout) as client:
            body = {"model": route, "messages": MESSAGES, "stream": True}
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    results[route] = b"".join([c async for c in r.aiter_raw()])
            except httpx.ReadTimeout as exc:
                results[route] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "chat")
        nursery.start_soon(run, "chat-quiet")

    assert isinstance(results["chat-quiet"], httpx.ReadTimeout)
    raw = results["chat"]
    assert isinstance(raw, bytes)
    upstream, beats = split_heartbeats(raw)
    assert beats >= 30  # 20 s of silence at one per 0.5 s
    ok = next(r for r in fake.generation_requests() if r.finished_at is not None)
    assert upstream == ok.sent and upstream.endswith(b"data: [DONE]\n\n")
    # The fake behaved as vLLM does: headers at once, the first byte only after the prefill.
    assert ok.headers_at is not None and ok.first_token_at is not None
    assert ok.headers_at - ok.received_at < 1 and ok.first_token_at - ok.headers_at >= 20
    quiet = next(r for r in fake.generation_requests() if r is not ok)
    assert quiet.aborted_at is not None  # the timed-out client's request left vLLM's batch


# -- (5) cancellation --------------------------------------------------------------------


async def hold_slot(client: httpx.AsyncClient, task_status: trio.TaskStatus[None]) -> None:
    async with (
        client,
        client.stream(
            "POST", "/chat/completions", json={"messages": MESSAGES, "stream": True}
        ) as r,
    ):
        task_status.started()
        await r.aread()


@pytest.mark.parametrize("phase", ["waiting-for-slot", "prefill", "streaming"])
async def test_client_disconnect_aborts_the_vllm_request(
    start_gateway: StartGateway, fake: FakeVLLM, nursery: trio.Nursery, phase: str
) -> None:
    """The client leaves; vLLM sees its request's connection close at once (and frees the
    slot, as its abort does), in each phase; the gateway's pool keeps no busy connection."""
    gw = await start_gateway()
    if phase == "streaming":
        fake.tokens, fake.pace = 10_000, 0.01
    else:
        fake.prefill = 60
    if phase == "waiting-for-slot":  # another client holds vLLM's only batch slot
        fake.max_num_seqs = 1
        other = httpx.AsyncClient(
            base_url=fake.url + "/v1", headers={"authorization": f"Bearer {KEY}"}
        )
        await nursery.start(hold_slot, other)
    body = {"model": "chat", "messages": MESSAGES, "stream": True}
    async with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = r.aiter_raw()
        if phase == "streaming":
            async for chunk in chunks:
                if b"data: {" in chunk:
                    break
        else:
            assert await chunks.__anext__() == HEARTBEAT  # early headers, then a ping
        seen = fake.generation_requests()[-1]
        assert seen.aborted_at is None
        assert (seen.slot_at is None) == (phase == "waiting-for-slot")
        closed_at = trio.current_time()
    await fake.wait_until(lambda: seen.aborted_at is not None)
    assert seen.aborted_at is not None and seen.aborted_at - closed_at < 0.5
    assert seen.finished_at is None
    assert fake.waiting() == 0 and fake.running() == (1 if phase == "waiting-for-slot" else 0)
    open_, idle = gw.backend.pool_connections()
    assert open_ == idle  # the aborted request's connection was closed, not left busy
