"""Where a serving gateway's pid is found, so that ``gateway reload`` can signal it.

``gateway serve --config PATH`` writes its pid to ``[server] pid_file`` or, by default, to
a file in the temp directory named after PATH: made absolute, its directory's symbolic
links resolved but not the file's own. (A Kubernetes ConfigMap is mounted as ``gateway.toml ->
..data/gateway.toml`` and an update swaps ``..data``: the resolved path changes, the
mounted one does not.) ``gateway reload --config PATH`` then finds the gateway that serves
that file without being told more.

A pid file alone cannot tell a gateway from whatever process got its pid after it died
without removing the file (SIGKILL, a crash). So the gateway holds an exclusive
``flock`` on the file for as long as it serves, and ``gateway reload`` signals only a pid
whose file is locked: a file nobody holds is stale, and nothing is sent. (The lock goes
with the process, however it ends.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["PidFileError", "default_pid_path", "hold_pid_file", "pid_path", "signal_holder"]


class PidFileError(Exception):
    """A pid file that cannot be written, read, or trusted; the message names it."""


def default_pid_path(config_path: Path) -> Path:
    """The pid file of the gateway serving ``config_path`` when its ``[server] pid_file``
    is not set."""
    # The directory resolved, the file's own name not: a ConfigMap's file is a link that an
    # update repoints, while `serve --config /link/dir/gateway.toml` and `reload --config
    # gateway.toml` run in that directory must name the same file.
    absolute = os.path.abspath(config_path)
    name = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    key = hashlib.sha256(name.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"trio-gateway-{key}.pid"


def pid_path(pid_file: str | None, config_path: Path) -> Path:
    """Where the gateway serving ``config_path`` (whose ``[server] pid_file`` is
    ``pid_file``) writes its pid."""
    return Path(pid_file) if pid_file is not None else default_pid_path(config_path)


@contextlib.contextmanager
def hold_pid_file(path: Path) -> Iterator[None]:
    """Write this process's pid to ``path`` and hold an exclusive lock on it until the
    block ends; then remove it, unless another gateway has put its own file there since.

    The file is written and locked under another name, then renamed to ``path``: whoever
    opens ``path`` finds either the previous file or this one, complete and locked. A
    gateway still holding the previous one (one draining as this one starts) keeps its
    lock on a file no longer at ``path``.

    In a directory the gateway may not write (a file made for it in a root-owned ``/run``)
    the file already at ``path`` is locked and written in place, and emptied at the end.

    Raises :class:`PidFileError` if the file cannot be written (its directory does not
    exist, or cannot be written to and holds no file of ours), or — written in place — if
    a gateway still serving holds it."""
    try:
        file, in_place = _written_beside(path), False
    except _DirectoryClosed as closed:
        file, in_place = _written_in_place(path, closed.reason), True
    with file:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if in_place:
                    file.truncate(0)  # no pid left to read; the lock goes with the file
                elif _same_file(os.stat(path), os.fstat(file.fileno())):
                    path.unlink()


class _DirectoryClosed(Exception):
    """The pid file's directory refuses a new file (``reason``: why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _written_beside(path: Path) -> TextIO:
    """A new file with this pid, locked, renamed to ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        temporary.unlink()  # left by a process of this pid before: never opened as it is
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _DirectoryClosed(error.strerror or "refused") from None
        raise PidFileError(f"pid file {path}: cannot write it: {error.strerror}") from None
    file = os.fdopen(fd, "w", encoding="ascii")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody has it
        file.write(f"{os.getpid()}\n")
        file.flush()
        os.replace(temporary, path)
    except OSError as error:
        file.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise PidFileError(f"pid file {path}: cannot write it: {error.strerror}") from None
    return file


def _written_in_place(path: Path, reason: str) -> TextIO:
    """The file at ``path`` (made for the gateway where it may not make one), locked and
    holding this pid."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise PidFileError(
            f"pid file {path}: cannot write it: its directory refuses a new file ({reason}) "
            f"and the file itself cannot be opened ({error.strerror})"
        ) from None
    file = os.fdopen(fd, "w", encoding="ascii")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        holder = ""
        with contextlib.suppress(OSError):
            holder = path.read_text(encoding="ascii", errors="replace").strip()
        raise PidFileError(
            f"pid file {path}: a gateway still serving holds it (pid {holder or 'unknown'}; "
            "its directory refuses the new file another gateway would put in its place)"
        ) from None
    try:
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
    except OSError as error:
        file.close()
        raise PidFileError(f"pid file {path}: cannot write it: {error.strerror}") from None
    return file


def signal_holder(path: Path, signum: int) -> int:
    """Send ``signum`` to the gateway whose pid file is ``path``, and return its pid.

    Raises :class:`PidFileError`, sending nothing, if there is no such file, it holds no
    pid, or no process holds its lock (a stale file: its pid may be another process's by
    now); or if the signal cannot be sent. (A gateway that exits between the check and the
    signal leaves its pid unused for a moment only: the window is that narrow.)"""
    for _ in range(3):  # a new gateway may replace a stale file between open and check
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise PidFileError(f"pid file {path}: {error.strerror}") from None
        with os.fdopen(fd, encoding="ascii") as file:
            text = file.read().strip()
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                break  # held: its gateway serves
            with contextlib.suppress(OSError):
                if not _same_file(os.stat(path), os.fstat(file.fileno())):
                    continue
            raise PidFileError(
                f"pid file {path} (pid {text or 'none'}) is stale: no gateway holds it, "
                "its gateway did not stop cleanly; nothing sent"
            )
    else:
        raise PidFileError(f"pid file {path}: replaced while being read; try again")
    try:
        pid = int(text)
    except ValueError:
        raise PidFileError(f"pid file {path}: {text!r} is not a pid") from None
    try:
        os.kill(pid, signum)
    except OSError as error:
        raise PidFileError(f"pid file {path}: pid {pid}: {error.strerror}") from None
    return pid


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
