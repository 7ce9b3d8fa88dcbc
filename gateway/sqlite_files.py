"""The SQLite files the gateway keeps (the usage database, stored responses): what stands in
the way of one, a probe that it is a database the gateway may write, and a connection made
the way both use it — rollback journal and no memory map, so that a file truncated behind
the gateway's back is an error, not a SIGBUS. Blocking: call from a worker thread (or a CLI).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["connect", "file_problem", "probe"]


def file_problem(path: Path) -> str | None:
    """What stands in the way of creating or writing ``path``, as far as the file system
    tells (``None``: nothing it can see)."""
    if path.is_dir():
        return "it is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create it: directory {parent} is not writable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "it is not readable and writable"
    return None


def probe(path: Path) -> None:
    """Check that the existing file ``path`` is a SQLite database the gateway may write,
    changing nothing. Raises :class:`sqlite3.Error`."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=5)
    try:
        db.execute("PRAGMA schema_version").fetchone()  # reads the header: a database?
        db.execute("BEGIN IMMEDIATE")  # takes the write lock: writable?
        db.execute("ROLLBACK")
    finally:
        db.close()


def connect(path: Path, setup: Callable[[sqlite3.Connection], object]) -> sqlite3.Connection:
    """``path`` opened (created if need be) in autocommit mode, usable from any thread, its
    memory map off, then ``setup`` run on it; closed again if ``setup`` fails."""
    uri = f"{path.absolute().as_uri()}?mode=rwc"
    db = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA mmap_size = 0")
        setup(db)
    except BaseException:
        db.close()
        raise
    return db
