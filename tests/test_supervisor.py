"""gateway.supervisor in this process, with real worker processes: what trio's
``open_process`` leaves to chance (a signal while a worker is being spawned) made certain
by a wrapper around it."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.abc import Backend, BackendSettings, Placement, UpstreamRequest, UpstreamResponse
from gateway.config import load_config, read_config
from gateway.errors import ConfigError
from gateway.registry import BackendType, Registry, load_registry
from gateway.supervisor import supervise
from gateway.testing.waiting import wait_until
from tests.gateway_process import process_gone

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    server = {"bind": "127.0.0.1:0", "workers": 2, "graceful_timeout": 2}
    server["pid_file"] = str(tmp_path / "gateway.pid")
    path.write_text(
        "[server]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.items())
        + '[backends.fake]\ntype = "openai"\nurl = "http://127.0.0.1:9"\n'
        + '[routes.chat]\nmodel = "m"\nbackend = "fake"\n'
        + f'[responses]\ndatabase = "{tmp_path / "responses.sqlite"}"\n'
    )
    return path


async def test_a_worker_spawned_as_sigterm_comes_is_stopped_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM reaches the parent while both workers are being spawned (their processes
    exist, ``open_process`` has not returned): each is sent SIGTERM as soon as it is
    known. Missed by the forwarding, they used to serve until killed a drain later."""
    caplog.set_level("INFO", logger="gateway.workers")
    open_process = trio.lowlevel.open_process
    sent = False

    async def open_process_as_sigterm_comes(*args: Any, **kwargs: Any) -> trio.Process:
        nonlocal sent
        process = await open_process(*args, **kwargs)
        if not sent:
            sent = True
            signal.raise_signal(signal.SIGTERM)
        await wait_until(lambda: "received SIGTERM; every worker drains" in caplog.text)
        return process

    monkeypatch.setattr(trio.lowlevel, "open_process", open_process_as_sigterm_comes)
    config_path = _config(tmp_path)
    with trio.fail_after(10):  # not graceful_timeout + 15 s, when _kill_late ends them
        await supervise(load_config(config_path), config_path, registry=load_registry(), workers=2)
    assert caplog.text.count("the gateway is stopping; sending it SIGTERM") == 2
    assert re.search(r"worker \d ready", caplog.text) is None
    assert all(process_gone(int(pid)) for _, pid in _STARTED.findall(caplog.text))
    assert not (tmp_path / "gateway.pid").exists()


async def test_a_stop_while_a_worker_is_spawned_waits_for_the_spawn_to_close_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM is answered (the parent closes its listening sockets) before the worker's
    process is made from them: the parent keeps them open until the spawn is over. It
    closed them at once, the child's exec failed (EBADF) and the gateway died of it."""
    caplog.set_level("INFO", logger="gateway.workers")
    open_process = trio.lowlevel.open_process

    passed_open: list[bool] = []

    async def open_process_after_sigterm(*args: Any, **kwargs: Any) -> trio.Process:
        if "received SIGTERM" not in caplog.text:
            signal.raise_signal(signal.SIGTERM)
            await wait_until(lambda: "received SIGTERM; every worker drains" in caplog.text)
        # The listeners it is given (all but the shares and the control line) must be open
        # sockets as it is made: a closed one fails the child's exec, or — its number
        # taken by the spawn's own pipe — is no listener.
        passed_open.append(all(_is_socket(fd) for fd in kwargs["pass_fds"][:-2]))
        return await open_process(*args, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "open_process", open_process_after_sigterm)
    config_path = _config(tmp_path)
    with trio.fail_after(10):
        await supervise(load_config(config_path), config_path, registry=load_registry(), workers=2)
    assert passed_open == [True, True]
    assert caplog.text.count("the gateway is stopping; sending it SIGTERM") == 2
    assert all(process_gone(int(pid)) for _, pid in _STARTED.findall(caplog.text))
    assert not (tmp_path / "gateway.pid").exists()


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


class _ParentWithoutAddress(Backend[BackendSettings]):
    """Runs once in the parent (it would start a server) but cannot say where."""

    Settings = BackendSettings

    @classmethod
    def placement(cls, settings: BackendSettings) -> Placement:
        return "parent"

    def open_response(
        self, request: UpstreamRequest
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        raise NotImplementedError


async def test_a_parent_backend_without_an_address_is_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    """It used to fail with NotImplementedError("... runs in each worker") from the
    backend's address(): the opposite of the problem."""
    registry = Registry(
        {**load_registry().types, "p": BackendType("p", _ParentWithoutAddress, "scratch", "0")}
    )
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        '[server]\nworkers = 2\n[backends.fake]\ntype = "p"\n[routes.chat]\nbackend = "fake"\n'
    )
    config = read_config(config_path, registry=registry)[0]
    with pytest.raises(ConfigError) as refused:
        await supervise(config, config_path, registry=registry, workers=2)
    assert refused.value.message == (
        "backends.fake: backend type 'p' (tests.test_supervisor._ParentWithoutAddress) has "
        'placement "parent" but does not implement address() or reached_at(), which tell '
        'the workers where it runs: implement them, or return "worker" from placement() to '
        "run it in each worker"
    )
