"""Metrics, access logs and trace headers, checked from the outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

Samples = dict[tuple[str, frozenset], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_scripted_run_gives_exact_counters(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1})
    ok = {"route": "chat", "backend": "fake", "endpoint": "chat/completions", "status": "200"}
    async with gw.client() as client:
        before = await scrape(client)
        for _ in range(2):
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": {"tokens": 3}}
            ) as r:
                await r.aread()
        await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "fake": {"tokens": 6, "fault": "reset_mid_stream"}},
        ) as r:
            await r.aread()
        assert (
            await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        ).status_code == 404
        with trio.move_on_after(0.35):  # hang up during a silent prefill
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": {"prefill": 5}}
            ) as r:
                await r.aread()
        with trio.fail_after(2):
            await gw.gateway.inflight.wait_empty()
        after = await scrape(client)

    requests = "trio_gateway_requests_total"
    assert delta(before, after, requests, **ok, outcome="completed") == 3
    assert delta(before, after, requests, **ok, outcome="upstream_error") == 1
    assert delta(before, after, requests, **ok, outcome="client_gone") == 1
    assert (
        delta(
            before,
            after,
            requests,
            route="",
            backend="",
            endpoint="chat/completions",
            status="404",
            outcome="rejected",
        )
        == 1
    )
    assert (
        delta(before, after, "trio_gateway_client_disconnects_total", route="chat", phase="prefill")
        == 1
    )
    assert (
        delta(
            before, after, "trio_gateway_upstream_cancellations_total", route="chat", backend="fake"
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "trio_gateway_tokens_total",
            route="chat",
            backend="fake",
            kind="completion",
        )
        == 9
    )  # 3 + 3 streamed, 3 non-streamed
    assert (
        delta(
            before, after, "trio_gateway_tokens_total", route="chat", backend="fake", kind="prompt"
        )
        == 15
    )
    assert after[("trio_gateway_streams_active", frozenset({("route", "chat")}))] == 0
    assert (
        delta(
            before,
            after,
            "trio_gateway_upstream_first_byte_seconds_count",
            route="chat",
            backend="fake",
        )
        == 4
    )  # the disconnected one never got a byte
    assert (
        delta(before, after, "trio_gateway_first_token_seconds_count", route="chat", backend="fake")
        == 3
    )
    assert delta(before, after, "trio_gateway_overhead_seconds_count", route="chat") == 5
    assert after[("trio_gateway_backend_ready", frozenset({("backend", "fake")}))] == 1
    assert after[("trio_gateway_queue_depth", frozenset({("backend", "fake")}))] == 0


async def test_heartbeat_counter_equals_heartbeats_received(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1})
    received = 0
    async with gw.client() as client:
        before = await scrape(client)
        for script in ({"prefill": 0.55, "tokens": 2}, {"tokens": 4, "gap_at": 2, "gap": 0.35}):
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": script}
            ) as r:
                raw = await r.aread()
            received += sum(1 for e in SSEFramer().feed(raw) if e.comments == ("keepalive",))
        after = await scrape(client)
    assert received >= 6
    assert delta(before, after, "trio_gateway_heartbeats_total", route="chat") == received


async def test_label_cardinality_is_fixed_under_unknown_models(start_gateway) -> None:
    gw = await start_gateway()
    limits = httpx.Limits(max_connections=50)
    async with gw.client(limits=limits) as client:
        await client.post("/v1/chat/completions", json={**CHAT, "model": "warm-up"})
        await scrape(client)  # so the scrape's own series exists in the baseline
        before = set(await scrape(client))

        async def send(i: int) -> None:
            r = await client.post("/v1/chat/completions", json={**CHAT, "model": f"unknown-{i}"})
            assert r.status_code == 404

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(send, i)
        after_samples = await scrape(client)
    assert set(after_samples) == before
    assert not any("unknown-" in str(key) for key in after_samples)


async def test_traceparent_passed_upstream_and_echoed(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with gw.client() as client:
        streamed = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": given}
        )
        minted = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": False},
            headers={"traceparent": "garbage", "x-request-id": "a" * 32},
        )
        local = await client.get("/v1/models", headers={"traceparent": given})
    assert streamed.headers["traceparent"] == given
    assert fake.requests[0].headers["traceparent"] == given
    assert minted.headers["traceparent"].startswith("00-" + "a" * 32 + "-")
    assert fake.requests[1].headers["traceparent"] == minted.headers["traceparent"]
    assert local.headers["traceparent"] == given


async def test_access_log_json_lines_without_secrets(fake: FakeOpenAI, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nbind = "127.0.0.1:{port}"\n'
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n'
        'api_key = { env = "OBS_TEST_UPSTREAM_KEY" }\n'
        '[routes.m]\nbackend = "fake"\n[routes.m.keepalive]\ninterval = 0.1\n'
    )
    upstream_secret = "sk-upstream-secret-4242"
    client_secret = "sk-client-secret-9191"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-format", "json"],
        stderr=subprocess.PIPE,
        env={**os.environ, "OBS_TEST_UPSTREAM_KEY": upstream_secret},
    )
    url = f"http://127.0.0.1:{port}"
    output = bytearray()

    async def drain_stderr() -> None:
        assert proc.stderr is not None
        async for chunk in proc.stderr:
            output.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_stderr)
        headers = {"authorization": f"Bearer {client_secret}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
            with trio.fail_after(20):
                while True:
                    try:
                        await client.get("/healthz")
                        break
                    except httpx.ConnectError:
                        await trio.sleep(0.1)
            await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "fake": {"prefill": 0.3}}
            ) as r:
                await r.aread()
            await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            await client.post("/v1/chat/completions", content=b"{broken")
        assert fake.requests[0].headers["authorization"] == f"Bearer {upstream_secret}"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
    text = output.decode()
    assert upstream_secret not in text and client_secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    access = [line for line in lines if "request_id" in line]
    # A line is written as its request ends: the stream's may come after the next request's,
    # which the client sent as soon as it had read the stream's last event.
    assert sorted(a.get("status") for a in access) == [200, 200, 200, 400, 404]
    (stream,) = [a for a in access if a.get("stream") is True]
    (rejected,) = [a for a in access if a.get("status") == 404]
    assert stream["stream"] is True and stream["outcome"] == "completed"
    assert stream["heartbeats"] >= 2 and stream["ttft_ms"] >= 300
    for key in (
        "request_id",
        "route",
        "backend",
        "status",
        "ttft_ms",
        "upstream_ms",
        "queue_ms",
        "duration_ms",
        "bytes",
        "heartbeats",
        "outcome",
        "attempts",
    ):
        assert key in stream
    assert stream["route"] == "m" and stream["backend"] == "fake"
    assert rejected["outcome"] == "rejected" and rejected["model"] == "nope"


async def test_access_log_lists_each_attempt_once(start_gateway, caplog) -> None:
    """An attempt whose headers went out and which then broke is one attempt: one entry,
    with how it ended — not ``ok`` for its headers and then its failure."""
    gw = await start_gateway(keepalive={"interval": 0.1}, timeouts={"idle": 0.5})
    caplog.set_level("INFO", logger="gateway.access")
    scripts = {
        "broken": {"fault": "reset_mid_stream", "tokens": 6},
        "stalled": {"fault": "stall", "tokens": 6},
        "whole": {"tokens": 2},
    }
    async with gw.client() as client:
        for name, script in scripts.items():
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json={**CHAT, "fake": script},
                headers={"x-request-id": f"attempts-{name}"},
            ) as r:
                await r.aread()
                assert r.status_code == 200
                # The header went out with the headers, when the attempt was still fine.
                assert r.headers["x-gateway-attempts"] == "fake=ok"
    with trio.fail_after(2):
        await gw.gateway.inflight.wait_empty()
    lines = {
        line["request_id"]: line
        for line in (
            json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"
        )
        if str(line.get("request_id", "")).startswith("attempts-")
    }
    assert lines["attempts-broken"]["attempts"] == ["fake=502:upstream_protocol_error"]
    assert lines["attempts-broken"]["outcome"] == "upstream_error"
    assert lines["attempts-stalled"]["attempts"] == ["fake=504:upstream_timeout"]
    assert lines["attempts-stalled"]["outcome"] == "timeout"
    assert lines["attempts-whole"]["attempts"] == ["fake=ok"]


async def test_late_errors_are_counted_by_form(start_gateway) -> None:
    """Errors told after a 200 was committed: as an SSE error event in a stream, or as an
    error object cut short after whitespace keepalive. An error with a real status is not
    one of them."""
    gw = await start_gateway(keepalive={"interval": 0.05, "non_stream": "whitespace"})
    late = "trio_gateway_late_errors_total"
    labels = {"route": "chat", "backend": "fake"}
    async with gw.client() as client:
        before = await scrape(client)
        with trio.fail_after(5):
            async with client.stream(  # 200 committed by whitespace, then the upstream's 500
                "POST",
                "/v1/chat/completions",
                json={**CHAT, "stream": False, "fake": {"headers_delay": 0.3, "status": 500}},
            ) as r:
                with pytest.raises(httpx.RemoteProtocolError):  # the cut a client sees
                    await r.aread()
            async with client.stream(  # a stream broken after its first events
                "POST",
                "/v1/chat/completions",
                json={**CHAT, "fake": {"tokens": 6, "fault": "reset_mid_stream"}},
            ) as r:
                await r.aread()
            failed_early = await client.post(  # before the first space: a real status
                "/v1/chat/completions",
                json={**CHAT, "stream": False, "fake": {"status": 500}},
            )
            assert failed_early.status_code == 500
            await gw.gateway.inflight.wait_empty()
        after = await scrape(client)
    assert delta(before, after, late, **labels, form="cut_body") == 1
    assert delta(before, after, late, **labels, form="event") == 1
    # The request counter says the same: a 200 whose outcome is an upstream error.
    ok = {**labels, "endpoint": "chat/completions", "status": "200"}
    assert delta(before, after, "trio_gateway_requests_total", **ok, outcome="upstream_error") == 2


async def test_a_route_with_one_target_counts_no_failover(start_gateway) -> None:
    """A 503 from the only target is that request's answer; there was no next target to
    fail over to, so none is counted (every 5xx of a one-target route read as one)."""
    gw = await start_gateway(keepalive={"early_headers": False})
    async with gw.client() as client:
        before = await scrape(client)
        r = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 503}})
        after = await scrape(client)
    assert r.status_code == 503
    assert delta(before, after, "trio_gateway_failovers_total", route="chat", backend="fake") == 0


async def test_nonsense_usage_from_an_upstream_is_not_counted_and_frees_the_request(
    start_gateway,
) -> None:
    """A negative (or 400-digit) token count is no count: it used to break the token
    counters, and with them everything after them at the request's end."""
    gw = await start_gateway()
    usage = '{"usage": {"prompt_tokens": -5, "completion_tokens": 1%s}}' % ("0" * 400)
    chunks = [
        'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n',
        f"data: {usage}\n\n",
        "data: [DONE]\n\n",
    ]
    async with gw.client() as client:
        before = await scrape(client)
        r = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"chunks": chunks}})
        await gw.gateway.inflight.wait_empty()
        after = await scrape(client)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    labels = {"route": "chat", "backend": "fake", "endpoint": "chat/completions", "status": "200"}
    assert delta(before, after, "trio_gateway_requests_total", **labels, outcome="completed") == 1
    assert gw.gateway.upstreams["fake"].users == 0  # the request gave its backend back
