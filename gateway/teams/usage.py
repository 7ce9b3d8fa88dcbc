"""Usage accounting: requests, errors, tokens and stream seconds per team, route and
backend, in SQLite (embedded; no server).

Records are added per minute bucket with an upsert, so several processes may share one
database file (SQLite's locking makes each upsert atomic). Writes happen in a worker thread
(:func:`trio.to_thread.run_sync`), batched by a task that drains a queue: the relay only
ever calls :meth:`UsageRecorder.record`, which never blocks.

No file is memory-mapped: the database uses a rollback journal (not WAL, whose ``-shm``
index SQLite always maps) and ``mmap_size = 0``. A mapped file that someone truncates
faults the process with SIGBUS — no exception, no log line, a dead gateway — where a read
or write on a file descriptor returns an error. Writes are small and batched, so WAL's
concurrent readers are not worth that.

A database that cannot be written degrades to logged, counted errors
(:attr:`UsageRecorder.failed_records`): one line when writes start failing, one when they
work again; the store is reopened before each try, so a file that was deleted or replaced
is found again. One that cannot be opened at start raises :class:`UsageDatabaseError`,
whose message names the path; :func:`check_usage_database` finds the same problems without
creating anything (``gateway check``).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from ..sqlite_files import connect, file_problem, probe

__all__ = [
    "UsageDatabaseError",
    "UsageRecord",
    "UsageRecorder",
    "UsageRow",
    "UsageStore",
    "check_usage_database",
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
        since = now - float(match.group(1)) * _UNITS[match.group(2)]
        if not since >= 0:  # (also inf and nan, from durations too long for a float)
            raise ValueError(f"{text!r} reaches back before 1970")
        return since
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: give a duration ago (30m, 2h, 7d) or an ISO date (2026-11-30T09:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class UsageDatabaseError(Exception):
    """The usage database cannot be used; the message is one line that names the path."""


def _failure(path: Path, doing: str, error: Exception) -> UsageDatabaseError:
    why = file_problem(path) or (str(error) or type(error).__name__)
    return UsageDatabaseError(f"usage.database {path}: cannot {doing}: {why}")


def _connect(path: Path) -> sqlite3.Connection:
    def setup(db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            _leave_wal(db, path)

    return connect(path, setup)


def _leave_wal(db: sqlite3.Connection, path: Path) -> None:
    """A file made by an older version is in WAL mode; take it back to a rollback journal
    (which needs every other connection to it closed: if one is open, say so and go on)."""
    db.execute("PRAGMA busy_timeout = 0")
    try:
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError as error:
        log.warning(
            "usage.database %s stays in WAL mode while another process has it open (%s); "
            "restart every process that uses it to leave WAL",
            path,
            error,
        )
    finally:
        db.execute("PRAGMA busy_timeout = 30000")


def check_usage_database(path: str | Path) -> None:
    """Check that the gateway could open and write ``path``, leaving nothing behind: that
    a file can be made in the directory of a new one, or that an existing one is a SQLite
    database it may write. Raises :class:`UsageDatabaseError`."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise UsageDatabaseError(f"usage.database {path}: cannot open it: {problem}")
    if not path.exists():
        try:  # the permission bits do not tell everything (root, read-only mounts, /proc)
            with tempfile.TemporaryFile(dir=path.parent, prefix=".gateway-check-"):
                pass
        except OSError as error:
            raise UsageDatabaseError(
                f"usage.database {path}: cannot create it in {path.parent}: "
                f"{error.strerror or error}"
            ) from None
        return
    try:
        probe(path)
    except sqlite3.Error as error:
        raise _failure(path, "open it", error) from None


class UsageStore:
    """The SQLite database. Blocking: call from a worker thread (or a CLI).

    Opening raises :class:`UsageDatabaseError` (naming the path) when the file cannot be
    opened or created; the other methods raise :class:`sqlite3.Error`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = _connect(self.path)
        except sqlite3.Error as error:
            raise _failure(self.path, "open it", error) from None
        try:
            db.execute(_SCHEMA)
        except sqlite3.Error as error:
            db.close()
            raise _failure(self.path, "create its table", error) from None
        return db

    def reopen(self) -> None:
        """Close the connection and open the path again (it may be another file now).
        Raises :class:`UsageDatabaseError`; the old connection is closed either way."""
        self._db.close()
        self._db = self._open()

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
    """Queues records for a writer task. Use :func:`open_usage_recorder`.

    Records that could not be written are counted in :attr:`failed_records`, those a full
    queue turned away in :attr:`dropped_records` (running totals)."""

    def __init__(self, store: UsageStore, send: trio.MemorySendChannel[UsageRecord]) -> None:
        self.store = store
        self._send = send
        self._pending = 0
        self._lock = trio.Lock()  # one connection: one thread at a time uses it
        self._idle = trio.Event()
        self._idle.set()
        self.failed_records = 0
        self.dropped_records = 0
        self._failing_since: float | None = None  # when writes started failing
        self._failed_before = 0  # failed_records then
        self._backed_up = False

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks (a full queue drops it, counted, with an error
        logged once until the queue drains)."""
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            self.dropped_records += 1
            if not self._backed_up:
                self._backed_up = True
                log.error("usage writes backed up; dropping records until the queue drains")
            return
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    async def flush(self) -> None:
        """Wait until every record queued so far is in the database (or failed)."""
        await self._idle.wait()

    async def query(self, *, team: str | None = None, since: float | None = None) -> list[UsageRow]:
        await self.flush()
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: self.store.query(team=team, since=since))

    def _add(self, batch: list[UsageRecord], reopen: bool) -> Exception | None:
        """In the worker thread: write ``batch``, reopening the store first after a failure.
        Returns the error instead of raising it."""
        try:
            if reopen:
                self.store.reopen()
            self.store.add(batch)
        except (sqlite3.Error, UsageDatabaseError, OSError) as error:
            return error
        return None

    def _wrote(self, batch: list[UsageRecord], error: Exception | None) -> None:
        now = trio.current_time()
        if error is not None:
            self.failed_records += len(batch)
            if self._failing_since is None:
                self._failing_since = now
                self._failed_before = self.failed_records - len(batch)
                log.error(
                    "usage database %s cannot be written, usage records are lost until it can: %s",
                    self.store.path,
                    error,
                )
        elif self._failing_since is not None:
            log.warning(
                "usage database %s written again after %.1f s; %d usage record(s) lost",
                self.store.path,
                now - self._failing_since,
                self.failed_records - self._failed_before,
            )
            self._failing_since = None

    async def _write_all(self, receive: trio.MemoryReceiveChannel[UsageRecord]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                async with self._lock:
                    reopen = self._failing_since is not None
                    error = await trio.to_thread.run_sync(self._add, batch, reopen)
                self._wrote(batch, error)
                self._pending -= len(batch)
                if self._pending == 0:
                    self._backed_up = False
                    self._idle.set()


@asynccontextmanager
async def open_usage_recorder(path: str | Path) -> AsyncIterator[UsageRecorder]:
    """Open the database; on exit, write what is queued, then close it. Raises
    :class:`UsageDatabaseError` (naming the path) if it cannot be opened."""
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
