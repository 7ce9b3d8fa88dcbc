"""deploy/: what the pod runs, the ConfigMap's config and the container image.

The ConfigMap's gateway.toml goes through the gateway's own config loader with the
environment the pod would get, keeps its files on writable volumes, agrees with the
Deployment's mount and args and the image's command, and is served by a real `gateway
serve` that the image's HEALTHCHECK command and the Deployment's probes are run against.
The Containerfile is checked for its base, its install and its build context. The image
itself is built only where a container engine answers (else that one test is skipped,
saying why). The manifests' own checks (schemas, probes and the drain, security, Services
and the autoscaler) are test_deploy_manifests.py's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import build_config, load_config
from tests.deploy_files import (
    CONTAINERFILE,
    REPO,
    arg_after,
    configmap_toml,
    containerfile_instructions,
    env_references,
    exec_form,
    final_stage,
    find,
    gateway_container,
    gateway_deployment,
    healthcheck_command,
    named_port,
    pod_environ,
)

# --- the config in the ConfigMap ------------------------------------------------------


def test_configmap_config_passes_the_gateways_validation(tmp_path: Path) -> None:
    text = configmap_toml()
    raw = tomllib.loads(text)
    environ = pod_environ(gateway_container())
    # Every variable the config names is set in the pod (else the gateway refuses to start).
    missing = env_references(raw) - set(environ)
    assert not missing, f"the Deployment does not set {sorted(missing)}"
    config = build_config(raw, environ=environ)
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path, environ=environ) == config

    assert config.state.redis is not None  # limits shared by the replicas
    assert [b.type for b in config.backends.values()] == ["openai"]  # the image serves remote ones
    assert config.teams, "the example shows keys coming from the Secret"
    # The Redis URL the pod gets names the Redis Service in the manifests, on its port.
    redis_url = environ["REDIS_URL"]
    service = find("Service", "trio-gateway-redis")
    assert f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/" in redis_url
    assert "$(" not in redis_url


def test_configmap_config_without_its_environment_is_refused() -> None:
    """The placeholders really come from the environment: without them, a config error."""
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="environment variable"):
        build_config(tomllib.loads(configmap_toml()), environ={})


def test_sqlite_files_are_on_a_writable_volume() -> None:
    config = build_config(tomllib.loads(configmap_toml()), environ=pod_environ(gateway_container()))
    container = gateway_container()
    volumes = {v["name"]: v for v in gateway_deployment()["spec"]["template"]["spec"]["volumes"]}
    writable = [
        Path(m["mountPath"])
        for m in container["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # `gateway serve` writes its pid file to the temp directory unless [server] pid_file
    # says where; the pod sets no TMPDIR, so that is /tmp.
    assert "TMPDIR" not in pod_environ(container)
    pid_file = Path(config.server.pid_file or "/tmp/trio-gateway.pid")
    for path in (
        Path(config.usage.database),
        config.responses.database_path(config.usage),
        pid_file,
    ):
        assert path.is_absolute()
        assert path.parent in writable, (path, writable)


def test_config_mount_and_args_agree() -> None:
    container = gateway_container()
    args = container["args"]
    config_path = Path(arg_after(args, "--config"))
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["readOnly"] is True
    assert config_path.parent == Path(mount["mountPath"])
    (volume,) = [
        v
        for v in gateway_deployment()["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "config"
    ]
    configmap = find("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in configmap["data"]
    # The container listens where the probes and the Service go.
    host, port = arg_after(args, "--bind").rsplit(":", 1)
    assert host == "0.0.0.0"
    assert named_port(container, "http") == int(port)
    # The image's default command is the same.
    (cmd,) = [a for name, a in final_stage() if name == "CMD"]
    (entrypoint,) = [a for name, a in final_stage() if name == "ENTRYPOINT"]
    image_args = exec_form(cmd)
    assert exec_form(entrypoint) == ["gateway"]
    assert image_args[0] == "serve"
    assert arg_after(image_args, "--config") == str(config_path)
    assert arg_after(image_args, "--bind") == arg_after(args, "--bind")


# --- the Containerfile ----------------------------------------------------------------


def test_containerfile() -> None:
    instructions = containerfile_instructions()
    bases = {a.split()[0] for name, a in instructions if name == "FROM"}
    (arg,) = [a for name, a in instructions if name == "ARG" and a.startswith("PYTHON_IMAGE=")]
    assert bases == {"${PYTHON_IMAGE}"}
    assert arg == "PYTHON_IMAGE=python:3.11-slim"
    runs = " ".join(a for name, a in instructions if name == "RUN")
    # The default install: no `local`/`llamacpp` extra, nothing compiled, pinned versions.
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs)
    assert "[local" not in runs and "llamacpp]" not in runs
    # Healthcheck on /healthz without curl.
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2] and "/healthz" in command[2]
    # Only what the install needs is in the build context.
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore
    copied = {
        part.rstrip("/").removeprefix("./")
        for name, a in instructions
        if name == "COPY" and not a.startswith("--from")
        for part in a.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "constraints.txt", "gateway", "backends"}
    for path in copied:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, path


# --- the ConfigMap's config, served ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def served_configmap(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`gateway serve` on the ConfigMap's config, as the pod runs it: the pod's environment
    (placeholder secrets; Redis unreachable, so limits fail open), the SQLite paths moved
    from the pod's volume to tmp_path, bound on a free local port instead of 0.0.0.0:8080."""
    text = configmap_toml().replace("/var/lib/trio-gateway", str(tmp_path))
    config = tmp_path / "gateway.toml"
    config.write_text(text, encoding="utf-8")
    port = free_port()
    environ = pod_environ(gateway_container())
    environ["REDIS_URL"] = f"redis://:placeholder@127.0.0.1:{free_port()}/0"
    args = list(gateway_container()["args"])
    args[args.index("--config") + 1] = str(config)
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_status(f"http://127.0.0.1:{port}/healthz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_configmap_config_serves_the_probes_and_the_healthcheck(
    served_configmap: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = served_configmap
    container = gateway_container()
    for probe in ("readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert http_status(f"http://127.0.0.1:{port}{path}") == 200, probe
    # The image's HEALTHCHECK command, as written, against this gateway.
    command = healthcheck_command()
    script = command[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert script != command[2]
    assert subprocess.run([sys.executable, "-c", script], check=False, timeout=30).returncode == 0
    # The same command fails (exit 1) where nothing healthy answers.
    dead = command[2].replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [sys.executable, "-c", dead], check=False, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    # SIGTERM (what Kubernetes sends after preStop) ends it cleanly, well within the grace.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


# --- the image, where a container engine answers --------------------------------------


def container_engine() -> str:
    """The path of a docker or podman that answers, or skip saying why there is none."""
    found = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            continue
        result = subprocess.run(
            [path, "info"], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode == 0:
            return path
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        found.append(f"{name} is on PATH but `{name} info` failed ({why})")
    if not found:
        pytest.skip("no container engine (docker/podman) on PATH")
    pytest.skip("no container engine answers: " + "; ".join(found))


@pytest.mark.slow
def test_image_builds_and_runs(tmp_path: Path) -> None:
    engine = container_engine()
    base = "python:3.11-slim"

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [engine, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    if run("image", "inspect", base).returncode != 0:
        pulled = run("pull", base, timeout=600)
        if pulled.returncode != 0:
            pytest.skip(f"{engine} cannot pull the base image {base}: {pulled.stderr.strip()}")
    tag = f"trio-gateway-test:{os.getpid()}"
    # podman: the docker format keeps HEALTHCHECK (OCI images have no place for it).
    fmt = ["--format", "docker"] if Path(engine).name == "podman" else []
    built = subprocess.run(
        [engine, "build", *fmt, "-f", str(CONTAINERFILE), "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    name = f"trio-gateway-test-{os.getpid()}"
    try:
        uid = run("run", "--rm", "--entrypoint", "id", tag, "-u")
        assert uid.returncode == 0, uid.stderr
        pod_uid = gateway_deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        assert uid.stdout.strip() == str(pod_uid)

        # The ConfigMap's config, mounted where the Deployment mounts it, with the pod's
        # environment: `gateway check` passes in the image (as its non-root user).
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "gateway.toml").write_text(configmap_toml(), encoding="utf-8")
        etc.chmod(0o755)
        (etc / "gateway.toml").chmod(0o644)
        environ = pod_environ(gateway_container())
        environ["REDIS_URL"] = "redis://:placeholder@127.0.0.1:1/0"  # unreachable: fails open
        env_args = [arg for k, v in environ.items() for arg in ("-e", f"{k}={v}")]
        mount = ["-v", f"{etc}:/etc/trio-gateway:ro"]
        # [usage] database is in /var/lib/trio-gateway: no volume here, but in the image
        # that directory exists and belongs to the image's user.
        config_path = arg_after(gateway_container()["args"], "--config")
        checked = run("run", "--rm", *mount, *env_args, tag, "check", "--config", config_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # Served with the image's own command: its HEALTHCHECK command succeeds inside it.
        started = run("run", "-d", "--name", name, *mount, *env_args, tag)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 60
        while run("exec", name, *healthcheck_command()).returncode != 0:
            assert time.monotonic() < deadline, run("logs", name).stderr
            time.sleep(1)
        stopped = run("stop", "-t", "70", name, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        code = run("inspect", "--format", "{{.State.ExitCode}}", name)
        assert code.stdout.strip() == "0", run("logs", name).stderr
    finally:
        run("rm", "-f", name)
        run("rmi", "-f", tag)
