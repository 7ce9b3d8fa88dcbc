"""The simulator through a real gateway, installed as operators install it (the gateway
finds it through its entry point): the timelines it promises, and what clients see."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from gateway.testing.openai_shapes import check_stream, parse_sse
from gateway.testing.serving import ServedGateway, open_test_gateway

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@asynccontextmanager
async def serving(
    *, keepalive: Mapping[str, Any] | None = None, **backend: Any
) -> AsyncIterator[ServedGateway]:
    config = {
        "backends": {"sim": {"type": "simulator", **backend}},
        "routes": {"sim": {"backend": "sim", "keepalive": {"interval": 0.1, **(keepalive or {})}}},
    }
    async with open_test_gateway(config) as served:  # the installed entry point
        yield served


async def timed_events(
    client: httpx.AsyncClient, body: Mapping[str, Any]
) -> list[tuple[float, bytes]]:
    """The response's raw chunks with their arrival times (trio's clock)."""
    out: list[tuple[float, bytes]] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_raw():
            out.append((trio.current_time(), chunk))
    return out


async def test_a_long_prefill_is_filled_with_heartbeats() -> None:
    async with serving(prefill=0.6, max_tokens=3) as served, served.client() as client:
        sent = trio.current_time()
        chunks = await timed_events(client, CHAT)
    raw = b"".join(c for _, c in chunks)
    events = parse_sse(raw)
    first_data = next(i for i, e in enumerate(events) if e.data is not None)
    assert first_data >= 3, "heartbeats every 0.1 s through a 0.6 s prefill"
    assert all(e.comments == ("keepalive",) for e in events[:first_data])
    first_data_at = next(t for t, c in chunks if b"data:" in c)
    assert first_data_at - sent >= 0.6
    assert check_stream("chat/completions", parse_sse(raw), usage=False).pieces == 3


async def test_tokens_come_at_the_configured_rate() -> None:
    async with serving(tokens_per_second=40, max_tokens=12) as served, served.client() as client:
        chunks = await timed_events(client, CHAT)
    data_times = [t for t, c in chunks if b'"content":"' in c]
    assert len(data_times) >= 2
    # 12 tokens at 40/s: the first and the last are 11/40 s apart, and the gateway
    # relays each as it comes (no batching into one write).
    assert data_times[-1] - data_times[0] >= 11 / 40 - 0.01


async def test_a_client_with_a_short_read_timeout_survives_the_prefill_only_with_heartbeats() -> (
    None
):
    short = httpx.Timeout(5.0, read=0.5)  # heartbeats every 0.1 s leave a wide margin
    async with serving(prefill=1.5, max_tokens=2) as served, served.client(timeout=short) as c:
        resp = await c.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert check_stream("chat/completions", parse_sse(resp.content), usage=False).pieces == 2
    quiet = serving(prefill=1.5, max_tokens=2, keepalive={"interval": 0})
    async with quiet as served, served.client(timeout=short) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=CHAT)


async def test_a_refusing_target_fails_over_to_the_next() -> None:
    config = {
        "backends": {
            "down": {"type": "simulator", "fault": "refuse"},
            "up": {"type": "simulator", "max_tokens": 2},
        },
        "routes": {"sim": {"targets": [{"backend": "down"}, {"backend": "up"}]}},
    }
    async with open_test_gateway(config) as served, served.client() as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert resp.headers["x-gateway-attempts"] == "down=502:upstream_connect_error, up=ok"
    check_stream("chat/completions", parse_sse(resp.content), usage=False)


async def test_a_truncated_stream_becomes_an_error_event_not_a_clean_end() -> None:
    async with serving(fault="truncate", fault_after=2) as served, served.client() as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
    data = [e.data for e in parse_sse(resp.content) if e.data is not None]
    assert "[DONE]" not in data
    assert '"upstream_protocol_error"' in data[-1]


async def test_a_plugin_serves_anthropic_messages_translated() -> None:
    """A plugin speaks chat only; the gateway serves Anthropic Messages on it all the same:
    pings through the prefill, then Anthropic's event grammar made from its chat chunks."""
    body = {"model": "sim", "max_tokens": 3, "stream": True, "messages": CHAT["messages"]}
    # The request's max_tokens (3) stops the answer before the simulator's own length (5).
    async with serving(prefill=0.4, max_tokens=5) as served, served.client() as client:
        resp = await client.post("/v1/messages", json=body)
        whole = await client.post("/v1/messages", json={**body, "stream": False})
    assert resp.status_code == 200
    events = parse_sse(resp.content)
    names = [e.event for e in events if e.data is not None]
    assert names[:2] == ["ping", "ping"], "pings through the 0.4 s prefill"
    content = [n for n in names if n != "ping"]
    assert content[0] == "message_start" and content[-2:] == ["message_delta", "message_stop"]
    assert content.count("content_block_delta") == 3
    message = whole.json()
    assert message["type"] == "message" and message["model"] == "sim"
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 3
