"""A backend's ``[backends.X.keepalive]`` overrides its routes' policy for the requests sent
to it first, on real sockets: heartbeat bytes and interval, early headers, kept through a
failover, and never turned into SSE heartbeats on a WebSocket."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI, chat_events
from gateway.testing.waiting import wait_until
from gateway.testing.ws_client import WSClient
from tests.conftest import StartGateway, serve_config

from .test_routing import start_fake

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def comments(raw: bytes) -> list[str]:
    """The comment of every comment-only event, in order."""
    return [e.comments[0] for e in SSEFramer().feed(raw) if e.data is None and e.comments]


async def stream(url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post("/v1/chat/completions", json=body)


async def test_a_backends_interval_and_comment_replace_the_routes(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(
        keepalive={"interval": 30, "comment": "route"},
        backend={"keepalive": {"interval": 0.1, "comment": "cpu-box"}},
    )
    resp = await stream(gw.url, {**CHAT, "fake": {"prefill": 0.6, "tokens": 2}})
    beats = comments(resp.content)
    assert len(beats) >= 4 and set(beats) == {"cpu-box"}  # the route's 30 s would give none
    assert resp.content.startswith(b": cpu-box\n\n")
    assert resp.content.endswith(b"data: [DONE]\n\n")
    # The status page shows what the backend changes.
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        client.stream("GET", "/status/events") as feed,
    ):
        async for line in feed.aiter_lines():
            if line.startswith("data: "):
                break
    [backend] = json.loads(line.removeprefix("data: "))["backends"]
    assert backend["keepalive"] == {"interval": 0.1, "comment": "cpu-box"}


async def test_a_backend_that_turns_early_headers_off_keeps_real_status_codes(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(
        keepalive={"interval": 0.1},  # early_headers on: the route's default
        backend={"keepalive": {"early_headers": False}},
    )
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        started = trio.current_time()
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "fake": {"headers_delay": 0.4, "status": 400, "message": "bad"}},
        ) as resp:
            headers_after = trio.current_time() - started
            await resp.aread()
    assert headers_after >= 0.4  # no 200 committed while the upstream was silent
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "bad"


async def serve_pair(
    nursery: trio.Nursery, slow: FakeOpenAI, good: FakeOpenAI, **route: Any
) -> str:
    """A gateway whose route "pool" goes to "slow", which overrides the heartbeat's
    comment, and "good", which does not."""
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {
                "slow": {"type": "openai", "url": slow.url, "keepalive": {"comment": "slow-box"}},
                "good": {"type": "openai", "url": good.url},
            },
            "routes": {
                "pool": {
                    "targets": [{"backend": "slow"}, {"backend": "good"}],
                    "keepalive": {"interval": 0.1, "comment": "route"},
                    **route,
                }
            },
        },
        environ={},
    )
    return (await serve_config(nursery, config)).url


POOL = {**CHAT, "model": "pool"}


async def test_the_policy_is_the_first_backends_and_is_kept_through_a_failover(
    nursery: trio.Nursery,
) -> None:
    slow, _ = await start_fake(nursery)
    good, _ = await start_fake(nursery)
    url = await serve_pair(nursery, slow, good)
    # "slow" fails after 0.4 s of silence, "good" answers after 0.4 s more: the client
    # hears "slow"'s heartbeat throughout (its 200 went out with the first one).
    script = {"status_on_port": {str(slow.port): 500}, "headers_delay": 0.4, "tokens": 3}
    heard: list[tuple[float, str]] = []  # (when, comment) of each heartbeat
    framer, raw = SSEFramer(), b""
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json={**POOL, "fake": script}) as resp,
    ):
        async for chunk in resp.aiter_raw():
            raw += chunk
            heard += [
                (trio.current_time(), e.comments[0]) for e in framer.feed(chunk) if e.comments
            ]
    assert resp.status_code == 200
    assert {comment for _, comment in heard} == {"slow-box"}
    [failover] = [r.received_at for r in good.requests]
    assert any(when > failover for when, _ in heard)  # heard while "good" was asked too
    data = [e.raw for e in SSEFramer().feed(raw) if e.data is not None]
    assert b"".join(data) == b"".join(chat_events(3, model="pool"))


async def test_each_request_has_the_policy_of_the_backend_it_went_to_first(
    nursery: trio.Nursery,
) -> None:
    slow, _ = await start_fake(nursery)
    good, _ = await start_fake(nursery)
    url = await serve_pair(nursery, slow, good, strategy="round_robin")
    heard = []
    for _ in range(4):
        resp = await stream(url, {**POOL, "fake": {"prefill": 0.35, "tokens": 1}})
        assert resp.status_code == 200
        heard.append(set(comments(resp.content)))
    assert heard in ([{"slow-box"}, {"route"}] * 2, [{"route"}, {"slow-box"}] * 2)
    assert len(slow.requests) == len(good.requests) == 2


async def test_a_backends_interval_sets_a_sockets_pings_and_writes_no_sse_heartbeat(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """On a WebSocket the backend's interval (0.1 s, its route's 5 s) is the pings' of the
    turns it serves first, as it is the SSE heartbeats' over HTTP — the route's would leave
    the 0.5 s prefill silent — and those pings are the turn's only heartbeats: no heartbeat
    task writes beside the relay (it would count more than the pings)."""
    caplog.set_level("INFO", logger="gateway.access")
    gw = await start_gateway(keepalive={"interval": 5}, backend={"keepalive": {"interval": 0.1}})
    ws = await WSClient.connect(gw.url)
    create = {"type": "response.create", "model": "m", "input": "Hi"}
    sent_at = trio.current_time()
    await ws.send_json({**create, "fake": {"prefill": 0.5, "tokens": 2}})
    events = await ws.events_until_end()
    done_at = trio.current_time()
    await ws.close()
    assert [events[0]["type"], events[-1]["type"]] == ["response.created", "response.completed"]
    pings = [t for t in ws.pings if sent_at < t < done_at]
    assert 3 <= len(pings) <= 6, pings

    def access_log() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]

    await wait_until(lambda: any(line.get("status") == 101 for line in access_log()), within=5)
    [turn] = [line for line in access_log() if line.get("endpoint") == "responses"]
    assert 3 <= turn["heartbeats"] <= len(ws.pings)


@pytest.mark.parametrize(
    ("keepalive", "message"),
    [
        ({"interval": -1}, "backends.b.keepalive.interval: Input should be greater than"),
        ({"comment": "a\nb"}, "backends.b.keepalive.comment: Value error, must be printable"),
        ({"responses": "event"}, "backends.b.keepalive: Value error, `responses` is set per route"),
        ({"intervall": 5}, "backends.b.keepalive.intervall: unknown key"),
        ({"interval": float("inf")}, "backends.b.keepalive.interval: Input should be a finite"),
        ({"early_headers": "sometimes"}, "backends.b.keepalive.early_headers: Input should be"),
    ],
)
def test_a_bad_override_is_a_config_error_with_its_path(
    keepalive: dict[str, Any], message: str
) -> None:
    raw = {
        "backends": {"b": {"type": "openai", "url": "http://h/v1", "keepalive": keepalive}},
        "routes": {"m": {"backend": "b"}},
    }
    with pytest.raises(ConfigError) as caught:
        build_config(raw, environ={})
    assert message in str(caught.value)


def test_a_routes_interval_must_be_finite() -> None:
    # The status page reads the policy as JSON, where inf is no number.
    raw = {
        "backends": {"b": {"type": "openai", "url": "http://h/v1"}},
        "routes": {"m": {"backend": "b", "keepalive": {"interval": float("inf")}}},
    }
    with pytest.raises(
        ConfigError, match=r"routes\.m\.keepalive\.interval: Input should be a finite"
    ):
        build_config(raw, environ={})
