"""Checks of the benchmark harness itself (not part of the suite CI runs; run with
``.venv/bin/python -m pytest bench/test_bench.py -q``): the load generator's HTTP decoder at
every split point, and the fake upstream and load generator against each other over real
sockets, including a sustained level that must fail."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen_conn import ResponseDecoder  # noqa: E402 (bench/ is not a package)

PIECES = [b"data: one\n\n", b": keepalive\n\ndata: x", b"\n\n\n"]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in PIECES)
    + b"0\r\n\r\n"
)
FIXED = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("response", "status", "body"),
    [
        (CHUNKED, 200, b"data: one\n\n: keepalive\n\ndata: x\n\n\n"),
        (FIXED, 201, b"hello"),
    ],
)
def test_decoder_at_every_split_point(response: bytes, status: int, body: bytes) -> None:
    for cut in range(len(response) + 1):
        decoder = ResponseDecoder()
        out = decoder.feed(response[:cut])
        assert not decoder.done or cut == len(response)
        out += decoder.feed(response[cut:])
        assert decoder.done, cut
        assert decoder.status == status
        assert out == body, cut


def test_decoder_rejects_a_response_without_length() -> None:
    with pytest.raises(ValueError, match="without length"):
        ResponseDecoder().feed(b"HTTP/1.1 200 OK\r\n\r\nbody")


@pytest.fixture
def upstream_port(request: pytest.FixtureRequest) -> Iterator[int]:
    extra = getattr(request, "param", [])
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", "0", *extra],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("LISTENING"), line
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def loadgen(port: int, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), *args, "--port", str(port)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_unary_requests_all_answered(upstream_port: int) -> None:
    r = loadgen(
        upstream_port, "unary", "--concurrency", "4", "--duration", "0.3", "--warmup", "0.1"
    )
    assert r["errors"] == {}
    assert isinstance(r["requests"], int) and r["requests"] > 0
    assert r["ok"] == r["requests"]


@pytest.mark.parametrize("upstream_port", [["--max-requests", "7"]], indirect=True)
def test_unary_carries_on_after_connection_close(upstream_port: int) -> None:
    r = loadgen(upstream_port, "unary", "--concurrency", "2", "--duration", "0.3", "--warmup", "0")
    assert r["errors"] == {}
    assert isinstance(r["requests"], int) and r["requests"] > 14
    assert isinstance(r["reconnects"], int) and r["reconnects"] >= r["requests"] // 7 - 2


def test_streams_arrive_whole_and_in_order(upstream_port: int) -> None:
    r = loadgen(
        upstream_port, "stream", "--count", "3", "--concurrency", "2", "--tokens", "8", "--gap", "2"
    )
    assert r["errors"] == {}
    assert r["streams"] == 3
    assert (r["missing"], r["reordered"], r["incomplete"], r["failed"]) == (0, 0, 0, 0)
    gaps = r["inter_chunk_ms"]
    assert isinstance(gaps, dict) and gaps["n"] == 3 * 7


def test_a_sustained_level_fails_when_silence_exceeds_the_limit(upstream_port: int) -> None:
    passing = loadgen(
        upstream_port,
        "sustain",
        "--streams",
        "5",
        "--tokens",
        "3",
        "--gap",
        "10",
        "--ramp",
        "0.05",
        "--max-gap",
        "5000",
    )
    assert passing["passed"] is True
    # The upstream waits 10 ms between events: a 1 ms limit cannot be met.
    failing = loadgen(
        upstream_port,
        "sustain",
        "--streams",
        "5",
        "--tokens",
        "3",
        "--gap",
        "10",
        "--ramp",
        "0.05",
        "--max-gap",
        "1",
    )
    assert failing["passed"] is False
    assert failing["missing"] == 0
