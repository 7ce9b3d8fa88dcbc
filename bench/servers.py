"""The processes a benchmark measures, each started ready to serve and pinned as the harness
plans: the fake upstream, ``gateway serve`` (one process or a parent with workers), the
stack's floors, nginx and LiteLLM's proxy. Each is a :class:`Server`: its port, its process,
and the pid whose CPU is the server's (nginx's worker, a gateway's parent with its workers
beside it)."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
GATEWAY_VENV = ROOT / ".venv"
LITELLM_VENV = BENCH / ".venv-litellm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_plan() -> tuple[set[int], set[int]]:
    """(CPUs for the server under test, CPUs for upstream + load generator)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[-1]}, set(cpus[:-1])


def preexec(cpus: set[int]) -> Any:
    def apply() -> None:
        os.setsid()
        os.sched_setaffinity(0, cpus)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))

    return apply


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    pid: int  # the process that serves (nginx: its worker; a gateway's parent with workers)
    key: str = ""
    workers: tuple[int, ...] = ()  # a gateway's worker processes: their CPU counts with pid's
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _wait_http(
    port: int,
    path: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path, headers=headers or {})
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout} s")


def start_upstream(cpus: set[int], workdir: Path) -> Server:
    log_path = workdir / "upstream.log"
    proc = subprocess.Popen(
        [PY, str(BENCH / "upstream.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log_path.open("wb"),
        preexec_fn=preexec(cpus),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("LISTENING"):
        raise RuntimeError(f"upstream did not start: {line!r}")
    return Server("upstream", int(line.split()[1]), proc, proc.pid, log_path=log_path)


def write_gateway_config(
    workdir: Path, upstream_port: int, tag: str = "", workers: int = 1, extra: str = ""
) -> Path:
    """``bench/gateway.toml`` for this run as ``gateway{tag}.toml``: with the upstream's
    port, this run's folder for ``RESULTS_DIR``, ``[server] workers`` when not 1, and the
    tables in ``extra`` appended."""
    text = (BENCH / "gateway.toml").read_text()
    if workers != 1:
        if "\n[server]\n" not in text:
            raise RuntimeError("bench/gateway.toml has no [server] table to set workers in")
        text = text.replace("\n[server]\n", f"\n[server]\nworkers = {workers}\n", 1)
    text = (text + extra).replace("UPSTREAM_PORT", str(upstream_port))
    text = text.replace("RESULTS_DIR", str(workdir.resolve()))
    path = workdir / f"gateway{tag}.toml"
    path.write_text(text)
    return path


def _wait_workers(port: int, proc: subprocess.Popen[bytes], workers: int, timeout: float) -> None:
    """Until every worker of a gateway with ``workers`` processes serves: each reports its
    metrics to the parent once its gateway is open (the merged ``/metrics`` labels each
    one's gauges ``worker="i"``), just before it starts accepting on the parent's socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
            conn.close()
            if all(f'worker="{i}"' in body for i in range(workers)):
                return
        time.sleep(0.1)
    raise RuntimeError(f"gateway on port {port}: not every worker ready after {timeout} s")


def _children(pid: int) -> tuple[int, ...]:
    """The processes ``pid`` started (any of its threads), in pid order."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(x) for x in (task / "children").read_text().split()]
    return tuple(sorted(found))


def start_gateway(
    cpus: set[int],
    workdir: Path,
    upstream_port: int,
    tag: str = "",
    *,
    workers: int = 1,
    extra: str = "",
    key: str = "",
) -> Server:
    """``gateway serve`` on the bench config (see :func:`write_gateway_config`), ready;
    with ``workers`` above 1 the ``Server``'s pid is the parent's and ``workers`` its
    worker processes. ``key``: what the load generator sends as the bearer token."""
    config = write_gateway_config(workdir, upstream_port, tag, workers, extra)
    port = free_port()
    log_path = workdir / f"gateway{tag}.log"
    with log_path.open("wb") as log_file:  # the child has its own copy
        proc = subprocess.Popen(
            [
                str(GATEWAY_VENV / "bin" / "gateway"),
                "serve",
                "--config",
                str(config),
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            preexec_fn=preexec(cpus),
        )
    _wait_http(port, "/healthz", proc, 60)
    pids: tuple[int, ...] = ()
    if workers > 1:
        _wait_workers(port, proc, workers, 60)
        pids = _children(proc.pid)
        if len(pids) != workers:
            raise RuntimeError(f"gateway pid {proc.pid}: {len(pids)} workers, not {workers}")
    return Server("trio-gateway", port, proc, proc.pid, key=key, log_path=log_path, workers=pids)


def start_floor(mode: str, cpus: set[int], workdir: Path, upstream_port: int) -> Server:
    port = free_port()
    log_path = workdir / f"{mode}-floor.log"
    proc = subprocess.Popen(
        [
            str(GATEWAY_VENV / "bin" / "python"),
            str(BENCH / "floor_app.py"),
            mode,
            str(port),
            str(upstream_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        preexec_fn=preexec(cpus),
    )
    _wait_http(port, "/healthz", proc, 60)
    return Server(f"{mode}-floor", port, proc, proc.pid, log_path=log_path)


def start_nginx(cpus: set[int], workdir: Path, upstream_port: int) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = (BENCH / "nginx.conf").read_text()
    text = text.replace("UPSTREAM_PORT", str(upstream_port)).replace("LISTEN_PORT", str(port))
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    log_path = workdir / "nginx.log"
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(prefix)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        preexec_fn=preexec(cpus),
    )
    _wait_http(port, "/nginx-ready", proc, 20)
    worker = proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    with contextlib.suppress(OSError, ValueError, IndexError):
        worker = int(children.read_text().split()[0])
    return Server("nginx", port, proc, worker, log_path=log_path)


def start_litellm(cpus: set[int], workdir: Path, upstream_port: int) -> Server:
    port = free_port()
    text = (BENCH / "litellm.yaml").read_text().replace("UPSTREAM_PORT", str(upstream_port))
    conf = workdir / "litellm.yaml"
    conf.write_text(text)
    key = "sk-bench-" + secrets.token_hex(8)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "LITELLM_", "OPENAI_"))
    }
    env.update(
        LITELLM_MASTER_KEY=key,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
    )
    log_path = workdir / "litellm.log"
    proc = subprocess.Popen(
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(conf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        cwd=workdir,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=preexec(cpus),
    )
    _wait_http(port, "/health/liveliness", proc, 180)
    return Server("litellm", port, proc, proc.pid, key=key, log_path=log_path)
