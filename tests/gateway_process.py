"""The gateway as its command runs it: ``python -m gateway serve`` in a process of its own,
its log collected as it comes; and what tests read of processes in ``/proc``."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gateway.pidfile import default_pid_path
from gateway.testing.waiting import wait_until

SERVING = re.compile(r"serving on (http://\S+)")


@dataclass
class GatewayProcess:
    process: trio.Process
    output: bytearray = field(default_factory=bytearray)

    @property
    def log(self) -> str:
        return self.output.decode(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        """The access-log lines so far (JSON lines with a ``request_id``)."""
        lines = []
        for line in self.log.splitlines():
            if line.startswith("{") and '"request_id"' in line:
                lines.append(json.loads(line))
        return lines

    async def wait_for_line(self, pattern: re.Pattern[str], within: float) -> re.Match[str]:
        await wait_until(lambda: pattern.search(self.log) is not None, within=within)
        match = pattern.search(self.log)
        assert match is not None
        return match

    async def url(self, within: float = 60) -> str:
        """The address it serves on, once it says so."""
        return (await self.wait_for_line(SERVING, within=within))[1]


@asynccontextmanager
async def run_gateway_command(
    config: Path, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway serve --config CONFIG ARGS…`` (in ``env``, or this process's
    environment), its stderr collected in the background; killed on the way out if it
    still runs."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    running = GatewayProcess(process)
    stderr = process.stderr
    assert stderr is not None

    async def collect() -> None:
        async for chunk in stderr:
            running.output.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            yield running
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        _remove_stale_pid_file(config, process.pid, env)


def _remove_stale_pid_file(config: Path, pid: int, env: Mapping[str, str] | None) -> None:
    """A gateway killed (by the test, or on the way out) cannot remove its default pid
    file from the temp directory: remove it, if it still names that gateway."""
    path = default_pid_path(config)
    if env is not None and env.get("TMPDIR"):
        path = Path(env["TMPDIR"]) / path.name
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip() or 0) == pid:
            path.unlink()


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the command name (state first), or ``None``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs: absent, or a zombie nobody reaped yet."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _live(field_index: int, value: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[field_index]) == value and fields[0] not in "ZX":
                found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    return _live(2, pgid)


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    return _live(1, pid)
