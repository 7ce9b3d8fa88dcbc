"""Node's fetch with undici's *default* timers against a 330 s silence, three ways.

Not part of CI: it takes about six minutes. It is the e2e check of issue 7 point 3
(tests/e2e/sdk/test_idle_timeouts.py) at full scale: no timer is lowered. Node's fetch
(undici) gives up after 300 s without headers (``headersTimeout``) or between two body
chunks (``bodyTimeout``); the fake upstream stays silent for 330 s in three scenarios —
a long prefill, a request queued behind a busy slot, and a gap mid-stream — and the
official ``openai`` npm package makes the call

* straight to the fake upstream,
* through the gateway with the route's keepalive off (``interval = 0``),
* through the gateway with keepalive on (``interval``, default 15 s: the shipped default).

All nine calls run at once. Run from the repository root::

    .venv/bin/python bench/node_default_timeouts.py [--silence 330] [--interval 15]

It prints one line per call and exits 0 when the first two ways fail with undici's timeout
and the third completes with every token.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from gateway.config import build_config
from gateway.server import serve
from gateway.service import open_gateway
from gateway.testing.fake_openai import FakeOpenAI

NODE_DIR = Path(__file__).resolve().parents[1] / "tests" / "node"
TOKENS = 20
GAP_AFTER = 10
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def ensure_node_client() -> tuple[str, Path, str]:
    """(node binary, client script, node version), with the locked npm packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        sys.exit("needs node and npm on PATH")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    version = subprocess.check_output([node, "--version"], text=True).strip()
    return node, NODE_DIR / "client.mjs", version


async def start_gateway(nursery: trio.Nursery, upstream: str, interval: float) -> str:
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"fake": {"type": "openai", "url": upstream}},
            "routes": {
                "chat": {"model": "m", "backend": "fake", "keepalive": {"interval": interval}}
            },
        }
    )

    async def run(task_status: trio.TaskStatus[str]) -> None:
        async with open_gateway(config) as gateway:
            binds = await nursery.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(binds[0] + "/v1")
            await trio.sleep_forever()

    return await nursery.start(run)


async def main(silence: float, interval: float) -> int:
    node, script, version = ensure_node_client()
    scenarios: dict[str, dict[str, Any]] = {
        "prefill": {"tokens": TOKENS, "prefill": silence},
        "queued": {"tokens": TOKENS},
        "gap": {"tokens": TOKENS, "gap_at": GAP_AFTER + 1, "gap": silence},
    }
    fake = FakeOpenAI()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        bases = {
            "direct": fake.url,
            "off": await start_gateway(nursery, fake.url, 0),
            "on": await start_gateway(nursery, fake.url, interval),
        }

        async def block(queue: str) -> None:
            body = {**CHAT, "stream": False, "fake": {"queue": queue, "prefill": silence}}
            async with httpx.AsyncClient(timeout=None) as client:
                await client.post(fake.url + "/chat/completions", json=body)

        for way in bases:
            nursery.start_soon(block, f"queued-{way}")
            await fake.wait_queue(f"queued-{way}", holding=1)

        ops = []
        for scenario, fake_script in scenarios.items():
            for way, base in bases.items():
                case = f"{scenario}-{way}"
                extra = {"queue": case} if scenario == "queued" else {}
                # no "undici" key: Node's fetch with its default dispatcher and timers
                ops.append(
                    {
                        "id": case,
                        "baseURL": base,
                        "call": "chat",
                        "params": {**CHAT, "fake": {**fake_script, **extra}},
                    }
                )
        print(
            f"node {version}, "
            f"silence {silence:g} s, keepalive interval {interval:g} s; "
            f"started {time.strftime('%H:%M:%S')}",
            flush=True,
        )
        done = await trio.run_process(
            [node, str(script)], stdin=json.dumps({"ops": ops}).encode(), capture_stdout=True
        )
        nursery.cancel_scope.cancel()

    failures = 0
    expected_text = "".join(f"tok{i} " for i in range(TOKENS))
    for result in json.loads(done.stdout)["results"]:
        error = result.get("error") or {}
        verdict = (
            f"completed, {len(result['text'].split())} tokens"
            if result["ok"]
            else f"failed: {error.get('class')} {error.get('undici') or ''} "
            f"after {len(result['text'].split())} tokens".rstrip()
        )
        print(f"{result['id']:>15}  {result['elapsed_ms'] / 1000:7.1f} s  {verdict}")
        if result["id"].endswith("-on"):
            failures += not (result["ok"] and result["text"] == expected_text)
        else:
            failures += not (error.get("undici") or "").endswith("_TIMEOUT")
    print("as expected" if not failures else f"{failures} unexpected outcome(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silence", type=float, default=330.0)
    parser.add_argument("--interval", type=float, default=15.0)
    args = parser.parse_args()
    sys.exit(trio.run(main, args.silence, args.interval))
