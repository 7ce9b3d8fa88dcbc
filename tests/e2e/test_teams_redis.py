"""Limits shared through a real ``redis-server`` (Debian's; the ``dev`` script installs it):
the Lua admission against the server, and two real ``gateway serve`` processes enforcing
one requests-per-minute limit between them. Also the ``gateway keys`` commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.teams.keys import fingerprint, hash_key, is_hash, new_key
from gateway.teams.limits import Limits
from gateway.teams.redis_state import open_redis_state
from gateway.teams.resp import RedisClient
from gateway.testing.fake_openai import FakeOpenAI
from tests.conftest import serve_config

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"ended before {marker!r}: {seen.decode(errors='replace')}")
        seen.extend(chunk)


@pytest.fixture
async def redis_url(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = bytearray()
    with trio.fail_after(20):
        await read_until(proc.stdout, b"Ready to accept connections", seen)

    async def drain() -> None:
        assert proc.stdout is not None
        async for _ in proc.stdout:
            pass

    nursery.start_soon(drain)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    with trio.fail_after(10):
        await proc.wait()


async def test_lua_admission_is_atomic_under_concurrency(redis_url: str) -> None:
    limits = Limits(requests_per_minute=10)
    allowed = refused = 0
    async with open_redis_state(redis_url, prefix="t", stream_lease=60) as state:

        async def one(i: int) -> None:
            nonlocal allowed, refused
            decision, ticket = await state.admit("alpha", limits, id=f"r{i}", stream=False)
            if ticket is None:
                refused += 1
                assert decision.exceeded == "requests" and 59 < decision.retry_after <= 60
                assert decision.headers["x-ratelimit-remaining-requests"] == "0"
            else:
                allowed += 1

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i)
    assert (allowed, refused) == (10, 50)


async def test_tokens_streams_and_script_reload(redis_url: str) -> None:
    limits = Limits(tokens_per_minute=20, concurrent_streams=1)
    async with open_redis_state(redis_url, prefix="t", stream_lease=60) as state:
        decision, first = await state.admit("alpha", limits, id="a", stream=True)
        assert first is not None
        assert decision.headers["x-ratelimit-remaining-tokens"] == "20"
        decision, none = await state.admit("alpha", limits, id="b", stream=True)
        assert none is None and decision.exceeded == "concurrent_streams"
        first.release(25)  # over the token limit
    client = RedisClient(redis_url)
    try:
        assert await client.call("SCRIPT", "FLUSH") == b"OK"  # the next call gets NOSCRIPT
    finally:
        await client.aclose()
    async with open_redis_state(redis_url, prefix="t", stream_lease=60) as state:
        decision, none = await state.admit("alpha", limits, id="c", stream=True)
        assert none is None and decision.exceeded == "tokens"  # the stream slot is free
        assert 59 < decision.retry_after <= 60
        assert decision.headers["x-ratelimit-remaining-tokens"] == "0"
        decision, other = await state.admit("beta", limits, id="d", stream=True)
        assert other is not None  # teams are apart


async def test_usage_counters_shared_in_redis(redis_url: str) -> None:
    from gateway.teams.usage import UsageRecord

    def rec(at: float, team: str, backend: str = "b", **kw: Any) -> UsageRecord:
        fields: dict[str, Any] = {
            "route": "chat",
            "error": False,
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "stream_seconds": 0.0,
        }
        return UsageRecord(at=at, team=team, backend=backend, **{**fields, **kw})

    async with (
        open_redis_state(redis_url, prefix="u", stream_lease=60) as one,
        open_redis_state(redis_url, prefix="u", stream_lease=60) as two,
    ):
        one.record_usage(rec(600, "a", stream_seconds=1.25))
        two.record_usage(rec(610, "a", error=True))
        two.record_usage(rec(7200, "a", completion_tokens=10))
        one.record_usage(rec(700, "b", backend="c"))
    async with open_redis_state(redis_url, prefix="u", stream_lease=60) as reader:
        rows = await reader.query_usage()
        assert [
            (
                r.team,
                r.backend,
                r.requests,
                r.errors,
                r.prompt_tokens,
                r.completion_tokens,
                r.stream_seconds,
            )
            for r in rows
        ] == [("a", "b", 3, 1, 15, 16, 1.25), ("b", "c", 1, 0, 5, 3, 0.0)]
        assert [(r.team, r.requests) for r in await reader.query_usage(team="b")] == [("b", 1)]
        assert [(r.team, r.requests) for r in await reader.query_usage(since=660)] == [
            ("a", 1),
            ("b", 1),
        ]


async def test_unreachable_redis_admits_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    async with open_redis_state(url, prefix="t", stream_lease=60) as state:
        decision, ticket = await state.admit(
            "alpha", Limits(requests_per_minute=1), id="x", stream=False
        )
    assert ticket is not None and decision.allowed
    assert any("redis unavailable, limits not enforced" in r.getMessage() for r in caplog.records)


# 5. Two gateway processes, one redis-server, one shared requests-per-minute limit.


async def start_gateway_process(
    nursery: trio.Nursery, config: Path, output: bytearray
) -> tuple[trio.Process, str]:
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    assert proc.stderr is not None
    with trio.fail_after(30):
        await read_until(proc.stderr, b"serving on", output)

    async def drain() -> None:
        assert proc.stderr is not None
        async for chunk in proc.stderr:
            output.extend(chunk)

    nursery.start_soon(drain)
    return proc, f"http://127.0.0.1:{port}"


async def test_two_processes_share_one_rpm_limit(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    key = new_key()
    limit, attempts = 7, 40
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n'
        '[routes.chat]\nmodel = "m"\nbackend = "fake"\n'
        f'[teams.alpha]\nkeys = ["{hash_key(key)}"]\n'
        f"[teams.alpha.limits]\nrequests_per_minute = {limit}\n"
        f'[state]\nredis = "{redis_url}"\nprefix = "two-procs"\n'
        f'[usage]\ndatabase = "{tmp_path / "usage.sqlite"}"\n'
    )
    outputs = [bytearray(), bytearray()]
    statuses: dict[int, list[int]] = {0: [], 1: []}
    async with trio.open_nursery() as nursery:
        procs = [await start_gateway_process(nursery, config, out) for out in outputs]
        async with httpx.AsyncClient(
            timeout=30,
            headers={"authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=100),
        ) as client:

            async def send(i: int) -> None:
                which = i % 2
                r = await client.post(f"{procs[which][1]}/v1/chat/completions", json=CHAT)
                statuses[which].append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "rate_limit_exceeded"
                    assert r.headers["x-ratelimit-remaining-requests"] == "0"
                    assert 1 <= int(r.headers["retry-after"]) <= 60

            async with trio.open_nursery() as burst:
                for i in range(attempts):
                    burst.start_soon(send, i)
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            for proc, _ in procs:
                await proc.wait()
        nursery.cancel_scope.cancel()

    # Usage from both processes, shared in redis, read by the CLI.
    result = await trio.to_thread.run_sync(
        partial(gateway_cli, "usage", "--config", str(config), "--json")
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [
        (
            r["team"],
            r["route"],
            r["backend"],
            r["requests"],
            r["prompt_tokens"],
            r["completion_tokens"],
        )
        for r in rows
    ] == [("alpha", "chat", "fake", limit, 5 * limit, 3 * limit)]

    every = statuses[0] + statuses[1]
    assert len(every) == attempts
    assert every.count(200) == limit  # across both processes, never more than the limit
    assert every.count(429) == attempts - limit
    assert len(fake.requests) == limit
    assert 429 in statuses[0] and 429 in statuses[1]  # each process saw the shared count
    for out in outputs:
        text = out.decode()
        assert key not in text
        assert "auth on: 1 team(s)" in text and "limits in redis" in text
        access = [json.loads(line) for line in text.splitlines() if '"request_id"' in line]
        assert {a["team"] for a in access} == {"alpha"}
        assert {a["key_id"] for a in access} == {fingerprint(hash_key(key))}


# The key commands.


def gateway_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_keys_new_and_hash_commands() -> None:
    made = await trio.to_thread.run_sync(partial(gateway_cli, "keys", "new", "--team", "alpha"))
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    key = lines[0].rsplit(" ", 1)[1]
    assert key.startswith("gw-") and "[teams.alpha]" in lines[1]
    assert lines[2] == f'keys = ["{hash_key(key)}"]'
    again = await trio.to_thread.run_sync(partial(gateway_cli, "keys", "new", "--team", "alpha"))
    assert key not in again.stdout
    hashed = await trio.to_thread.run_sync(partial(gateway_cli, "keys", "hash", stdin=key + "\n"))
    assert hashed.returncode == 0 and hashed.stdout.strip() == hash_key(key)
    assert is_hash(hashed.stdout.strip())
    empty = await trio.to_thread.run_sync(partial(gateway_cli, "keys", "hash", stdin=""))
    assert empty.returncode == 2


async def test_a_replica_reads_and_continues_another_replicas_response(
    nursery: trio.Nursery, redis_url: str, tmp_path: Path
) -> None:
    """Two gateways on one redis-server: a response stored through one is retrieved and
    continued (previous_response_id) through the other, and deleted there."""
    import httpx

    from gateway.config import build_config
    from gateway.testing.fake_openai import FakeOpenAI

    fake = FakeOpenAI()
    await nursery.start(fake.serve)
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"fake": {"type": "openai", "url": fake.url}},
            "routes": {"m": {"backend": "fake"}},
            "state": {"redis": redis_url, "prefix": "replicas"},
        },
        environ={},
    )
    one = (await serve_config(nursery, config)).url
    two = (await serve_config(nursery, config)).url
    async with httpx.AsyncClient(timeout=10) as client:
        made = await client.post(f"{one}/v1/responses", json={"model": "m", "input": "Hi"})
        rid = made.json()["id"]
        read = await client.get(f"{two}/v1/responses/{rid}")
        continued = await client.post(
            f"{two}/v1/responses",
            json={"model": "m", "input": "And?", "previous_response_id": rid},
        )
        deleted = await client.delete(f"{two}/v1/responses/{rid}")
        gone = await client.get(f"{one}/v1/responses/{rid}")
    assert read.status_code == 200 and read.json() == made.json()
    assert continued.status_code == 200
    said = [m["content"] for m in fake.requests[-1].body["messages"]]
    assert said == ["Hi", "tok0 tok1 tok2 ", "And?"]
    assert deleted.status_code == 200 and gone.status_code == 404
