"""``max_attempts`` and ``failover_deadline`` through a served gateway: which upstreams are
tried, what the client is told, and what the access log says was tried.

Three real fake upstreams behind one route, each failing with its own status
(``status_on_port``), so every answer shows which upstream it came from.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.service import Gateway
from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI
from tests.conftest import serve_config

CHAT = {"model": "pool", "messages": [{"role": "user", "content": "hi"}]}
STATUSES = {"a": 500, "b": 503, "c": 502}  # what each fake answers


async def start_fakes(nursery: trio.Nursery, names: list[str]) -> dict[str, FakeOpenAI]:
    fakes = {name: FakeOpenAI() for name in names}
    for fake in fakes.values():
        await nursery.start(fake.serve)
    return fakes


def refused_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def serve_pool(
    nursery: trio.Nursery, urls: dict[str, str], route: dict[str, Any]
) -> tuple[str, Gateway]:
    """A gateway on port 0 with one route ``pool`` over ``urls`` in priority order."""
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {name: {"type": "openai", "url": url} for name, url in urls.items()},
            "routes": {
                "pool": {
                    "targets": [{"backend": name} for name in urls],
                    "keepalive": {"interval": 0},
                    **route,
                }
            },
        },
        environ={},
    )

    served = await serve_config(nursery, config)
    return served.url, served.gateway


def script(fakes: dict[str, FakeOpenAI], **extra: Any) -> dict[str, Any]:
    """The body's fake script: each fake fails with its own status from STATUSES."""
    on_port = {str(f.port): STATUSES[name] for name, f in fakes.items()}
    return {"status_on_port": on_port, **extra}


async def post(url: str, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        return response, await response.aread()


async def access_log_of(gw: Gateway, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The one access-log line of the one relayed request. The relay writes it right after
    it leaves the in-flight table, without a checkpoint between, so the table's emptiness
    is the event to wait on."""
    await gw.inflight.wait_empty()
    lines: list[dict[str, Any]] = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"
    ]
    [line] = lines
    return line


def tried(fakes: dict[str, FakeOpenAI]) -> list[str]:
    return [name for name, fake in fakes.items() if fake.requests]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("max_attempts,expected", [(1, "a"), (2, "ab"), (3, "abc")])
async def test_max_attempts_bounds_the_upstreams_tried(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
    max_attempts: int,
    expected: str,
) -> None:
    """Three failing targets: exactly ``max_attempts`` of them are tried, in order, and the
    client gets the last one's failure as a real status (nothing was committed before)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    fakes = await start_fakes(nursery, ["a", "b", "c"])
    url, gw = await serve_pool(
        nursery, {n: f.url for n, f in fakes.items()}, {"max_attempts": max_attempts}
    )
    response, raw = await post(url, {**CHAT, "stream": stream, "fake": script(fakes)})

    assert tried(fakes) == list(expected)
    assert all(len(f.requests) <= 1 for f in fakes.values())
    last = expected[-1]
    assert response.status_code == STATUSES[last]
    assert json.loads(raw)["error"] == {
        "message": f"fake error {STATUSES[last]}",
        "type": "server_error",
        "param": None,
        "code": "fake_error",
    }
    attempts = [f"{name}={STATUSES[name]}:fake_error" for name in expected]
    assert response.headers["x-gateway-attempts"] == ", ".join(attempts)
    line = await access_log_of(gw, caplog)
    assert line["attempts"] == attempts
    assert (line["status"], line["outcome"], line["backend"]) == (
        STATUSES[last],
        "upstream_error",
        last,
    )


async def test_max_attempts_after_a_heartbeat_committed_the_headers(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The same limit once a heartbeat committed ``200``: the last attempt's failure comes
    as an error event, with no ``[DONE]`` after it."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    fakes = await start_fakes(nursery, ["a", "b", "c"])
    url, gw = await serve_pool(
        nursery,
        {n: f.url for n, f in fakes.items()},
        {"max_attempts": 2, "keepalive": {"interval": 0.05}},
    )
    body = {**CHAT, "stream": True, "fake": script(fakes, headers_delay=0.2)}
    response, raw = await post(url, body)

    assert tried(fakes) == ["a", "b"]
    assert response.status_code == 200
    events = SSEFramer().feed(raw)
    assert {e.comments for e in events[:-1]} == {("keepalive",)}
    assert events[-1].data is not None
    assert json.loads(events[-1].data)["error"]["message"] == "fake error 503"
    assert not any(e.is_done for e in events)
    line = await access_log_of(gw, caplog)
    assert line["attempts"] == ["a=500:fake_error", "b=503:fake_error"]
    assert (line["status"], line["outcome"]) == (200, "upstream_error")


async def test_failover_deadline_passed_by_a_slow_failure(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The first target fails only after the deadline: no other target is tried, and the
    client gets the first one's failure."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    fakes = await start_fakes(nursery, ["a", "b", "c"])
    url, gw = await serve_pool(
        nursery, {n: f.url for n, f in fakes.items()}, {"failover_deadline": 0.05}
    )
    started = trio.current_time()
    response, raw = await post(url, {**CHAT, "fake": script(fakes, headers_delay=0.3)})

    assert trio.current_time() - started >= 0.3
    assert tried(fakes) == ["a"]
    assert response.status_code == 500
    assert json.loads(raw)["error"]["message"] == "fake error 500"
    assert response.headers["x-gateway-attempts"] == "a=500:fake_error"
    assert (await access_log_of(gw, caplog))["attempts"] == ["a=500:fake_error"]


async def test_failover_deadline_lets_a_started_attempt_finish(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection fails over at once; the second target starts well before the
    deadline and fails after it: its own answer reaches the client (the deadline does not
    cut it), and the third, which would start after the deadline, is never tried."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    fakes = await start_fakes(nursery, ["b", "c"])
    url, gw = await serve_pool(
        nursery,
        {"refused": refused_url(), "b": fakes["b"].url, "c": fakes["c"].url},
        {"failover_deadline": 0.5},
    )
    response, raw = await post(url, {**CHAT, "fake": script(fakes, headers_delay=0.8)})

    assert tried(fakes) == ["b"]
    assert response.status_code == 503
    assert json.loads(raw)["error"]["message"] == "fake error 503"
    attempts = ["refused=502:upstream_connect_error", "b=503:fake_error"]
    assert response.headers["x-gateway-attempts"] == ", ".join(attempts)
    assert (await access_log_of(gw, caplog))["attempts"] == attempts


@pytest.mark.parametrize("status", [401, 403])
async def test_a_backend_refusing_the_gateways_key_is_a_backend_failure(
    nursery: trio.Nursery, status: int
) -> None:
    """The upstream refuses the gateway's own key (a wrong or rotated backend api_key): not
    the client's error — the next target serves, the backend is charged a failure, and
    alone it is a 502 that does not echo what the upstream said (it may quote the key)."""
    fakes = await start_fakes(nursery, ["a", "b"])
    url, gw = await serve_pool(nursery, {n: f.url for n, f in fakes.items()}, {})
    refused = {
        "status_on_port": {str(fakes["a"].port): status},
        "message": "Incorrect API key provided: sk-wr**ng",
    }
    served, _ = await post(url, {**CHAT, "fake": refused})
    assert served.status_code == 200 and tried(fakes) == ["a", "b"]
    assert gw.upstreams["a"].breaker.failures == 1
    both = {str(f.port): status for f in fakes.values()}
    alone, body = await post(url, {**CHAT, "fake": {**refused, "status_on_port": both}})
    error = json.loads(body)["error"]
    assert alone.status_code == 502 and error["code"] == "upstream_auth_failed"
    assert "sk-" not in body.decode() and f"HTTP {status}" in error["message"]


async def test_a_prompt_over_one_targets_context_goes_to_the_next(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A route falling back from a small-context model to a larger one: the first refuses
    the prompt as over its window (llama-server's refusal), the next serves it, and the
    refusing backend is not charged a failure; when every target refuses, the client is
    told the last refusal as a context-window error."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    fakes = await start_fakes(nursery, ["small", "large"])
    url, gw = await serve_pool(nursery, {n: f.url for n, f in fakes.items()}, {})
    overflow = {
        "message": "request (9000 tokens) exceeds the available context size (8192 tokens), "
        "try increasing it",
        "type": "exceed_context_size_error",
        "error_fields": {"n_prompt_tokens": 9000, "n_ctx": 8192},
    }
    small_refuses = {**overflow, "status_on_port": {str(fakes["small"].port): 400}}
    served, _ = await post(url, {**CHAT, "fake": small_refuses})
    assert served.status_code == 200 and tried(fakes) == ["small", "large"]
    assert served.headers["x-gateway-attempts"] == "small=400:context_length_exceeded, large=ok"
    assert gw.upstreams["small"].breaker.failures == 0
    both = {str(f.port): 400 for f in fakes.values()}
    alone, body = await post(url, {**CHAT, "fake": {**overflow, "status_on_port": both}})
    error = json.loads(body)["error"]
    assert alone.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens.")
