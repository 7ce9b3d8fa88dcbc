"""Config reload (SIGHUP) on a gateway that manages a real llama-server: the server restarts
only when its own settings changed. A reload that changes only routes keeps the backend
object and its process; one that changes the backend's settings starts a new llama-server,
lets a stream in flight on the old one finish whole, and stops the old one only then.

The signal is real: the test process sends itself SIGHUP, which the served gateway takes
(``tests/reload_harness.py``, as in ``tests/e2e/test_reload.py``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from backends.llamacpp import LlamaCppBackend
from gateway.service import Upstream
from gateway.testing.waiting import wait_until
from tests.reload_harness import Served, starter

from .llamacpp_fixtures import (
    SERVER_ARGS,
    Streamed,
    delta_text,
    model_path,  # noqa: F401  (fixture)
    open_events,
    open_stream,
    read_stream,
)
from .sse_helpers import event_json

pytestmark = pytest.mark.llamacpp

COMPLETION = {"model": "gemma", "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0}
# Long enough to still run when the reload is over: a fixed length (no early end of text).
STREAM = {**COMPLETION, "max_tokens": 24, "ignore_eos": True, "cache_prompt": False}


def config_text(model: Path, *extra_args: str, routes: str = "") -> str:
    """Backend ``l`` (a managed llama-server for ``model``, :data:`SERVER_ARGS` plus
    ``extra_args``) behind route ``gemma``; ``routes`` goes into route ``gemma``'s table
    (more tables may follow)."""
    return f"""
[server]
bind = "127.0.0.1:0"
[backends.l]
type = "llamacpp"
model = {json.dumps(str(model))}
args = {json.dumps([*SERVER_ARGS, *extra_args])}
poll_interval = 0.05
[routes.gemma]
backend = "l"
{routes}
"""


class LlamaServed(Served):
    """A served gateway whose backend ``l`` manages a llama-server: its clients wait long
    and skip proxies, a reload (a llama-server started) may take 30 s."""

    CLIENT_TIMEOUT = 120
    CLIENT_TRUST_ENV = False
    RELOAD_WITHIN = 30

    def upstream(self) -> Upstream:
        return self.gateway.upstreams["l"]

    def backend(self) -> LlamaCppBackend:
        backend = self.upstream().backend
        assert isinstance(backend, LlamaCppBackend)
        return backend


Start = Callable[[str], Awaitable[LlamaServed]]


@pytest.fixture
async def start(nursery: trio.Nursery, tmp_path: Path) -> Start:
    return starter(nursery, tmp_path, LlamaServed)


async def ready(backend: LlamaCppBackend) -> LlamaCppBackend:
    await wait_until(lambda: backend.status.health == "ready", within=120)
    return backend


async def complete(client: httpx.AsyncClient, model: str = "gemma") -> dict[str, Any]:
    response = await client.post("/v1/completions", json={**COMPLETION, "model": model})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["usage"]["completion_tokens"] > 0
    return answer


def server(backend: LlamaCppBackend) -> httpx.AsyncClient:
    """A client of the backend's llama-server itself (not through the gateway)."""
    assert backend.url is not None
    return httpx.AsyncClient(base_url=backend.url, timeout=10, trust_env=False)


async def last_task(direct: httpx.AsyncClient) -> int:
    """The id of the last task the one slot of llama-server took (-1: none yet)."""
    [slot] = (await direct.get("/slots")).json()
    return int(slot.get("id_task", -1))


def running(pid: int) -> bool:
    """Whether ``pid`` runs (present and not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def test_a_reload_that_changes_only_routes_keeps_the_backend_and_its_llama_server(
    start: Start, model_path: Path
) -> None:
    gw = await start(config_text(model_path))
    upstream = gw.upstream()
    backend = await ready(gw.backend())
    supervisor = backend.supervisor
    assert supervisor is not None and supervisor.process is not None
    process = supervisor.process
    async with gw.client() as client, server(backend) as direct:
        await complete(client)
        task = await last_task(direct)

        await gw.reload(
            config_text(
                model_path,
                routes='aliases = ["g"]\n[routes.other]\nbackend = "l"',
            )
        )

        assert [(r.name, r.settings.aliases) for r in gw.gateway.config.routes] == [
            ("gemma", ("g",)),
            ("other", ()),
        ]
        # The same upstream, backend and process: not restarted, not even stopped a moment.
        assert gw.upstream() is upstream and gw.backend() is backend
        assert backend.supervisor is supervisor and supervisor.process is process
        assert supervisor.starts == 1 and not process.exited.is_set() and running(process.pid)
        assert backend.status.health == "ready"
        # The new names answer at once, from that same llama-server.
        await complete(client, "g")
        await complete(client, "other")
        assert await last_task(direct) > task
    assert supervisor.starts == 1 and supervisor.process is process and running(process.pid)


async def test_a_changed_backend_gets_a_new_llama_server_and_the_old_one_ends_after_its_stream(
    nursery: trio.Nursery, start: Start, model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.reload")
    gw = await start(config_text(model_path))
    old_upstream = gw.upstream()
    old = await ready(gw.backend())
    assert old.supervisor is not None and old.supervisor.process is not None
    old_process = old.supervisor.process
    async with gw.client() as client:
        expected = await read_whole_stream(client)  # the same stream with no reload

    exit_seen: list[tuple[float, int]] = []  # (when, the old upstream's users then)

    async def note_exit() -> None:
        await old_process.exited.wait()
        exit_seen.append((trio.current_time(), old_upstream.users))

    nursery.start_soon(note_exit)

    seen: list[bytes] = []
    pieces: list[str] = []
    alive_then: list[bool] = []  # per piece: whether the old server was running then
    usage = None
    reloaded = trio.Event()

    served_during: list[int] = []

    async def reload() -> None:
        # The stream's backend now gets another --ctx-size.
        await gw.reload(config_text(model_path, "--ctx-size", "2048"))
        reloaded.set()

    async def request_during_the_reload() -> None:
        # Until the new server has loaded its model the swap waits, and the old server
        # serves the route: no gap without a ready backend (before, this was a 503).
        def waiting() -> bool:
            return any(
                "waiting for backend l to be ready" in r.getMessage() for r in caplog.records
            )

        await wait_until(waiting, within=30)
        async with gw.client() as client:
            await complete(client)
        served_during.append(1)

    async with (
        gw.client() as client,
        open_events(client, "/v1/completions", STREAM) as (response, events),
    ):
        assert response.status_code == 200
        async for event in events:
            seen.append(event)
            chunk = event_json(event)
            if chunk is None:
                continue
            assert "error" not in chunk, chunk
            usage = chunk.get("usage") or usage
            if piece := delta_text(chunk):
                pieces.append(piece)
                alive_then.append(not old_process.exited.is_set())
                if len(pieces) == 1:
                    nursery.start_soon(reload)
                    nursery.start_soon(request_during_the_reload)
    done_at = trio.current_time()
    await wait_until(lambda: reloaded.is_set() and bool(served_during), within=60)

    # The stream finished whole: as the same stream with no reload, every piece from the
    # old server, still running then.
    assert gw.upstream() is not old_upstream
    assert seen[-1] == b"data: [DONE]", seen[-3:]
    assert "".join(pieces) == expected.text and len(pieces) == len(expected.pieces) == 24
    assert usage == expected.usage and usage is not None
    assert all(alive_then), alive_then
    # Once the stream was over and the swap done, the old server was stopped: not before.
    with trio.fail_after(30):
        await old_process.exited.wait()
    await wait_until(lambda: bool(exit_seen))
    [(exited_at, users_then)] = exit_seen
    assert users_then == 0 and exited_at >= done_at - 0.05
    assert not running(old_process.pid)

    # A new backend with its own llama-server (the new --ctx-size) serves what comes next:
    # ready at once, since the swap waited for it.
    new = gw.backend()
    assert new.status.ready
    assert new is not old and new.settings.args[-2:] == ("--ctx-size", "2048")
    assert new.supervisor is not None and new.supervisor.process is not None
    new_process = new.supervisor.process
    assert new_process.pid != old_process.pid and new.url != old.url
    async with gw.client() as client, server(new) as direct:
        props = (await direct.get("/props")).json()
        assert props["default_generation_settings"]["n_ctx"] == 2048
        task = await last_task(direct)
        await complete(client)
        assert await last_task(direct) > task
    assert new.supervisor.starts == 1 and running(new_process.pid)


async def read_whole_stream(client: httpx.AsyncClient) -> Streamed:
    async with open_stream(client, "/v1/completions", STREAM) as response:
        assert response.status_code == 200
        return await read_stream(response)
