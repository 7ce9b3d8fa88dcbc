"""The stores behind teams failing under a running gateway (issue 17, items 8 and 9).

8. A Redis that accepts connections and never answers (a real TCP server on loopback):
   every call is bounded, the wait for a pooled connection included, and after a few calls
   in a row without an answer the circuit skips Redis at once, with one log line per
   outage. Requests are admitted throughout (fail open).
9. The SQLite usage database made unwritable or emptied under a running gateway: records
   are lost (logged once, counted), the gateway lives on and writes again once it can.
   (Start-up and ``gateway check`` with an unusable path: tests/test_cli.py.)"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from gateway.config import build_config
from gateway.server import serve
from gateway.service import open_gateway
from gateway.teams.keys import hash_key, new_key
from gateway.teams.limits import Limits
from gateway.teams.redis_state import RedisState, open_redis_state
from gateway.teams.resp import Incomplete, ReplyParser
from gateway.teams.usage import UsageRecord, open_usage_recorder
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until

KEY = new_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# What the admission script answers for an empty window: nothing exceeded, all zero.
_ADMIT_REPLY = b"*8\r\n$0\r\n\r\n" + b"$1\r\n0\r\n" * 7


@dataclass
class FakeRedis:
    """A Redis on loopback that reads commands and, while ``answering`` is false, never
    answers them. Answering, it says what the gateway's scripts say for empty windows."""

    answering: bool = False
    port: int = 0
    accepted: int = 0
    commands: list[list[Any]] = field(default_factory=list)
    open: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.open += 1
        parser = ReplyParser()
        try:
            async for data in stream:
                parser.feed(data)
                while (command := parser.next_reply()) is not Incomplete:
                    assert isinstance(command, list)
                    self.commands.append(command)
                    if self.answering:
                        admit = command[0] in (b"EVALSHA", b"EVAL") and command[2] == b"3"
                        await stream.send_all(_ADMIT_REPLY if admit else b":1\r\n")
        except trio.BrokenResourceError:
            pass
        finally:
            self.open -= 1


@pytest.fixture
async def redis(nursery: trio.Nursery) -> FakeRedis:
    fake = FakeRedis()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def state(redis: FakeRedis) -> AsyncIterator[RedisState]:
    async with open_redis_state(
        redis.url, prefix="t", stream_lease=60, call_timeout=2, threshold=3, cooldown=5
    ) as state:
        yield state


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.teams" and r.getMessage().startswith("redis ")
    ]


async def admit_timed(state: RedisState, i: int, took: list[float]) -> None:
    start = trio.current_time()
    decision, ticket = await state.admit(
        "alpha", Limits(requests_per_minute=1), id=f"r{i}", stream=False
    )
    assert decision.allowed and ticket is not None  # fail open
    took.append(trio.current_time() - start)


async def test_stalled_redis_bounds_every_call_then_the_circuit_skips_it(
    autojump_clock: MockClock,
    redis: FakeRedis,
    state: RedisState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 40 at once through 8 pooled connections: each is bounded by the 2 s call timeout,
    # the wait for a connection included (before: the 5th wave waited 5 x 5 s = 25 s).
    took: list[float] = []
    async with trio.open_nursery() as burst:
        for i in range(40):
            burst.start_soon(admit_timed, state, i, took)
    assert len(took) == 40 and max(took) == pytest.approx(2.0)
    assert state.failed_calls == 40
    await wait_until(lambda: redis.open == 0)  # every stalled connection was closed
    accepted, commands = redis.accepted, len(redis.commands)
    assert 3 <= accepted <= 40 and commands == accepted

    # The circuit is open: every call returns at once, and none reaches the server.
    took.clear()
    async with trio.open_nursery() as burst:
        for i in range(40):
            burst.start_soon(admit_timed, state, i, took)
    assert max(took) == 0
    assert state.skipped_calls == 40 and state.failed_calls == 40
    assert (redis.accepted, len(redis.commands)) == (accepted, commands)

    # After the cooldown one probe goes (the server sees it: it is the next connection,
    # so none came before it), fails, and opens the circuit again.
    await trio.sleep(5)
    async with trio.open_nursery() as burst:
        for i in range(10):
            burst.start_soon(admit_timed, state, i, took)
    await wait_until(lambda: len(redis.commands) == commands + 1)
    assert redis.accepted == accepted + 1
    assert state.failed_calls == 41 and state.skipped_calls == 49
    took.clear()
    await admit_timed(state, 99, took)
    assert took == [0] and state.skipped_calls == 50

    # Redis is back: the next probe closes the circuit and limits apply again.
    redis.answering = True
    await trio.sleep(5)
    await admit_timed(state, 100, took)
    await admit_timed(state, 101, took)
    assert redis.accepted == accepted + 2  # the probe's connection is kept and reused
    assert len(redis.commands) == commands + 3

    # One line when the outage began, one when it ended: not one per request.
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("redis unavailable, limits not enforced (requests admitted)")
    assert "no answer within 2 s" in lines[0]
    assert lines[1].startswith("redis answers again after 12.")
    assert "(41 call(s) got no answer, 50 skipped); limits enforced" in lines[1]


async def test_a_cancelled_probe_lets_the_next_call_probe(
    autojump_clock: MockClock, redis: FakeRedis, state: RedisState
) -> None:
    took: list[float] = []
    for i in range(3):
        await admit_timed(state, i, took)
    await trio.sleep(5)
    with trio.move_on_after(1):  # the client went away during the probe
        await admit_timed(state, 3, took)
    assert len(redis.commands) == 4
    redis.answering = True
    await admit_timed(state, 4, took)  # not skipped: it is the probe now
    assert len(redis.commands) == 5 and state.skipped_calls == 0


async def test_queued_updates_do_not_hold_shutdown_while_redis_is_out(
    autojump_clock: MockClock, redis: FakeRedis
) -> None:
    start = trio.current_time()
    async with open_redis_state(
        redis.url, prefix="t", stream_lease=60, call_timeout=2, threshold=3, cooldown=5
    ) as state:
        tickets = []
        for i in range(3):
            _, ticket = await state.admit("alpha", Limits(), id=f"s{i}", stream=True)
            assert ticket is not None
            tickets.append(ticket)
        for ticket in tickets * 300:  # 900 updates queued for the writer
            state.finish(ticket, 10)
    # Three calls timed out (the admissions); the rest were skipped at once.
    assert trio.current_time() - start == pytest.approx(6.0)
    assert state.skipped_calls == 900


# Through a served gateway, on the real clock: a short Redis timeout keeps the test fast.


async def test_gateway_answers_promptly_while_redis_stalls(
    nursery: trio.Nursery,
    fake: FakeOpenAI,
    redis: FakeRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout = 0.3
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"fake": {"type": "openai", "url": fake.url}},
            "routes": {"chat": {"model": "m", "backend": "fake"}},
            "teams": {"alpha": {"keys": [hash_key(KEY)], "limits": {"requests_per_minute": 1}}},
            "state": {"redis": redis.url, "timeout": timeout},
            "usage": {"database": str(tmp_path / "usage.sqlite")},
        },
        environ={},
    )
    shutdown = trio.Event()
    shared: RedisState | None = None

    async def run(task_status: trio.TaskStatus[str]) -> None:
        nonlocal shared
        async with open_gateway(config) as gw, trio.open_nursery() as inner:
            shared = gw.teams.shared if gw.teams is not None else None
            binds = await inner.start(partial(serve, gw, shutdown=shutdown))
            task_status.started(binds[0])

    url: str = await nursery.start(run)
    took: list[float] = []
    statuses: list[int] = []
    async with httpx.AsyncClient(
        base_url=url,
        timeout=30,
        headers={"authorization": f"Bearer {KEY}"},
        limits=httpx.Limits(max_connections=100),
    ) as client:

        async def send() -> None:
            start = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=CHAT)
            took.append(time.perf_counter() - start)
            statuses.append(r.status_code)

        async def wave(n: int) -> None:
            took.clear()
            async with trio.open_nursery() as burst:
                for _ in range(n):
                    burst.start_soon(send)

        await wave(32)  # 4 pools full: before, the last waited 4 timeouts
        assert statuses == [200] * 32  # admitted though the limit is 1 a minute
        first = max(took)
        assert first < timeout + 0.5, took
        # Each admission got no answer or, once the circuit opened (after 3), was skipped:
        # how many were already waiting on redis by then depends on the machine's speed.
        assert shared is not None and shared.failed_calls >= 3
        assert shared.failed_calls + shared.skipped_calls >= 32
        failed, skipped = shared.failed_calls, shared.skipped_calls
        seen = (redis.accepted, len(redis.commands))
        await wave(32)
        assert statuses == [200] * 64
        # The circuit is open: no request waits on redis, none reaches it.
        assert sorted(took)[16] < timeout, took
        assert shared.skipped_calls >= skipped + 32 and shared.failed_calls == failed
        assert (redis.accepted, len(redis.commands)) == seen
        shutdown.set()
    lines = outage_lines(caplog)
    assert len(lines) == 1 and "no answer within 0.3 s" in lines[0], lines
    logging.getLogger("test").info("first wave max %.3f s, second %.3f s", first, max(took))


# 9. The SQLite usage database breaking under a running gateway.


def usage_record(team: str) -> UsageRecord:
    return UsageRecord(600, team, "chat", "fake", False, 5, 3, 0.0)


async def test_usage_writer_survives_a_database_that_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.sqlite"
    journal = tmp_path / "usage.sqlite-journal"
    async with open_usage_recorder(path) as recorder:
        recorder.record(usage_record("a"))
        await recorder.flush()
        journal.mkdir()  # the rollback journal cannot be made: every write fails
        for _ in range(3):
            recorder.record(usage_record("lost"))
            await recorder.flush()
        assert recorder.failed_records == 3
        journal.rmdir()
        recorder.record(usage_record("b"))
        await recorder.flush()
        os.truncate(path, 0)  # the file emptied under the open connection
        recorder.record(usage_record("lost"))
        await recorder.flush()
        recorder.record(usage_record("c"))  # reopened first: the table is made again
        await recorder.flush()
        assert recorder.failed_records == 4
        assert [(r.team, r.requests) for r in await recorder.query()] == [("c", 1)]
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.teams"]
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"usage database {path} cannot be written, usage records")
    assert lines[1].startswith(f"usage database {path} written again after ")
    assert lines[1].endswith("; 3 usage record(s) lost")
    assert "no such table: usage" in lines[2]
    assert lines[3].endswith("; 1 usage record(s) lost")


async def test_served_gateway_outlives_its_usage_files_being_broken(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """WAL's -shm index is memory-mapped: truncating it under a running gateway killed the
    process with SIGBUS and no log line. Now no file is mapped, and a database that cannot
    be written costs usage records (logged once, counted), never the gateway."""
    database = tmp_path / "usage.sqlite"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n'
        '[routes.chat]\nmodel = "m"\nbackend = "fake"\n'
        f'[teams.alpha]\nkeys = ["{hash_key(KEY)}"]\n'
        f'[usage]\ndatabase = "{database}"\n'
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    output = bytearray()
    proc = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
            *("--bind", f"127.0.0.1:{port}", "--log-format", "json"),
        ],
        stderr=subprocess.PIPE,
    )

    def requests_in_database() -> int:
        db = sqlite3.connect(database, timeout=5)
        try:
            return int(db.execute("SELECT COALESCE(SUM(requests), 0) FROM usage").fetchone()[0])
        finally:
            db.close()

    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            assert proc.stderr is not None
            async for chunk in proc.stderr:
                output.extend(chunk)

        nursery.start_soon(drain)
        try:
            await wait_until(lambda: b"serving on" in output, within=30)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                timeout=30,
                headers={"authorization": f"Bearer {KEY}"},
            ) as client:

                async def chat() -> None:
                    r = await client.post("/v1/chat/completions", json=CHAT)
                    assert r.status_code == 200

                await chat()
                await wait_until(lambda: requests_in_database() == 1)
                for name in ("usage.sqlite-shm", "usage.sqlite-wal"):
                    mapped = tmp_path / name
                    if mapped.exists():  # what killed it before
                        os.truncate(mapped, 0)
                journal = tmp_path / "usage.sqlite-journal"
                journal.mkdir()
                for _ in range(3):
                    await chat()
                await wait_until(lambda: b"cannot be written" in output)
                assert proc.returncode is None
                journal.rmdir()
                await chat()
                await wait_until(lambda: b"written again" in output)
                # The last of the three may have been written after the journal went.
                found = re.search(rb"; (\d) usage record\(s\) lost", output)
                assert found is not None
                lost = int(found.group(1))
                assert 1 <= lost <= 3
                await wait_until(lambda: requests_in_database() == 5 - lost)
                files = await trio.to_thread.run_sync(lambda: sorted(tmp_path.iterdir()))
                assert [p.name for p in files] == ["gateway.toml", "usage.sqlite"]
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                await proc.wait()
            nursery.cancel_scope.cancel()
    assert proc.returncode == 0, output.decode(errors="replace")
    assert output.count(b"cannot be written") == 1
