"""Graceful shutdown: stop accepting, let streams finish within the grace period, then end
the rest with an error — in-process, and through the real CLI with a real SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def collect(url: str, script: dict, out: dict, key: str) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as r,
    ):
        out[key] = (r.status_code, await r.aread())


async def refused(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/healthz")
    except httpx.ConnectError:
        return True
    return False


def streaming(gw) -> bool:
    return any(entry.phase == "streaming" for entry in gw.gateway.inflight)


async def test_in_flight_stream_finishes_during_drain(start_gateway) -> None:
    gw = await start_gateway(server={"graceful_timeout": 10})
    out: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, gw.url, {"tokens": 20, "pace": 0.05}, out, "s")
        await wait_until(lambda: streaming(gw))  # mid-stream when the shutdown comes
        gw.shutdown.set()
        await wait_until(lambda: gw.gateway.draining)
        assert streaming(gw)  # draining does not end the stream
        with trio.fail_after(5):
            await gw.gateway.inflight.wait_empty()
    status, raw = out["s"]
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    # and the listener is closed: new connections are refused
    await wait_until(lambda: refused(gw.url), interval=0.05)


async def test_streams_past_the_grace_period_end_with_an_error(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(server={"graceful_timeout": 0.5})
    late = await start_gateway(server={"graceful_timeout": 0.5}, keepalive={"early_headers": False})
    out: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, gw.url, {"prefill": 30}, out, "committed")
        nursery.start_soon(collect, late.url, {"headers_delay": 30}, out, "uncommitted")
        # Both requests are upstream (so the early-headers one has committed its 200).
        await wait_until(lambda: len(fake.requests) == 2)
        gw.shutdown.set()
        late.shutdown.set()
    status, raw = out["committed"]
    events = [e for e in SSEFramer().feed(raw) if e.is_data]
    assert status == 200 and [e.is_done for e in events] == [False]
    assert json.loads(events[0].data)["error"]["code"] == "shutting_down"
    status, raw = out["uncommitted"]
    assert status == 503 and json.loads(raw)["error"]["code"] == "shutting_down"


async def serving(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            return (await client.get("/healthz")).status_code == 200
    except httpx.ConnectError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_serve_sigterm_drains(fake: FakeOpenAI, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[server]
bind = "127.0.0.1:{port}"
graceful_timeout = 20
[backends.fake]
type = "openai"
url = "{fake.url}"
[routes.m]
backend = "fake"
[routes.m.keepalive]
interval = 0.2
"""
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: serving(url), within=20, interval=0.1)
        out: dict = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, url, {"prefill": 1.0, "tokens": 10, "pace": 0.1}, out, "s")
            await wait_until(lambda: len(fake.requests) == 1)  # the stream is in its prefill
            proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    status, raw = out["s"]
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert b": keepalive\n\n" in raw
    assert code == 0
    assert proc.stderr is not None
    log = (await proc.stderr.receive_some(1 << 20)).decode()
    assert "received SIGTERM" in log


async def test_shutdown_delay_fails_readiness_while_still_serving(start_gateway) -> None:
    """Between the signal and the drain, for `shutdown_delay`: /readyz says 503 (a load
    balancer polling it stops sending), and requests are still served; then the drain
    begins and the listener closes."""
    gw = await start_gateway(server={"shutdown_delay": 0.5})
    async with gw.client() as client:
        assert (await client.get("/readyz")).status_code == 200
        gw.shutdown.set()
        await wait_until(lambda: gw.gateway.stopping)
        ready = await client.get("/readyz")
        served = await client.post("/v1/chat/completions", json=CHAT)
        assert not gw.gateway.draining  # the delay has not run out meanwhile
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert served.status_code == 200
    await wait_until(lambda: gw.gateway.draining, within=5)
    await wait_until(lambda: refused(gw.url), interval=0.05)
