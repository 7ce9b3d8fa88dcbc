"""A child process that cannot outlive the gateway: its own process group (so stopping it
stops everything it started), Linux's parent-death signal (so even a ``kill -9`` of the
gateway takes it down), its output copied line by line into the gateway's log, and a stop
that escalates from SIGTERM to SIGKILL.

Why :class:`subprocess.Popen` on the event-loop thread and not
``trio.lowlevel.open_process``: ``PR_SET_PDEATHSIG`` fires when the *thread* that forked
the child exits, and trio forks from a cached worker thread that exits after ten idle
seconds — the child would be killed then. Forking from the trio thread ties the signal to
the gateway's own lifetime; the fork and exec take milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import trio

log = logging.getLogger("gateway.backends.llamacpp")

_PR_SET_PDEATHSIG = 1
# Longest line copied to the log; the rest of a longer one is dropped.
_MAX_LINE = 8192
# After the process is gone, how long its last output may take to drain into the log.
_DRAIN_GRACE = 1.0


class ServerProcess:
    """A running child. ``exited`` is set (and ``returncode`` known) once it is reaped."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.exited = trio.Event()

    async def _watch(self) -> None:
        pidfd = os.pidfd_open(self.pid)
        try:
            # Shielded: cancellation of the surrounding scope must not end the watch, or a
            # stop() that waits for `exited` would wait forever. The process ends anyway:
            # leaving open_process() stops it.
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        # The leader is a zombie now, so its pid (= the group id) cannot be reused yet:
        # kill whatever it left in its group, then reap it.
        self._signal_group(signal.SIGKILL)
        self.returncode = self._popen.wait()
        self.exited.set()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM to the group; SIGKILL after ``grace`` seconds; return once reaped."""
        if self.exited.is_set():
            return
        self._signal_group(signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.exited.wait()
            return
        log.warning("process %d ignored SIGTERM for %g s; killing it", self.pid, grace)
        self._signal_group(signal.SIGKILL)
        await self.exited.wait()


@asynccontextmanager
async def open_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    stop_grace: float,
) -> AsyncIterator[ServerProcess]:
    """Start ``argv``; every line it writes (stdout and stderr) goes to ``on_line``.

    Raises ``OSError`` when it cannot be executed. Leaving the context — also by
    cancellation — stops the process (:meth:`ServerProcess.stop`, shielded) and waits for it.
    """
    read_fd, write_fd = os.pipe()
    try:
        # Blocking, on purpose: see the module doc (fork on this thread, for PDEATHSIG).
        popen = subprocess.Popen(  # noqa: ASYNC220
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env={**os.environ, **env},
            process_group=0,
            # Safe here: the child only calls prctl and getppid (no locks, no allocation).
            preexec_fn=_die_with_parent(os.getpid()),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    process = ServerProcess(popen)
    output = trio.lowlevel.FdStream(read_fd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(process._watch)
        # Shielded too, so the last lines (why it exited) still reach the log; ended by a
        # deadline once the process is gone.
        copy_scope = trio.CancelScope(shield=True)
        nursery.start_soon(_copy_lines, output, on_line, copy_scope)
        try:
            yield process
        finally:
            with trio.CancelScope(shield=True):
                await process.stop(stop_grace)
                copy_scope.deadline = trio.current_time() + _DRAIN_GRACE


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: have the kernel SIGKILL the child when the forking thread's
    process dies. libc is looked up here, before the fork, not in the child."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(127)

    return preexec


async def _copy_lines(
    stream: trio.lowlevel.FdStream, on_line: Callable[[str], None], scope: trio.CancelScope
) -> None:
    buffer = b""
    with scope:
        async with stream:
            while chunk := await stream.receive_some():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    on_line(line[:_MAX_LINE].rstrip(b"\r").decode("utf-8", "replace"))
                if len(buffer) > _MAX_LINE:
                    on_line(buffer[:_MAX_LINE].decode("utf-8", "replace"))
                    buffer = b""
    if buffer:
        on_line(buffer[:_MAX_LINE].decode("utf-8", "replace"))
