"""Teams from the outside: keys, model access, limits and usage on a real gateway served on
port 0 in front of the fake upstream. Each test says which issue point it shows."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from gateway.config import build_config
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.sse import SSEFramer
from gateway.teams.keys import fingerprint, hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI, RequestRecord
from gateway.testing.waiting import wait_until

ALPHA, BETA, ADMIN = new_key(), new_key(), new_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
NO_KEY = {
    "error": {
        "message": "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}
BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()}


@dataclass
class Running:
    url: str
    gateway: Gateway
    shutdown: trio.Event
    stopped: trio.Event

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, timeout=30, headers=bearer(key) if key else None, **kwargs
        )

    async def settled(self) -> None:
        """Every relayed request finished, so its tokens and usage are counted."""
        with trio.fail_after(5):
            await self.gateway.inflight.wait_empty()

    async def stop(self) -> None:
        self.shutdown.set()
        with trio.fail_after(10):
            await self.stopped.wait()


def raw_config(fake_url: str, tmp_path: Path, teams: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"bind": "127.0.0.1:0"},
        "backends": {"fake": {"type": "openai", "url": fake_url}},
        "routes": {
            "chat": {
                "model": "m",
                "aliases": ["m-alias"],
                "backend": "fake",
                "upstream_model": "upstream-m",
                "keepalive": {"interval": 1},
            },
            "secret": {"model": "secret-model", "backend": "fake"},
        },
        "teams": teams,
        "auth": {"admin_keys": [hash_key(ADMIN)]},
        "usage": {"database": str(tmp_path / "usage.sqlite")},
    }


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path) -> Start:
    async def start(teams: dict[str, Any] | None = None, **limits: Any) -> Running:
        if teams is None:
            teams = {
                "alpha": {"keys": [hash_key(ALPHA)], "models": ["m"], "limits": limits},
                "beta": {"keys": [hash_key(BETA)]},
            }
        config = build_config(raw_config(fake.url, tmp_path, teams), environ={})
        shutdown, stopped = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Running]) -> None:
            try:
                async with open_gateway(config) as gw, trio.open_nursery() as inner:
                    binds = await inner.start(partial(serve, gw, shutdown=shutdown))
                    task_status.started(Running(binds[0], gw, shutdown, stopped))
            finally:
                stopped.set()

        return await nursery.start(run)

    return start


def usage_of(req: RequestRecord) -> tuple[int, int]:
    """(prompt, completion) tokens the fake reported in what it sent, 0s if none."""
    prompt = completion = 0
    docs = (
        [e.data for e in SSEFramer().feed(req.sent) if e.data and e.data != "[DONE]"]
        if req.body.get("stream")
        else [req.sent.decode()]
    )
    for doc in docs:
        usage = json.loads(doc).get("usage")
        if usage:
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    return prompt, completion


# 1. 401/403/429 with OpenAI's bodies and headers; the next valid request succeeds; a
#    team's model list shows only its models.


async def test_401_bodies_and_the_next_valid_request(start: Start, fake: FakeOpenAI) -> None:
    gw = await start()
    async with gw.client() as client:
        for headers, expected in [
            ({}, NO_KEY),
            (bearer(ALPHA + "x"), BAD_KEY),
            (bearer(ADMIN), BAD_KEY),  # the admin key is no team key
            ({"x-api-key": "gw-nope"}, BAD_KEY),
            ({"authorization": "Token " + ALPHA}, NO_KEY),
        ]:
            for method, path, body in [
                ("POST", "/v1/chat/completions", CHAT),
                ("GET", "/v1/models", None),
            ]:
                r = await client.request(method, path, json=body, headers=headers)
                assert r.status_code == 401
                assert r.json() == expected
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.headers["content-type"] == "application/json"
                assert r.headers["x-request-id"]
        assert fake.requests == []  # nothing unauthenticated reached the upstream
        r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALPHA))
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": BETA})
        assert r.status_code == 200
    assert len(fake.requests) == 2


async def test_403_and_each_team_sees_its_models(start: Start, fake: FakeOpenAI) -> None:
    gw = await start()
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "model": "secret-model"})
        assert r.status_code == 403
        assert r.json() == {
            "error": {
                "message": "Team alpha does not have access to the model `secret-model`.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_allowed",
            }
        }
        assert "www-authenticate" not in r.headers
        models = (await alpha.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["m", "m-alias"]
        assert (await alpha.get("/v1/models/secret-model")).status_code == 404
        assert (await alpha.get("/v1/models/m-alias")).status_code == 200
        all_models = (await beta.get("/v1/models")).json()
        assert [m["id"] for m in all_models["data"]] == ["m", "m-alias", "secret-model"]
        assert fake.requests == []
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "model": "m-alias"})
        assert r.status_code == 200
        r = await beta.post("/v1/chat/completions", json={**CHAT, "model": "secret-model"})
        assert r.status_code == 200
    assert [q.body["model"] for q in fake.requests] == ["upstream-m", "secret-model"]


@pytest.fixture
def clock() -> MockClock:
    """Real time, plus jumps: lets a test move past a 60 s window at once."""
    return MockClock(rate=1.0)


async def test_429_requests_headers_then_window_passes(
    start: Start, fake: FakeOpenAI, clock: MockClock
) -> None:
    gw = await start(requests_per_minute=2)
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        for remaining in ("1", "0"):
            r = await alpha.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "2"
            assert r.headers["x-ratelimit-remaining-requests"] == remaining
            assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
            assert "x-ratelimit-limit-tokens" not in r.headers  # no token limit set
        async with alpha.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 429
            body = json.loads(await r.aread())
        message = body["error"].pop("message")
        assert body == {"error": {"type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        assert message.startswith(
            "Rate limit reached for team alpha on requests per min (RPM): Limit 2. "
            "Please try again in 5"
        )  # 59.9...s
        assert 59 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert r.headers["content-type"] == "application/json"
        # Another team is untouched, and the limited one is back once the window moves.
        assert (await beta.post("/v1/chat/completions", json=CHAT)).status_code == 200
        clock.jump(int(r.headers["retry-after"]))
        r = await alpha.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-requests"] == "1"  # both left the window
    assert len(fake.requests) == 4


async def test_429_concurrent_streams_then_slot_frees(start: Start, fake: FakeOpenAI) -> None:
    gw = await start(concurrent_streams=1)
    async with gw.client(ALPHA) as alpha:
        async with alpha.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "fake": {"prefill": 30}}
        ) as held:
            assert held.status_code == 200  # early headers; the stream sits in prefill
            await wait_until(lambda: fake.requests, within=5)
            r = await alpha.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == {
                "message": "Rate limit reached for team alpha on concurrent streams: Limit 1. "
                "Please try again in 1s.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            r = await alpha.post("/v1/chat/completions", json=CHAT)  # not a stream
            assert r.status_code == 200
        await gw.settled()  # the held stream was cancelled by leaving its block
        async with alpha.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            assert b"data: [DONE]" in await r.aread()


# 2. A key never appears in logs, error bodies or upstream requests.


async def test_one_team_whose_requests_break_the_upstream_cannot_eject_it_for_everyone(
    start: Start,
) -> None:
    gw = await start()
    breaker = gw.gateway.upstreams["fake"].breaker
    breaking = {**CHAT, "fake": {"fault": "reset_before_headers"}}
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        for _ in range(10):  # far past the 3 failures that eject
            r = await alpha.post("/v1/chat/completions", json=breaking)
            assert r.status_code == 502
        assert breaker.state(trio.current_time()) == "closed"
        assert (await beta.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # Failures that two teams see are the backend's: those eject.
        await alpha.post("/v1/chat/completions", json=breaking)
        await alpha.post("/v1/chat/completions", json=breaking)
        r = await beta.post("/v1/chat/completions", json={**breaking, "model": "secret-model"})
        assert r.status_code == 502
        assert breaker.state(trio.current_time()) == "open"


async def test_keys_never_reach_logs_bodies_or_upstream(
    start: Start, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start(requests_per_minute=4)
    wrong = ALPHA[:-2] + "zz"
    seen: list[str] = []  # every byte a client got back, headers included

    def keep(r: httpx.Response, body: bytes) -> None:
        seen.append("\n".join(f"{k}: {v}" for k, v in r.headers.items()))
        seen.append(body.decode("utf-8", "replace"))

    async with gw.client() as client:
        for headers, body, status in [
            (bearer(ALPHA), {**CHAT, "stream": True}, 200),
            ({"x-api-key": ALPHA}, CHAT, 200),
            (bearer(ALPHA), {**CHAT, "model": "secret-model"}, 403),
            (bearer(wrong), CHAT, 401),
            (basic(ALPHA), CHAT, 200),
            (bearer(ALPHA), {**CHAT, "stream": True, "fake": {"fault": "reset_mid_stream"}}, 200),
            (bearer(ALPHA), CHAT, 429),
            (bearer(ALPHA), {**CHAT, "model": "nope"}, 404),
        ]:
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers={**headers, "x-request-id": "leak-test"},
            ) as r:
                keep(r, await r.aread())
                assert r.status_code == status, (headers, body)
        r = await client.get("/v1/models", headers=bearer(ALPHA))
        keep(r, r.content)
        await gw.settled()

    upstream = [json.dumps(q.headers) + json.dumps(q.body) for q in fake.requests]
    assert len(upstream) == 4
    assert not any("authorization" in q.headers for q in fake.requests)
    logs = [record.getMessage() for record in caplog.records]
    logs += [caplog.text]
    for key in (ALPHA, wrong):
        for name, texts in (("logs", logs), ("responses", seen), ("upstream", upstream)):
            assert not any(key in text for text in texts), f"key found in {name}"
            assert not any(key[3:20] in text for text in texts), f"part of a key in {name}"
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    by_status = [
        (a["status"], a.get("team"), a.get("key_id"))
        for a in access
        if a.get("path", "/v1/chat/completions") == "/v1/chat/completions" or "backend" in a
    ]
    fp = fingerprint(hash_key(ALPHA))
    assert by_status == [
        (200, "alpha", fp),
        (200, "alpha", fp),
        (403, "alpha", fp),
        (401, None, None),
        (200, "alpha", fp),
        (200, "alpha", fp),
        (429, "alpha", fp),
        (404, "alpha", fp),
    ]


# 3. Token limits enforced from the upstream's real usage, on streams and non-streams.


@pytest.mark.parametrize("stream", [False, True])
async def test_token_limit_from_reported_usage(
    start: Start, fake: FakeOpenAI, stream: bool
) -> None:
    gw = await start(tokens_per_minute=30)
    used = 0
    async with gw.client(ALPHA) as alpha:
        for n in (4, 9, 2):  # fake reports 5 prompt + n completion tokens
            body = {**CHAT, "stream": stream, "fake": {"tokens": n}}
            async with alpha.stream("POST", "/v1/chat/completions", json=body) as r:
                raw = await r.aread()
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-tokens"] == "30"
            assert r.headers["x-ratelimit-remaining-tokens"] == str(max(0, 30 - used))
            await gw.settled()
            prompt, completion = usage_of(fake.requests[-1])
            assert (prompt, completion) == (5, n)  # the fake really sent them
            used += prompt + completion
            if stream:
                # The gateway asked for the usage chunk; the client did not, so it is hidden.
                assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
                assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")
        assert used == 9 + 14 + 7
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "tokens"
        assert r.json()["error"]["message"].startswith(
            "Rate limit reached for team alpha on tokens per min (TPM): Limit 30."
        )
        assert r.headers["x-ratelimit-remaining-tokens"] == "0"
        assert 59 <= int(r.headers["retry-after"]) <= 60
    assert len(fake.requests) == 3


async def test_a_client_that_hangs_up_is_charged_an_estimate(
    start: Start, fake: FakeOpenAI
) -> None:
    """The usage chunk never comes when the client leaves mid-stream: the team is charged
    the request's JSON bytes / 4 and one token per data line streamed, not nothing (which
    let a client get around tokens_per_minute by hanging up)."""
    gw = await start(tokens_per_minute=1000)
    body = {**CHAT, "stream": True, "fake": {"tokens": 400, "pace": 0.005}}
    async with gw.client(ALPHA) as alpha:
        async with alpha.stream("POST", "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if '"tok9 "' in line:
                    break  # and hang up
        await gw.settled()
        after = await alpha.post("/v1/chat/completions", json={**CHAT, "fake": {"tokens": 1}})
    [row] = await gw.gateway.teams.usage()
    # The estimate, of the body as the gateway sends it (with its stream_options), and the
    # fake's 5 for the second request.
    sent = {**fake.requests[0].body, "model": CHAT["model"]}
    assert row.prompt_tokens - 5 == len(json.dumps(sent, separators=(",", ":"))) // 4
    streamed = row.completion_tokens - 1  # the second request's one token, reported
    assert 11 <= streamed < 400  # the role chunk and tok0..tok9 at least, never all
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 1000 - (row.total_tokens - 6)


async def test_usage_chunk_passed_on_when_the_client_asked(start: Start, fake: FakeOpenAI) -> None:
    gw = await start(tokens_per_minute=1000)
    async with gw.client(ALPHA) as alpha:
        body = {
            **CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
            "fake": {"tokens": 2},
        }
        async with alpha.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = await r.aread()
        await gw.settled()
        assert raw == fake.requests[-1].sent  # byte for byte, usage chunk included
        assert b'"usage":{"prompt_tokens":5' in raw
        body = {**CHAT, "prompt": "x", "stream": True}
        del body["messages"]
        async with alpha.stream("POST", "/v1/completions", json=body) as r:
            raw = await r.aread()
        await gw.settled()
        assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
        assert b'"usage"' in fake.requests[-1].sent and b'"usage"' not in raw
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 7 - 8)


# 4. Usage survives a restart (SQLite) and matches what the fake upstream reported.


async def test_usage_survives_restart_and_matches_upstream(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    gw = await start()
    scripts = [
        (ALPHA, {"stream": False, "fake": {"tokens": 3}}),
        (ALPHA, {"stream": False, "fake": {"tokens": 4}}),
        (ALPHA, {"stream": True, "fake": {"tokens": 5, "pace": 0.05}}),
        (BETA, {"stream": True, "fake": {"tokens": 6, "fault": "reset_mid_stream"}}),
        (BETA, {"stream": False, "fake": {"tokens": 7}}),
        (BETA, {"stream": False, "model": "secret-model", "fake": {"tokens": 1}}),
    ]
    async with gw.client() as client:
        for key, extra in scripts:
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, **extra}, headers=bearer(key)
            ) as r:
                await r.aread()
    await gw.stop()

    expected: dict[tuple[str, str], dict[str, Any]] = {}
    # In arrival order: a stream's connection may still be finishing its upstream body when
    # the next request starts, which then opens a second connection (the fake lists
    # requests by connection).
    arrived = sorted(fake.requests, key=lambda req: req.received_at)
    for (key, extra), req in zip(scripts, arrived, strict=True):
        team = "alpha" if key == ALPHA else "beta"
        route = "secret" if extra.get("model") == "secret-model" else "chat"
        row = expected.setdefault(
            (team, route), {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
        )
        prompt, completion = usage_of(req)
        row["requests"] += 1
        row["errors"] += int(extra["fake"].get("fault") is not None)
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
    assert expected[("beta", "chat")]["completion_tokens"] == 7  # the reset one reported none

    gw = await start()  # a new gateway on the same database
    async with gw.client() as client:
        assert (await client.get("/admin/usage")).status_code == 401
        assert (await client.get("/admin/usage", headers=bearer(ALPHA))).status_code == 401
        r = await client.get("/admin/usage", headers=bearer(ADMIN))
        assert r.status_code == 200
        rows = r.json()["data"]
        got = {
            (row["team"], row["route"]): {k: row[k] for k in expected[("alpha", "chat")]}
            for row in rows
        }
        assert got == expected
        assert {row["backend"] for row in rows} == {"fake"}
        streamed = next(row for row in rows if row["team"] == "alpha")
        assert streamed["stream_seconds"] >= 0.25  # five deltas 0.05 s apart, and more
        assert all(
            row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"] for row in rows
        )
        r = await client.get("/admin/usage?team=beta&since=1h", headers=bearer(ADMIN))
        assert {row["team"] for row in r.json()["data"]} == {"beta"}
        r = await client.get("/admin/usage?since=2999-01-01", headers=bearer(ADMIN))
        assert r.json()["data"] == []
        r = await client.get("/admin/usage?since=soon", headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["error"]["param"] == "since"
        r = await client.get("/admin/usage?since=99999999999999999999h", headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["error"]["param"] == "since"  # was a 500

    # The CLI reads the same database.
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n'
        '[routes.chat]\nbackend = "fake"\n'
        f'[usage]\ndatabase = "{tmp_path / "usage.sqlite"}"\n'
    )
    result = await trio.to_thread.run_sync(
        partial(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "usage",
                "--config",
                str(config),
                "--json",
                "--team",
                "alpha",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["team"], r["route"], r["requests"], r["completion_tokens"]) for r in lines] == [
        ("alpha", "chat", 3, 12)
    ]
    result = await trio.to_thread.run_sync(
        partial(
            subprocess.run,
            [sys.executable, "-m", "gateway", "usage", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    table = result.stdout.splitlines()
    assert table[0].split() == [
        "team",
        "route",
        "backend",
        "requests",
        "errors",
        "prompt",
        "completion",
        "total",
        "stream_s",
    ]
    assert [line.split()[:4] for line in table[1:]] == [
        ["alpha", "chat", "fake", "3"],
        ["beta", "chat", "fake", "2"],
        ["beta", "secret", "fake", "1"],
    ]


# The status page is the admin's once teams exist.


async def test_status_page_needs_the_admin_key(start: Start) -> None:
    gw = await start()
    async with gw.client() as client:
        for headers in ({}, bearer(ALPHA), basic(ALPHA)):
            r = await client.get("/", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == 'Basic realm="trio-gateway", charset="UTF-8"'
            assert ALPHA not in r.text
            assert (await client.get("/status/events", headers=headers)).status_code == 401
        r = await client.get("/", headers=basic(ADMIN))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert (await client.get("/", headers=bearer(ADMIN))).status_code == 200
        async with client.stream("GET", "/status/events", headers=basic(ADMIN)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no key
            assert (await client.get(path)).status_code == 200


async def test_auth_off_is_announced(
    nursery: trio.Nursery, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    raw: dict[str, Any] = {
        "backends": {"fake": {"type": "openai", "url": fake.url}},
        "routes": {"m": {"backend": "fake"}},
    }
    async with open_gateway(build_config(raw, environ={})) as gw:
        assert gw.teams is not None and not gw.teams.enabled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("AUTH IS OFF") for w in warnings)


@pytest.mark.chromium
async def test_status_page_in_chromium_with_the_admin_password(start: Start) -> None:
    """A browser asked for the admin key (HTTP Basic) sends it again with the page's own
    EventSource request, so the live feed connects."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_status_page import CHROMIUM, CHROMIUM_ARGS

    gw = await start()

    def browse(url: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                seen["without"] = browser.new_context().request.get(url).status
                context = browser.new_context(
                    http_credentials={"username": "ops", "password": ADMIN}
                )
                page = context.new_page()
                response = page.goto(url)
                seen["with"] = response.status if response else None
                page.wait_for_selector("#conn.ready", timeout=30_000)
                page.wait_for_selector('#routes tr[data-route="chat"]', timeout=30_000)
                seen["ready"] = True
            finally:
                browser.close()
        return seen

    seen = await trio.to_thread.run_sync(browse, gw.url)
    assert seen == {"without": 401, "with": 200, "ready": True}
