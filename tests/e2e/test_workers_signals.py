"""``[server] workers = 2`` and the signals the parent gets at awkward moments: a SIGHUP
while workers start, a SIGHUP or a second stop signal during the drain; and a worker that
dies before it served. The gateway runs as its command runs it, in front of the scripted
fake upstream.

To catch workers between reading their config and being ready, the config holds a vLLM
backend whose server (:class:`_Gate`) leaves the start-up probe unanswered while it is
shut: a starting worker waits there, its config read, its SIGHUP handler not yet in place.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.gateway_process import GatewayProcess, process_gone, run_gateway_command

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
# Each worker logs it once it has read the config; then it starts the gate's backend.
_CONFIG_READ = "backend fake (openai) started"


class _Gate:
    """A vLLM server that answers nothing: while shut, every connection is held open (a
    worker's start-up probe waits on it); while open, each is closed at once (the probe
    fails fast, and the worker goes on with that backend down)."""

    def __init__(self) -> None:
        self._opened = trio.Event()
        self.url = ""

    def open(self) -> None:
        self._opened.set()

    def shut(self) -> None:
        if self._opened.is_set():
            self._opened = trio.Event()

    async def hold(self, stream: trio.SocketStream) -> None:
        async with stream:
            await self._opened.wait()


@asynccontextmanager
async def _open_gate() -> AsyncIterator[_Gate]:
    """A shut :class:`_Gate`, listening on a port of its own."""
    gate = _Gate()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, gate.hold, 0, host="127.0.0.1"))
        gate.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        yield gate
        nursery.cancel_scope.cancel()


def _config(tmp_path: Path, fake: FakeOpenAI, gate: _Gate | None = None, **server: object) -> Path:
    settings = {
        "bind": "127.0.0.1:0",
        "workers": 2,
        "graceful_timeout": 2,
        "pid_file": str(tmp_path / "gateway.pid"),
        **server,
    }
    lines = ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    lines.append(f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"')
    if gate is not None:  # after the fake one: _CONFIG_READ comes before the wait
        lines.append(f'[backends.gate]\ntype = "vllm"\nurl = "{gate.url}"\npoll_timeout = 60')
    lines += [
        '[routes.chat]\nmodel = "m"\nbackend = "fake"',
        f'[responses]\ndatabase = "{tmp_path / "responses.sqlite"}"',
    ]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def long_chat(*, tokens: int, pace: float) -> dict[str, object]:
    """A streamed chat the fake answers slowly: ``tokens`` deltas, ``pace`` seconds apart."""
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "long"}],
        "stream": True,
        "fake": {"tokens": tokens, "pace": pace},
    }


def _rename_model(config: Path) -> None:
    config.write_text(config.read_text().replace('model = "m"', 'model = "m2"'))


def _worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Each worker's latest pid, from the parent's log."""
    return {int(w): int(pid) for w, pid in _STARTED.findall(gateway.log)}


async def _logged(gateway: GatewayProcess, text: str, count: int = 1, within: float = 30) -> None:
    await wait_until(lambda: gateway.log.count(text) >= count, within=within)


async def _reloads_are(url: str, n: int) -> bool:
    """Whether the workers' successful reloads add up to ``n``."""
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        text = (await client.get("/metrics")).text
    total = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "trio_gateway_config_reloads_total" and sample.labels["result"] == "ok"
    )
    return total == n


async def _serves(url: str, model: str) -> bool:
    """Whether 10 requests for ``model``, each on a new connection (either worker may take
    it), all succeed."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    for _ in range(10):
        async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
            if (await client.post("/v1/chat/completions", json=body)).status_code != 200:
                return False
    return True


async def test_a_sighup_while_the_workers_start_reaches_each_once_it_is_ready(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A reload right after start-up (``gateway reload`` as soon as the pid file is there):
    the workers have read the old config and cannot reload yet. Forwarded at once, SIGHUP
    killed them, and the gateway with them; each gets it once it says it is ready."""
    async with _open_gate() as gate:
        config = _config(tmp_path, fake, gate)
        async with run_gateway_command(config) as gateway:
            await _logged(gateway, _CONFIG_READ, count=2)
            _rename_model(config)
            gateway.process.send_signal(signal.SIGHUP)
            await _logged(gateway, "received SIGHUP; every worker reloads", within=5)
            gate.open()
            url = await gateway.url(within=30)
            await wait_until(partial(_reloads_are, url, 2), within=10)
            assert await _serves(url, "m2")
            assert gateway.process.returncode is None
    assert gateway.log.count("reloads the config: a SIGHUP came while it started") == 2


async def test_a_restarted_worker_gets_a_sighup_once_it_is_ready(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A worker that served once is not ready again until it says so: while it starts
    again, a reload goes to the other at once and to it once it is ready."""
    async with _open_gate() as gate:
        gate.open()
        config = _config(tmp_path, fake, gate)
        async with run_gateway_command(config) as gateway:
            url = await gateway.url(within=60)
            gate.shut()
            os.kill(_worker_pids(gateway)[0], signal.SIGKILL)
            await _logged(gateway, _CONFIG_READ, count=3)  # the new worker 0 waits
            _rename_model(config)
            gateway.process.send_signal(signal.SIGHUP)
            await _logged(gateway, "received SIGHUP; every worker reloads", within=5)
            gate.open()
            await _logged(gateway, "worker 0 ready", count=2)
            await wait_until(partial(_reloads_are, url, 2), within=10)
            assert await _serves(url, "m2")
    assert gateway.log.count("worker 0 reloads the config: a SIGHUP came") == 1
    assert "worker 1 reloads the config" not in gateway.log


async def test_a_starting_worker_ignores_sighup(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A SIGHUP sent to a worker itself before it can reload does not kill it."""
    async with _open_gate() as gate, run_gateway_command(_config(tmp_path, fake, gate)) as gateway:
        await _logged(gateway, _CONFIG_READ, count=2)
        workers = _worker_pids(gateway)
        for pid in workers.values():
            os.kill(pid, signal.SIGHUP)
        gate.open()
        await gateway.url(within=30)
        assert _worker_pids(gateway) == workers
        assert "exited" not in gateway.log


async def test_a_worker_that_dies_before_it_served_is_named_in_the_error(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with _open_gate() as gate, run_gateway_command(_config(tmp_path, fake, gate)) as gateway:
        await _logged(gateway, _CONFIG_READ, count=2)
        os.kill(_worker_pids(gateway)[1], signal.SIGKILL)
        with trio.fail_after(15):
            assert await gateway.process.wait() == 1
    assert "cannot start: worker 1 exited (killed by SIGKILL) before it served" in gateway.log
    assert all(process_gone(pid) for pid in _worker_pids(gateway).values())


async def _stops_cleanly(gateway: GatewayProcess, config: Path, within: float) -> None:
    """The parent exits 0 within ``within`` seconds, through its whole clean-up."""
    workers = _worker_pids(gateway)
    with trio.fail_after(within):
        assert await gateway.process.wait() == 0, gateway.log
    assert not (config.parent / "gateway.pid").exists()
    assert "gateway.workers: stopped" in gateway.log
    assert all(process_gone(pid) for pid in workers.values())


async def test_a_sighup_during_the_drain_is_ignored(fake: FakeOpenAI, tmp_path: Path) -> None:
    """Held until the drain ended, it used to kill the parent then, leaving its pid file."""
    config = _config(tmp_path, fake, shutdown_delay=2)
    async with run_gateway_command(config) as gateway:
        await gateway.url(within=60)
        gateway.process.send_signal(signal.SIGTERM)
        await _logged(gateway, "received SIGTERM; every worker drains", within=5)
        gateway.process.send_signal(signal.SIGHUP)
        await _stops_cleanly(gateway, config, within=15)
    assert "received SIGHUP while stopping; ignored" in gateway.log
    assert "reloading" not in gateway.log


async def test_a_second_stop_signal_stops_the_workers_at_once(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGTERM, then SIGINT while the workers still serve out a minute's
    ``shutdown_delay``: they stop now, a stream in flight with them, and the parent
    still ends in order."""
    config = _config(tmp_path, fake, shutdown_delay=60)
    async with run_gateway_command(config) as gateway:
        url = await gateway.url(within=60)
        body = long_chat(tokens=600, pace=0.1)
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            chunks = response.aiter_text()
            await chunks.__anext__()
            gateway.process.send_signal(signal.SIGTERM)
            await _logged(gateway, "not ready; serving 60 s more", count=2, within=5)
            gateway.process.send_signal(signal.SIGINT)
            await _stops_cleanly(gateway, config, within=15)
            try:
                text = "".join([part async for part in chunks])
            except httpx.TransportError:  # cut mid-stream
                text = ""
            assert "[DONE]" not in text
    assert "received SIGINT while draining; every worker stops at once" in gateway.log
