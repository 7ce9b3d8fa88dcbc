"""Stored responses in one SQLite file (the default; no server).

Like the usage database (:mod:`gateway.teams.usage`), nothing is memory-mapped: a rollback
journal, not WAL (whose ``-shm`` index SQLite always maps), and ``mmap_size = 0``, because a
mapped file that someone truncates kills the process with SIGBUS where a read or write on
a file descriptor returns an error. Several processes may share the file; SQLite's locking
makes each write atomic.

The file is checked when the store opens (:class:`ResponsesDatabaseError`, one line naming
the path, if it cannot be used) but made only when the first response is stored: a gateway
that never serves ``/v1/responses`` leaves no file behind. Expired rows are never returned,
and are deleted when the store opens and then at most every ``purge_interval`` seconds,
by a write. All SQLite work happens in a worker thread, one call at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from ..sqlite_files import connect, file_problem, probe
from .store import (
    ResponsesDatabaseError,
    StoredResponse,
    StoreHealth,
    decode,
    encode,
)

__all__ = ["SQLiteResponseStore", "check_responses_database", "open_sqlite_response_store"]

log = logging.getLogger("gateway.responses")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    team TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (team, id)
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
"""


def _error(path: Path, error: Exception | str) -> ResponsesDatabaseError:
    why = error if isinstance(error, str) else file_problem(path) or str(error) or repr(error)
    return ResponsesDatabaseError(f"responses.database {path}: cannot open it: {why}")


def _connect(path: Path) -> sqlite3.Connection:
    return connect(path, lambda db: db.executescript(_SCHEMA))


def check_responses_database(path: str | Path) -> None:
    """Check that the gateway could store responses in ``path``, creating nothing: that a
    file can be made in the directory of a new one, or that an existing one is a SQLite
    database it may write. Raises :class:`ResponsesDatabaseError`. Blocking."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise _error(path, problem)
    if not path.exists():
        try:  # the permission bits do not tell everything (root, read-only mounts, /proc)
            with tempfile.TemporaryFile(dir=path.parent, prefix=".gateway-check-"):
                pass
        except OSError as error:
            raise _error(path, f"cannot create it in {path.parent}: {error.strerror}") from None
        return
    try:
        probe(path)
    except sqlite3.Error as error:
        raise _error(path, error) from None


class SQLiteResponseStore:
    """A :class:`~gateway.responses.store.ResponseStore` in one SQLite file. Use
    :func:`open_sqlite_response_store`. ``clock`` gives wall-clock (Unix) time."""

    def __init__(
        self,
        path: str | Path,
        *,
        ttl: float,
        max_bytes: int,
        purge_interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self.purge_interval = purge_interval
        self._clock = clock
        self._health = StoreHealth(f"responses.database {self.path}", max_bytes)
        self._db: sqlite3.Connection | None = None  # opened by the first write
        self._lock = trio.Lock()  # one connection: one thread at a time uses it
        self._next_purge = -float("inf")

    @property
    def failed_puts(self) -> int:
        return self._health.failed_puts

    @property
    def oversized_puts(self) -> int:
        return self._health.oversized_puts

    # -- in a worker thread ------------------------------------------------------------

    def _start(self) -> None:
        check_responses_database(self.path)
        if self.path.exists():
            try:
                self._db = _connect(self.path)
                self._purge(self._clock())
            except sqlite3.Error as error:
                self._close()
                raise _error(self.path, error) from None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _purge(self, now: float) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
        self._next_purge = now + self.purge_interval

    def _write(self, stored: StoredResponse, record: bytes, expires_at: float) -> None:
        if self._db is None:
            self._db = _connect(self.path)
        now = self._clock()
        self._db.execute(
            "INSERT OR REPLACE INTO responses (team, id, expires_at, record) VALUES (?, ?, ?, ?)",
            (stored.team, stored.id, expires_at, record),
        )
        if now >= self._next_purge:
            self._purge(now)

    def _read(self, team: str, response_id: str) -> StoredResponse | None:
        if self._db is None:
            if not self.path.exists():  # nothing was ever stored
                return None
            self._db = _connect(self.path)
        row = self._db.execute(
            "SELECT record FROM responses WHERE team = ? AND id = ? AND expires_at > ?",
            (team, response_id, self._clock()),
        ).fetchone()
        if row is None:
            return None
        try:
            stored, _ = decode(row[0])
        except ValueError as error:
            log.error(
                "response %s of team %r in %s is unreadable: %s",
                response_id,
                team,
                self.path,
                error,
            )
            return None
        return stored

    def _delete(self, team: str, response_id: str) -> bool:
        if self._db is None:
            if not self.path.exists():
                return False
            self._db = _connect(self.path)
        cursor = self._db.execute(
            "DELETE FROM responses WHERE team = ? AND id = ? AND expires_at > ?",
            (team, response_id, self._clock()),
        )
        return cursor.rowcount > 0

    # -- the store ---------------------------------------------------------------------

    async def put(self, stored: StoredResponse) -> bool:
        expires_at = self._clock() + self.ttl
        record = await trio.to_thread.run_sync(encode, stored, expires_at)
        if not self._health.fits(stored, record):
            return False
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self._write, stored, record, expires_at)
            except (sqlite3.Error, OSError) as error:
                await trio.to_thread.run_sync(self._close)  # the next call opens it anew
                self._health.failed(error)
                return False
        self._health.stored()
        return True

    async def get(self, team: str, response_id: str) -> StoredResponse | None:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(self._read, team, response_id)
            except (sqlite3.Error, OSError) as error:
                await trio.to_thread.run_sync(self._close)
                raise self._health.unavailable(error) from None

    async def delete(self, team: str, response_id: str) -> bool:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(self._delete, team, response_id)
            except (sqlite3.Error, OSError) as error:
                await trio.to_thread.run_sync(self._close)
                raise self._health.unavailable(error) from None


@asynccontextmanager
async def open_sqlite_response_store(
    path: str | Path,
    *,
    ttl: float,
    max_bytes: int,
    purge_interval: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[SQLiteResponseStore]:
    """Check ``path`` (opening it if it exists, and deleting expired rows); close it on
    exit. Raises :class:`ResponsesDatabaseError` (one line naming the path) if it cannot
    be used."""
    store = SQLiteResponseStore(
        path, ttl=ttl, max_bytes=max_bytes, purge_interval=purge_interval, clock=clock
    )
    await trio.to_thread.run_sync(store._start)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            async with store._lock:
                await trio.to_thread.run_sync(store._close)
