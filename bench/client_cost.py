"""What one upstream request costs the gateway's process, per HTTP client.

Starts the fake upstream (``upstream.py``, its own process), then in one trio process sends
the same small non-streaming POST ``--requests`` times, one at a time on one keep-alive
connection, with each client the relay could use, and reads one stream of ``--events``
SSE events; prints the CPU time of this process (``time.process_time``) per request and per
event:

* ``httpx``: one ``httpx.AsyncClient`` (what the relay used before ``backends/_pool.py``);
* ``httpcore``: httpx's transport alone, one ``httpcore.AsyncConnectionPool``;
* ``pool``: ``backends._pool.ConnectionPool``, h11 on a trio stream (what the relay uses).

Run with the gateway's venv, pinned to one CPU, on a quiet machine::

    taskset -c 1 .venv/bin/python bench/client_cost.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import trio

from backends._pool import ConnectionPool

ROOT = Path(__file__).resolve().parent.parent

UNARY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = [(b"content-type", b"application/json")]


def stream_body(events: int) -> bytes:
    prompt = f"bench:n={events},gap=1,prefill=0"
    return json.dumps(
        {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


async def cost(
    label: str, one: Callable[[bytes], Awaitable[int]], requests: int, events: int
) -> None:
    for _ in range(min(200, requests)):  # warm up: imports, the connection, caches
        await one(UNARY)
    started = time.process_time()
    for _ in range(requests):
        await one(UNARY)
    per_request = (time.process_time() - started) / requests * 1e6
    started = time.process_time()
    chunks = await one(stream_body(events))
    per_event = (time.process_time() - started) / chunks * 1e6
    print(f"{label:9} {per_request:7.0f} µs/request  {per_event:6.0f} µs/event ({chunks} reads)")


async def main(port: int, requests: int, events: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=None) as client:

        async def via_httpx(body: bytes) -> int:
            async with client.stream(
                "POST", url, content=body, headers={"content-type": "application/json"}
            ) as response:
                return len([chunk async for chunk in response.aiter_raw()])

        await cost("httpx", via_httpx, requests, events)

    async with httpcore.AsyncConnectionPool() as core:

        async def via_httpcore(body: bytes) -> int:
            async with core.stream("POST", url, content=body, headers=HEADERS) as response:
                return len([chunk async for chunk in response.aiter_stream()])

        await cost("httpcore", via_httpcore, requests, events)

    pool = ConnectionPool(
        f"http://127.0.0.1:{port}/v1",
        max_connections=1,
        max_keepalive_connections=1,
        connect_timeout=5.0,
    )

    async def via_pool(body: bytes) -> int:
        async with pool.open_response(b"POST", "/chat/completions", HEADERS, body) as response:
            return len([chunk async for chunk in response.body])

    await cost("pool", via_pool, requests, events)
    pool.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    upstream_python = ROOT / "bench" / ".venv" / "bin" / "python"
    proc = subprocess.Popen(
        [
            str(upstream_python if upstream_python.exists() else sys.executable),
            str(ROOT / "bench" / "upstream.py"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        trio.run(main, port, args.requests, args.events)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    run()
