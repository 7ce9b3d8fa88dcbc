"""Backend ``llamacpp``, managed mode: the gateway runs the real llama-server itself, serves
through it, restarts it with back-off when it dies, copies its log, and leaves no process
behind — after a clean SIGTERM to the gateway, and after a ``kill -9`` of the gateway too."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.testing.waiting import wait_until
from tests.gateway_process import GatewayProcess, children, group_members, process_gone
from tests.gateway_process import run_gateway_command as run_gateway

from .llamacpp_fixtures import (
    gateway_doc,
    managed_settings,
    model_path,  # noqa: F401  (fixture)
    open_stream,
    read_stream,
    start_gateway,
)

CHAT = {
    "model": "gemma",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "temperature": 0,
}
SERVER_LOG = "gateway.backends.llamacpp.server"


async def _chat(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0
    return answer


# --- in-process gateway -------------------------------------------------------------------


async def test_managed_server_serves_and_comes_back_after_kill_9(
    nursery: trio.Nursery,
    model_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.backends.llamacpp")
    settings = managed_settings(model_path, poll_interval=0.05, restart_delay=1.0)
    gateway = await start_gateway(nursery, gateway_doc(settings, interval=1.0))
    backend = gateway.backend
    supervisor = backend.supervisor
    assert supervisor is not None

    # Started, not ready yet: the route is not ready, and says why.
    assert backend.status.health == "loading", backend.status
    async with gateway.client() as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["backends"]["l"]["health"] == "loading"

    await wait_until((lambda: backend.status.health == "ready"), within=120)
    assert supervisor.process is not None
    first_pid = supervisor.process.pid
    assert backend.url is not None and backend.url.startswith("http://127.0.0.1:")
    async with gateway.client() as client:
        assert (await client.get("/readyz")).status_code == 200
        await _chat(client)
        async with open_stream(client, "/v1/completions", {**CHAT, "prompt": "Hi"}) as response:
            streamed = await read_stream(response)
    assert streamed.done and streamed.pieces
    # llama-server's own lines are in the gateway's log, tagged with the backend's id.
    server_lines = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG]
    assert any(line.startswith("[l] ") and "model loaded" in line for line in server_lines)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"pid {first_pid} is ready on {backend.url} after" in m for m in messages)

    # kill -9: down at once (no request goes there), a new process after the back-off.
    killed_at = trio.current_time()
    os.kill(first_pid, signal.SIGKILL)
    await wait_until((lambda: backend.status.health == "down"), within=5)
    async with gateway.client() as client:
        refused = await client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "no_backend_available"
    await wait_until((lambda: supervisor.starts == 2), within=10)
    restarted_after = trio.current_time() - killed_at
    assert restarted_after >= 1.0  # restart_delay
    await wait_until((lambda: backend.status.health == "ready"), within=120)
    assert supervisor.process.pid != first_pid
    assert process_gone(first_pid)
    async with gateway.client() as client:
        await _chat(client)
    exits = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
    assert any(f"pid {first_pid} exited with code -9" in m for m in exits), exits
    print(f"\nrestart: new llama-server {restarted_after:.2f} s after kill -9 (delay 1 s)")


async def test_embeddings_where_the_server_has_them(
    nursery: trio.Nursery,
    model_path: Path,
) -> None:
    """A server started with ``--embeddings`` answers ``/v1/embeddings`` through the
    gateway (one vector per input, the model's width, llama-server's usage)."""
    settings = managed_settings(model_path, "--embeddings", "--pooling", "mean")
    gateway = await start_gateway(nursery, gateway_doc(settings))
    await wait_until((lambda: gateway.backend.status.health == "ready"), within=120)
    async with gateway.client() as client:
        response = await client.post(
            "/v1/embeddings", json={"model": "gemma", "input": ["a lighthouse", "an owl"]}
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    vectors = [item["embedding"] for item in answer["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) == 640  # gemma 3 270M
    assert vectors[0] != vectors[1]
    assert answer["usage"]["prompt_tokens"] > 0


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    """A 'llama-server' that logs a line, notes when it started and exits with 3."""
    script = tmp_path / "llama-server"
    script.write_text(
        "#!/bin/sh\n"
        f"date +%s.%N >> {tmp_path / 'starts'}\n"
        "echo 'fake llama-server: cannot start' >&2\n"
        "exit 3\n"
    )
    script.chmod(0o755)
    return script


async def test_a_crashing_server_is_restarted_with_doubling_back_off(
    nursery: trio.Nursery,
    model_path: Path,
    fake_binary: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.backends.llamacpp")
    settings = managed_settings(
        model_path, binary=str(fake_binary), restart_delay=0.2, restart_delay_max=0.8
    )
    gateway = await start_gateway(nursery, gateway_doc(settings))
    starts_file = tmp_path / "starts"

    def starts() -> list[float]:
        return [float(t) for t in starts_file.read_text().split()] if starts_file.exists() else []

    await wait_until((lambda: len(starts()) >= 5), within=20)
    times = starts()[:5]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"\nback-off gaps between starts: {[round(g, 3) for g in gaps]}")
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert delay <= gap < delay + 0.5, gaps
    status = gateway.backend.status
    assert status.health in ("down", "loading")
    async with gateway.client() as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    server_lines = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG]
    assert "[l] fake llama-server: cannot start" in server_lines


async def test_a_start_that_never_becomes_healthy_is_killed_and_retried(
    nursery: trio.Nursery,
    model_path: Path,
    tmp_path: Path,
) -> None:
    """A server that hangs instead of listening: after ``start_timeout`` it is stopped —
    SIGTERM, then SIGKILL, its whole process group — and started again."""
    pids = tmp_path / "pids"
    script = tmp_path / "llama-server"
    script.write_text(
        "#!/bin/sh\n"
        "trap '' TERM\n"  # ignores SIGTERM: only the SIGKILL after stop_grace ends it
        f"sleep 1000 & echo $$ $! >> {pids}\n"
        "wait\n"
    )
    script.chmod(0o755)
    settings = managed_settings(
        model_path, binary=str(script), start_timeout=0.5, stop_grace=0.3, restart_delay=0.1
    )
    gateway = await start_gateway(nursery, gateway_doc(settings))
    supervisor = gateway.backend.supervisor
    assert supervisor is not None

    def started() -> list[list[int]]:
        if not pids.exists():
            return []
        return [[int(p) for p in line.split()] for line in pids.read_text().splitlines()]

    await wait_until((lambda: len(started()) >= 2), within=20)
    first = started()[0]
    # The hung first start and the child it forked are gone, reaped.
    await wait_until((lambda: all(process_gone(p) for p in first)), within=5)
    assert gateway.backend.status.health != "ready"


# --- the gateway as a command -------------------------------------------------------------


_READY = re.compile(r"llama-server pid (\d+) is ready")


@asynccontextmanager
async def run_gateway_command(
    tmp_path: Path, backend: dict[str, Any], *, workers: int = 1
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway serve`` with one managed backend ``l`` behind route ``gemma``
    (and ``workers`` worker processes); its log is collected in the background."""
    lines = ["[server]", 'bind = "127.0.0.1:0"', f"workers = {workers}", "", "[backends.l]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in backend.items()]
    lines += ["", "[routes.gemma]", 'backend = "l"']
    config = tmp_path / "gateway.toml"
    config.write_text("\n".join(lines) + "\n")
    async with run_gateway(config) as running:
        yield running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_no_llama_server_outlives_the_gateway(
    tmp_path: Path,
    model_path: Path,
    signum: signal.Signals,
) -> None:
    """SIGTERM: the gateway stops llama-server and exits 0. SIGKILL: the gateway cannot do
    anything — the kernel's parent-death signal takes llama-server down with it."""
    server_pid = None
    async with run_gateway_command(tmp_path, managed_settings(model_path)) as gateway:
        try:
            url = await gateway.url(within=60)
            server_pid = int((await gateway.wait_for_line(_READY, within=120))[1])
            assert group_members(server_pid) == [server_pid]
            async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
                await _chat(client)
            gateway.process.send_signal(signum)
            with trio.fail_after(60):
                code = await gateway.process.wait()
            assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL), gateway.log
            await wait_until((lambda: process_gone(server_pid)), within=10)
            assert group_members(server_pid) == []
        finally:
            if server_pid is not None and not process_gone(server_pid):
                os.kill(server_pid, signal.SIGKILL)  # do not leak it into other tests
    if signum == signal.SIGTERM:
        assert "[l] " in gateway.log  # llama-server's lines, tagged with the backend id


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


async def test_workers_share_one_managed_server(tmp_path: Path, model_path: Path) -> None:
    """With workers = 2 the parent runs llama-server once, both workers answer through
    it, and SIGTERM leaves no process: not a worker, not the server."""
    async with run_gateway_command(tmp_path, managed_settings(model_path), workers=2) as gateway:
        url = await gateway.url(within=120)
        server_pid = int((await gateway.wait_for_line(_READY, within=120))[1])
        parent = gateway.process.pid
        workers = [pid for pid in children(parent) if _command_name(pid) != "llama-server"]
        servers = [pid for pid in children(parent) if _command_name(pid) == "llama-server"]
        assert servers == [server_pid] and len(workers) == 2
        assert all(children(worker) == [] for worker in workers)  # no server of their own
        answered_by = set()
        for _ in range(40):
            # A new connection each time: the kernel hands it to either worker.
            async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:

                async def ready(client: httpx.AsyncClient = client) -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await wait_until(ready, within=30)  # this worker's poller has seen it ready
                answered_by.add((await client.get("/healthz")).json()["worker"])
                await _chat(client)
            if answered_by == {0, 1}:
                break
        assert answered_by == {0, 1}
        assert _command_name(server_pid) == "llama-server"  # still the one it started
        gateway.process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            assert await gateway.process.wait() == 0, gateway.log
        for pid in [server_pid, *workers]:
            await wait_until(partial(process_gone, pid), within=10)
