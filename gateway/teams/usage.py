"""Usage accounting: requests, errors, tokens and stream seconds per team, route and
backend, in SQLite (embedded; no server).

Records are added per minute bucket with an upsert, so several processes may share one
database file (SQLite's locking makes each upsert atomic; WAL mode lets readers in while a
writer works). Writes happen in a worker thread (:func:`trio.to_thread.run_sync`), batched
by a task that drains a queue: the relay only ever calls :meth:`UsageRecorder.record`,
which never blocks.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

__all__ = [
    "UsageRecord",
    "UsageRecorder",
    "UsageRow",
    "UsageStore",
    "open_usage_recorder",
    "parse_since",
]

log = logging.getLogger("gateway.teams")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL,
    team TEXT NOT NULL,
    route TEXT NOT NULL,
    backend TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    stream_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, team, route, backend)
)
"""

_UPSERT = """
INSERT INTO usage (minute, team, route, backend, requests, errors, prompt_tokens,
                   completion_tokens, stream_seconds)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute, team, route, backend) DO UPDATE SET
    requests = requests + excluded.requests,
    errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    stream_seconds = stream_seconds + excluded.stream_seconds
"""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One finished request. ``at`` is wall-clock (Unix) time."""

    at: float
    team: str
    route: str
    backend: str
    error: bool
    prompt_tokens: int
    completion_tokens: int
    stream_seconds: float


@dataclass(frozen=True, slots=True)
class UsageRow:
    team: str
    route: str
    backend: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    stream_seconds: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "total_tokens": self.total_tokens,
            "stream_seconds": round(self.stream_seconds, 3),
        }


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: float) -> float:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO date/time (UTC unless it says otherwise) as
    Unix time. Raises :class:`ValueError`."""
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: give a duration ago (30m, 2h, 7d) or an ISO date (2026-11-30T09:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class UsageStore:
    """The SQLite database. Blocking: call from a worker thread (or a CLI)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(
            str(path), timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, records: Iterable[UsageRecord]) -> None:
        rows = [
            (
                int(r.at // 60 * 60),
                r.team,
                r.route,
                r.backend,
                1,
                int(r.error),
                r.prompt_tokens,
                r.completion_tokens,
                r.stream_seconds,
            )
            for r in records
        ]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_UPSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def query(self, *, team: str | None = None, since: float | None = None) -> list[UsageRow]:
        """Totals per team, route and backend over the minutes from ``since`` (its minute
        included) on."""
        where: list[str] = []
        args: list[str | int] = []
        if team is not None:
            where.append("team = ?")
            args.append(team)
        if since is not None:
            where.append("minute >= ?")
            args.append(int(since // 60 * 60))
        sql = (
            "SELECT team, route, backend, SUM(requests), SUM(errors), SUM(prompt_tokens),"
            " SUM(completion_tokens), SUM(stream_seconds) FROM usage"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY team, route, backend ORDER BY team, route, backend"
        )
        return [UsageRow(*row) for row in self._db.execute(sql, args)]


class UsageRecorder:
    """Queues records for a writer task. Use :func:`open_usage_recorder`."""

    def __init__(self, store: UsageStore, send: trio.MemorySendChannel[UsageRecord]) -> None:
        self.store = store
        self._send = send
        self._pending = 0
        self._lock = trio.Lock()  # one connection: one thread at a time uses it
        self._idle = trio.Event()
        self._idle.set()

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks (a full queue drops it, with an error logged)."""
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            log.error("usage writes backed up; dropped a record for team %s", record.team)
            return
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    async def flush(self) -> None:
        """Wait until every record queued so far is in the database."""
        await self._idle.wait()

    async def query(self, *, team: str | None = None, since: float | None = None) -> list[UsageRow]:
        await self.flush()
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: self.store.query(team=team, since=since))

    async def _write_all(self, receive: trio.MemoryReceiveChannel[UsageRecord]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    async with self._lock:
                        await trio.to_thread.run_sync(self.store.add, batch)
                except sqlite3.Error as error:
                    log.error("could not write %d usage record(s): %s", len(batch), error)
                self._pending -= len(batch)
                if self._pending == 0:
                    self._idle.set()


@asynccontextmanager
async def open_usage_recorder(path: str | Path) -> AsyncIterator[UsageRecorder]:
    """Open the database; on exit, write what is queued, then close it."""
    store = await trio.to_thread.run_sync(UsageStore, path)
    send, receive = trio.open_memory_channel[UsageRecord](100_000)
    try:
        async with trio.open_nursery() as nursery:
            recorder = UsageRecorder(store, send)
            nursery.start_soon(recorder._write_all, receive)
            try:
                yield recorder
            finally:
                send.close()
    finally:
        await trio.to_thread.run_sync(store.close)
