"""Config reload on SIGHUP, on a served gateway: what changes at once (routes, keys, teams,
limits, backends), what a request in flight keeps (everything it started with), what a bad
file changes (nothing), and the settings that need a restart. The signal is real: the test
process sends itself SIGHUP, which the served gateway's receiver takes."""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from gateway.testing.ws_client import WSClient
from tests.reload_harness import Served, starter

from .test_failover_limits import start_fakes
from .test_shutdown import free_port, serving

ALPHA, BETA, GAMMA = new_key(), new_key(), new_key()
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def config_text(
    upstream: str,
    *,
    routes: str = "",
    teams: str = "",
    keepalive: str = 'interval = 0.1\ncomment = "old"',
    backend: str = "",
    server: str = "",
    tmp_path: Path,
) -> str:
    """A gateway config: backend `fake` at ``upstream``, route `m`, and what is given."""
    return f"""
[server]
bind = "127.0.0.1:0"
{server}
[responses]
database = "{tmp_path / "responses.sqlite"}"
[usage]
database = "{tmp_path / "usage.sqlite"}"
[backends.fake]
type = "openai"
url = "{upstream}"
{backend}
[routes.m]
backend = "fake"
[routes.m.keepalive]
{keepalive}
{routes}
{teams}
"""


Start = Callable[[str], Awaitable[Served]]


@pytest.fixture
async def start(nursery: trio.Nursery, tmp_path: Path) -> Start:
    return starter(nursery, tmp_path, Served)


def team(name: str, key: str, models: str = '["*"]', limits: str = "") -> str:
    return f'[teams.{name}]\nkeys = ["{hash_key(key)}"]\nmodels = {models}\n{limits}\n'


async def test_new_route_and_new_teams_key_work_and_a_removed_key_is_refused_at_once(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    gw = await start(config_text(fake.url, teams=team("alpha", ALPHA), tmp_path=tmp_path))
    async with gw.client(BETA) as beta:
        assert (
            await beta.post("/v1/chat/completions", json={**CHAT, "model": "m"})
        ).status_code == 401
    await gw.reload(
        config_text(
            fake.url,
            routes='[routes.n]\nbackend = "fake"\nupstream_model = "from-n"',
            teams=team("beta", BETA),  # alpha is gone, beta is new
            tmp_path=tmp_path,
        )
    )
    async with gw.client(BETA) as beta, gw.client(ALPHA) as alpha:
        new_route = await beta.post("/v1/chat/completions", json={**CHAT, "model": "n"})
        listed = await beta.get("/v1/models")
        refused = await alpha.post("/v1/chat/completions", json={**CHAT, "model": "m"})
    assert new_route.status_code == 200 and fake.requests[-1].body["model"] == "from-n"
    assert {m["id"] for m in listed.json()["data"]} == {"m", "n"}, listed.text
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert gw.gateway.config.routes[-1].name == "n"


async def test_a_stream_across_a_reload_finishes_as_it_began(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The stream keeps its route's keepalive comment, its upstream model and its backend
    to the end; the next request has the new ones. Without its heartbeats, its bytes are
    those of the same stream with no reload."""
    gw = await start(config_text(fake.url, tmp_path=tmp_path))
    body = {**CHAT, "model": "m", "stream": True, "fake": {"tokens": 6, "pace": 0.15}}
    async with gw.client() as client:
        baseline = (await client.post("/v1/chat/completions", json=body)).content
        reloaded = trio.Event()
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = b""
            async for chunk in resp.aiter_raw():
                raw += chunk
                if not reloaded.is_set() and b"tok0" in raw:
                    await gw.reload(
                        config_text(
                            fake.url,
                            keepalive='interval = 0.1\ncomment = "new"',
                            routes="",
                            backend="timeouts = { total = 60 }",
                            tmp_path=tmp_path,
                        )
                    )
                    reloaded.set()
        after = await client.post(
            "/v1/chat/completions", json={**body, "fake": {"tokens": 1, "pace": 0, "prefill": 0.3}}
        )
    assert reloaded.is_set()
    assert b": old\n\n" in raw and b": new" not in raw
    assert raw.replace(b": old\n\n", b"") == baseline.replace(b": old\n\n", b"")
    assert b": new\n\n" in after.content


async def test_a_bad_file_is_refused_with_its_dotted_path_and_the_old_config_serves_on(
    start: Start, fake: FakeOpenAI, tmp_path: Path, caplog
) -> None:
    caplog.set_level("ERROR", logger="gateway.reload")
    good = config_text(fake.url, tmp_path=tmp_path)
    gw = await start(good)
    before = gw.gateway.config
    async with gw.client() as client:
        hash_before = _config_hash(await client.get("/metrics"))
        await gw.reload(
            config_text(fake.url, keepalive="interval = -1", tmp_path=tmp_path), result="rejected"
        )
        await gw.reload(good.replace("[routes.m]", "[routes.m]\nbogus = 1"), result="rejected")
        await gw.reload(good + "\n[routes.x\n", result="rejected")  # not TOML
        served = await client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
        metrics = await client.get("/metrics")
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.reload"]
    assert "routes.m.keepalive.interval: Input should be greater than or equal to 0" in messages[0]
    assert "routes.m.bogus: unknown key" in messages[1]
    assert "invalid TOML" in messages[2]
    assert all("the running config is kept" in m for m in messages)
    assert gw.gateway.config is before and served.status_code == 200
    assert 'trio_gateway_config_reloads_total{result="rejected"} 3.0' in metrics.text
    assert _config_hash(metrics) == hash_before


def _config_hash(metrics: httpx.Response) -> str:
    [line] = [x for x in metrics.text.splitlines() if x.startswith("trio_gateway_config_info{")]
    return line.split('hash="')[1].split('"')[0]


async def test_a_changed_backend_drains_its_stream_then_closes_and_a_kept_one_is_untouched(
    nursery: trio.Nursery, start: Start, tmp_path: Path
) -> None:
    fakes = await start_fakes(nursery, ["a", "b", "c"])
    keep = '[backends.kept]\ntype = "openai"\nurl = "{}"\n[routes.k]\nbackend = "kept"'.format(
        fakes["c"].url
    )
    gw = await start(config_text(fakes["a"].url, routes=keep, tmp_path=tmp_path))
    kept = gw.gateway.upstreams["kept"]
    body = {**CHAT, "stream": True, "fake": {"tokens": 4, "pace": 0.2}}
    async with gw.client() as client:
        assert (
            await client.post("/v1/chat/completions", json={**CHAT, "model": "k"})
        ).status_code == 200
        raw = b""
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "model": "m"}
        ) as resp:
            async for chunk in resp.aiter_raw():
                raw += chunk
                if b"tok0" in raw and len(fakes["b"].connections) == 0 and not gw.reloads("ok"):
                    # backend `fake` moves from a to b while the stream runs on a
                    await gw.reload(config_text(fakes["b"].url, routes=keep, tmp_path=tmp_path))
                    [old] = fakes["a"].connections
                    assert old.closed_at is None  # the stream is still on it
        ended_at = trio.current_time()
        rest = raw
        moved = await client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
        still = await client.post("/v1/chat/completions", json={**CHAT, "model": "k"})
    assert rest.endswith(b"data: [DONE]\n\n") and b"tok3" in rest
    assert moved.status_code == 200 and len(fakes["b"].requests) == 1
    # Its stream over, the replaced backend stopped: its kept-alive connection closed.
    with trio.fail_after(5):
        await old.closed_event.wait()
    assert old.closed_at is not None and old.closed_at >= ended_at - 0.05
    # The unchanged backend is the same object, with its pooled connection still open.
    assert gw.gateway.upstreams["kept"] is kept and still.status_code == 200
    assert len(fakes["c"].connections) == 1 and fakes["c"].connections[0].closed_at is None


async def routed_then_reloaded(gw: Served, body: dict[str, Any], new_text: str) -> httpx.Response:
    """The answer to ``body`` (asked with ALPHA's key) routed before a reload to
    ``new_text`` and relayed after it: it waits on its team's admission meanwhile."""
    assert gw.gateway.auth is not None
    state = gw.gateway.auth.state
    admit, entered, go = state.admit, trio.Event(), trio.Event()

    async def admit_later(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await go.wait()
        return await admit(*args, **kwargs)

    state.admit = admit_later  # type: ignore[method-assign]
    answers: list[httpx.Response] = []

    async def ask() -> None:
        async with gw.client(ALPHA) as alpha:
            answers.append(await alpha.post("/v1/chat/completions", json=body))

    async with trio.open_nursery() as asking:
        asking.start_soon(ask)
        await entered.wait()
        await gw.reload(new_text)
        state.admit = admit  # type: ignore[method-assign]
        go.set()
    [answer] = answers
    return answer


async def test_a_request_between_routing_and_its_relay_keeps_the_backend_a_reload_replaces(
    nursery: trio.Nursery, start: Start, tmp_path: Path
) -> None:
    # A request routed before a reload and relayed after it is served by the backend it
    # was routed to: that backend is held from the routing on, so the reload does not
    # stop it under the request.
    fakes = await start_fakes(nursery, ["a", "b"])
    teams = team("alpha", ALPHA)
    gw = await start(config_text(fakes["a"].url, teams=teams, tmp_path=tmp_path))
    # backend `fake` moves from a to b while the request waits for its admission
    moved = config_text(fakes["b"].url, teams=teams, tmp_path=tmp_path)
    answer = await routed_then_reloaded(gw, {**CHAT, "model": "m"}, moved)
    assert answer.status_code == 200, answer.text
    assert len(fakes["a"].requests) == 1 and not fakes["b"].requests
    async with gw.client(ALPHA) as alpha:  # the next one goes to the new backend
        assert (
            await alpha.post("/v1/chat/completions", json={**CHAT, "model": "m"})
        ).status_code == 200
    assert len(fakes["b"].requests) == 1


async def test_a_backend_changed_but_for_its_admission_keeps_one_limit_and_queue_across_it(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    # max_concurrency = 1; a stream holds the slot while a reload changes the backend's
    # timeouts only: a request after the reload queues behind the stream still on the
    # replaced backend, as it would have without the reload.
    admission = "admission = { max_concurrency = 1, max_queue = 4 }\n"
    gw = await start(
        config_text(
            fake.url, backend=admission + "timeouts = { first_byte = 60 }", tmp_path=tmp_path
        )
    )
    body = {**CHAT, "model": "m", "stream": True, "fake": {"tokens": 4, "pace": 0.2}}
    second: list[int] = []

    async def ask(client: httpx.AsyncClient) -> None:
        second.append(
            (await client.post("/v1/chat/completions", json={**CHAT, "model": "m"})).status_code
        )

    def one_queued() -> bool:
        return gw.gateway.upstreams["fake"].slots.queued == 1

    async with gw.client() as client, trio.open_nursery() as nursery:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for chunk in resp.aiter_raw():
                if b"tok0" in chunk and not gw.reloads("ok"):
                    changed = admission + "timeouts = { first_byte = 61 }"
                    await gw.reload(config_text(fake.url, backend=changed, tmp_path=tmp_path))
                    nursery.start_soon(ask, client)
                    await wait_until(one_queued, within=5)
    assert second == [200]
    assert fake.max_active == 1 and len(fake.requests) == 2


async def test_settings_that_need_a_restart_are_reported_and_left_and_the_rest_applies(
    start: Start, fake: FakeOpenAI, tmp_path: Path, caplog
) -> None:
    caplog.set_level("WARNING", logger="gateway.reload")
    gw = await start(config_text(fake.url, tmp_path=tmp_path))
    server = gw.gateway.config.server
    await gw.reload(
        config_text(
            fake.url,
            server="graceful_timeout = 5\nmax_body_bytes = 1000",
            routes='[routes.n]\nbackend = "fake"',
            tmp_path=tmp_path,
        )
    )
    [warning] = [r.getMessage() for r in caplog.records if r.name == "gateway.reload"]
    assert "server changed, which needs a restart; left as they were" in warning
    assert gw.gateway.config.server is server
    assert [r.name for r in gw.gateway.config.routes] == ["m", "n"]


async def test_a_teams_counters_survive_a_reload_that_changes_its_limits(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    limits = "[teams.alpha.limits]\nrequests_per_minute = {}"
    gw = await start(
        config_text(
            fake.url, teams=team("alpha", ALPHA, limits=limits.format(3)), tmp_path=tmp_path
        )
    )
    ask = {**CHAT, "model": "m"}
    async with gw.client(ALPHA) as alpha:
        first = [(await alpha.post("/v1/chat/completions", json=ask)).status_code for _ in range(2)]
        await gw.reload(
            config_text(
                fake.url,
                teams=team("alpha", ALPHA, limits=limits.format(4)) + team("gamma", GAMMA),
                tmp_path=tmp_path,
            )
        )
        then = [(await alpha.post("/v1/chat/completions", json=ask)).status_code for _ in range(3)]
    assert first == [200, 200]
    assert then == [200, 200, 429]  # 4 a minute now, 2 of them already used
    # The refused request let go of the backend it was routed to, as the served ones did.
    assert gw.gateway.upstreams["fake"].users == 0


async def test_gateway_reload_signals_the_gateway_serving_the_file(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The command: `gateway serve --config F` writes its pid; `gateway reload --config F`
    checks F and signals it; a bad F is refused by the command itself (exit 2)."""
    port = free_port()
    path = tmp_path / "gateway.toml"
    text = config_text(fake.url, tmp_path=tmp_path).replace("127.0.0.1:0", f"127.0.0.1:{port}")
    path.write_text(text)
    command = [sys.executable, "-m", "gateway"]
    proc = await trio.lowlevel.open_process([*command, "serve", "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: serving(url), within=20, interval=0.1)
        path.write_text(text + '[routes.n]\nbackend = "fake"\n')
        done = await trio.run_process(
            [*command, "reload", "--config", str(path)], capture_stdout=True
        )
        assert f"sent SIGHUP to the gateway (pid {proc.pid})" in done.stdout.decode()
        async with httpx.AsyncClient(base_url=url) as client:

            async def listed() -> bool:
                names = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
                return names == {"m", "n"}

            await wait_until(listed, within=10, interval=0.05)
        path.write_text(text + "[routes.n]\nbackend = 42\n")
        bad = await trio.run_process(
            [*command, "reload", "--config", str(path)], capture_stderr=True, check=False
        )
        assert bad.returncode == 2 and b"routes.n.backend" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
    missing = await trio.run_process(
        [*command, "reload", "--config", str(path.with_name("other.toml"))],
        capture_stderr=True,
        check=False,
    )
    assert missing.returncode != 0


async def test_a_key_removed_by_a_reload_is_refused_on_an_open_websocket_next_turn(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    gw = await start(
        config_text(fake.url, teams=team("alpha", ALPHA) + team("beta", BETA), tmp_path=tmp_path)
    )
    ws = await WSClient.connect(gw.url, headers=[("authorization", f"Bearer {ALPHA}")])
    create = {"type": "response.create", "model": "m", "input": "Hi", "fake": {"tokens": 1}}
    await ws.send_json(create)
    assert (await ws.events_until_end())[-1]["type"] == "response.completed"
    await gw.reload(config_text(fake.url, teams=team("beta", BETA), tmp_path=tmp_path))
    await ws.send_json(create)
    [refused] = await ws.events_until_end()
    await ws.close()
    assert refused["type"] == "error" and refused["status"] == 401
    assert len(fake.requests) == 1


async def test_a_backends_keepalive_changes_at_once_and_leaves_the_backend_running(
    start: Start, fake: FakeOpenAI, tmp_path: Path
) -> None:
    def text(comment: str) -> str:
        backend = f'[backends.fake.keepalive]\ncomment = "{comment}"'
        teams = team("alpha", ALPHA)
        return config_text(fake.url, backend=backend, teams=teams, tmp_path=tmp_path)

    gw = await start(text("before"))
    backend = gw.gateway.upstreams["fake"].backend
    body = {**CHAT, "model": "m", "stream": True, "fake": {"prefill": 0.5, "tokens": 1}}
    async with gw.client(ALPHA) as client:
        first = await client.post("/v1/chat/completions", json=body)
        await gw.reload(text("after"))
        second = await client.post("/v1/chat/completions", json=body)
    assert first.content.startswith(b": before\n\n: before\n\n")
    assert second.content.startswith(b": after\n\n: after\n\n")
    # The backend is the one that served before: its pooled connection is still open.
    assert gw.gateway.upstreams["fake"].backend is backend
    assert len(fake.connections) == 1 and fake.connections[0].closed_at is None
    # One routed before a reload (back to "before") and relayed after it keeps "after".
    between = await routed_then_reloaded(gw, body, text("before"))
    assert between.content.startswith(b": after\n\n: after\n\n")
