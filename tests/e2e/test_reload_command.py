"""`gateway reload`, the command, against `gateway serve` in a process of its own: where it
finds the gateway (a ConfigMap's symlinked mount across an update), what it refuses to
signal (a pid file no gateway holds), and what it leaves to the gateway (``--no-check``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from gateway.pidfile import default_pid_path, hold_pid_file, signal_holder
from gateway.testing.fake_openai import FakeOpenAI
from tests.gateway_process import GatewayProcess, process_gone, run_gateway_command

RELOADED = re.compile(r"config reloaded")
UNSET = "TRIO_GATEWAY_TEST_RELOAD_KEY"


def config_text(fake: FakeOpenAI, tmp_path: Path, *, server: str = "", backend: str = "") -> str:
    return (
        f'[server]\nbind = "127.0.0.1:0"\n{server}\n'
        f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n{backend}\n'
        '[routes.m]\nbackend = "fake"\n'
        f'[responses]\ndatabase = "{tmp_path / "responses.sqlite"}"\n'
    )


async def reload(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = await trio.run_process(
        [sys.executable, "-m", "gateway", "reload", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def stop(gateway: GatewayProcess) -> None:
    gateway.process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        assert await gateway.process.wait() == 0


async def test_reload_finds_the_gateway_after_a_configmap_update(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Kubernetes mounts a ConfigMap as ``gateway.toml -> ..data/gateway.toml`` and an
    update points ``..data`` at a new directory. The default pid file is named after the
    mounted path, not where it resolves to, so `gateway reload` still finds the gateway
    (it used to look for the new directory's pid file: "no running gateway")."""
    mount = tmp_path / "mount"
    (mount / "..2026_01_01_v1").mkdir(parents=True)
    (mount / "..2026_01_01_v1" / "gateway.toml").write_text(config_text(fake, tmp_path))
    (mount / "..data").symlink_to("..2026_01_01_v1")
    (mount / "gateway.toml").symlink_to("..data/gateway.toml")
    config = mount / "gateway.toml"
    async with run_gateway_command(config) as gateway:
        await gateway.url()
        (mount / "..2026_01_02_v2").mkdir()
        (mount / "..2026_01_02_v2" / "gateway.toml").write_text(
            config_text(fake, tmp_path) + '[routes.n]\nbackend = "fake"\n'
        )
        (mount / "..data_tmp").symlink_to("..2026_01_02_v2")
        (mount / "..data_tmp").replace(mount / "..data")  # as the kubelet swaps it
        done = await reload("--config", str(config))
        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to the gateway (pid {gateway.process.pid})" in done.stdout
        await gateway.wait_for_line(RELOADED, within=10)
        assert default_pid_path(config).read_text() == f"{gateway.process.pid}\n"
        await stop(gateway)
    assert not default_pid_path(config).exists()


async def test_a_pid_file_no_gateway_holds_is_refused_and_its_pid_not_signalled(
    tmp_path: Path,
) -> None:
    """A pid file left behind names a pid that another process has now. `gateway reload`
    signals only a pid whose file a serving gateway holds locked: here it sends nothing
    (the process blocks SIGHUP, so a signal sent would show as pending) and exits 1."""
    pid_file = tmp_path / "gateway.pid"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\npid_file = "{pid_file}"\n'
        '[backends.b]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        '[routes.m]\nbackend = "b"\n'
    )
    blocking_sleep = (
        "import os, signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}); "
        "os.execvp('sleep', ['sleep', '600'])"
    )
    other = await trio.lowlevel.open_process([sys.executable, "-c", blocking_sleep])
    try:
        pid_file.write_text(f"{other.pid}\n")
        done = await reload("--config", str(config))
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr.splitlines() == [
            f"no running gateway for {config}: pid file {pid_file} (pid {other.pid}) is "
            "stale: no gateway holds it, its gateway did not stop cleanly; nothing sent"
        ]
        assert not process_gone(other.pid)
        assert _pending_signals(other.pid) & (1 << (signal.SIGHUP - 1)) == 0
    finally:
        other.kill()
        await other.wait()


def _pending_signals(pid: int) -> int:
    """The signals pending for process ``pid`` (its threads' and its own), as a mask."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


async def test_a_killed_gateways_pid_file_is_stale(fake: FakeOpenAI, tmp_path: Path) -> None:
    """The lock goes with the process however it ends: after SIGKILL its file is left, and
    no longer held."""
    pid_file = tmp_path / "gateway.pid"
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(fake, tmp_path, server=f'pid_file = "{pid_file}"'))
    async with run_gateway_command(config) as gateway:
        await gateway.url()
        done = await reload("--config", str(config))
        assert done.returncode == 0, done.stderr
        gateway.process.kill()
        await gateway.process.wait()
    assert pid_file.read_text() == f"{gateway.process.pid}\n"
    done = await reload("--config", str(config))
    assert done.returncode == 1
    assert "is stale: no gateway holds it" in done.stderr


async def test_no_check_leaves_the_check_to_the_gateways_own_environment(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A gateway served with a variable its config names, reloaded from a shell without
    it: the checked reload is refused here (exit 2, nothing sent) and says so, pointing at
    ``--no-check``; with ``--no-check`` the gateway gets the signal and reloads."""
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(fake, tmp_path, backend=f'api_key = {{ env = "{UNSET}" }}'))
    environ = {**os.environ, UNSET: "sk-test"}
    async with run_gateway_command(config, env=environ) as gateway:
        await gateway.url()
        without = {k: v for k, v in os.environ.items() if k != UNSET}
        refused = await reload("--config", str(config), env=without)
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert refused.stderr.splitlines() == [
            f"config error in {config}:",
            f"backends.fake.api_key: environment variable {UNSET} is not set",
            f"{UNSET} not set in this environment: if the gateway's has it, `gateway reload "
            "--no-check` sends the signal without this check (the gateway checks the file "
            "itself and refuses a bad one)",
        ]
        done = await reload("--config", str(config), "--no-check", env=without)
        assert done.returncode == 0, done.stderr
        await gateway.wait_for_line(RELOADED, within=10)
        assert gateway.log.count("received SIGHUP") == 1
        await stop(gateway)


def test_a_pid_file_replaced_by_another_gateway_is_left_to_it(tmp_path: Path) -> None:
    """A gateway starting while another still drains puts its own file in place; the
    draining one, ending, leaves that file alone, and it is still held."""
    path = tmp_path / "gateway.pid"
    with contextlib.ExitStack() as later:
        with hold_pid_file(path):  # the draining one
            earlier_file = path.stat().st_ino
            later.enter_context(hold_pid_file(path))
            later_file = path.stat().st_ino
            assert later_file != earlier_file
        assert path.stat().st_ino == later_file
        assert signal_holder(path, 0) == os.getpid()  # signal 0: held, nothing sent
    assert not path.exists()
