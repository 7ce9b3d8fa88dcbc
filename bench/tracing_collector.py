"""Request latency with tracing off, and on with the collector up, down (a closed port),
or accepting and never answering: 1,000 sequential non-streamed chat requests each, through
one gateway in front of the fake upstream, in this process.

    .venv/bin/python bench/tracing_collector.py

Shows that a slow or dead collector costs a request nothing beyond tracing itself (the
spans are exported from the SDK's own thread). Not part of bench/run.
"""

import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from gateway.config import build_config
from gateway.server import serve
from gateway.service import open_gateway
from gateway.testing.fake_openai import FakeOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakes.otlp_collector import OTLPCollector

N = 1000
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def run_case(fake: FakeOpenAI, tracing: dict | None, database: Path) -> tuple[float, float]:
    raw: dict = {
        "server": {"bind": "127.0.0.1:0"},
        "backends": {"f": {"type": "openai", "url": fake.url}},
        "routes": {"m": {"backend": "f"}},
        "responses": {"database": str(database)},
    }
    if tracing:
        raw["tracing"] = tracing
    config = build_config(raw, environ={})
    shutdown = trio.Event()
    async with open_gateway(config) as gw:
        async with trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gw, shutdown=shutdown))
            times = []
            async with httpx.AsyncClient(base_url=binds[0]) as c:
                for _ in range(50):
                    await c.post("/v1/chat/completions", json=CHAT)
                for _ in range(N):
                    t = time.perf_counter()
                    r = await c.post("/v1/chat/completions", json=CHAT)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200
            shutdown.set()
    times.sort()
    return statistics.median(times) * 1000, times[int(0.99 * N)] * 1000


async def main() -> None:
    database = Path(tempfile.mkdtemp()) / "responses.sqlite"
    async with trio.open_nursery() as n:
        fake = FakeOpenAI()
        await n.start(fake.serve)
        hang = trio.socket.socket()  # accepts (the backlog does), never answers
        await hang.bind(("127.0.0.1", 0))
        hang.listen(100)
        hport = hang.getsockname()[1]
        short = {"export_timeout": 1, "shutdown_timeout": 1}  # default 5 s batches
        # The collector in a process of its own: decoding spans in this one would cost the
        # gateway's event loop what a real collector elsewhere never does.
        collector = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--collector"], stdout=subprocess.PIPE
        )
        assert collector.stdout is not None
        url = (await collector.stdout.receive_some(1024)).decode().strip()
        for name, tracing in [
            ("off", None),
            ("collector up", {"otlp_endpoint": url, **short}),
            ("collector down", {"otlp_endpoint": f"http://127.0.0.1:{closed_port()}", **short}),
            ("collector never answers", {"otlp_endpoint": f"http://127.0.0.1:{hport}", **short}),
            ("off again", None),
        ]:
            p50, p99 = await run_case(fake, tracing, database)
            print(f"{name:26s} p50 {p50:.3f} ms  p99 {p99:.3f} ms", flush=True)
        collector.kill()
        n.cancel_scope.cancel()


async def serve_collector() -> None:
    collector = OTLPCollector()
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.serve)
        print(collector.url, flush=True)


if __name__ == "__main__":
    trio.run(serve_collector if sys.argv[1:] == ["--collector"] else main)
