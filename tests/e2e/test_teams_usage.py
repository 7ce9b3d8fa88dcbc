"""Teams from the outside: usage on a real gateway served on port 0 in front of the fake
upstream. Token limits are enforced from the tokens the upstream reports (or an estimate
where a client hangs up first), and the usage kept in SQLite survives a restart, matches
what the fake reported and reads the same from /admin/usage and `gateway usage`. Each test
says which issue point it shows."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI, RequestRecord

from .teams_gateway import (
    ADMIN,
    ALPHA,
    BETA,
    CHAT,
    Start,
    bearer,
    start,  # noqa: F401  (fixture)
)


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
