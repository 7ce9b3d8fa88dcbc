"""What the harness's tests share: the fake upstream in its own process and the load
generator run as ``bench/run`` runs them, each test's own. Importing this module puts
``bench/`` on ``sys.path`` (it is no package), so the tests import the harness's modules by
name."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture
def upstream(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """The fake upstream in its own process: ``(port, pid)``."""
    extra = getattr(request, "param", [])
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", "0", *extra],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("LISTENING"), line
        yield int(line.split()[1]), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def upstream_port(upstream: tuple[int, int]) -> int:
    return upstream[0]


def loadgen(port: int, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), *args, "--port", str(port)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result
