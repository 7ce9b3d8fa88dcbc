"""deploy/: the container image definition and the Kubernetes manifests.

Every manifest is validated against the Kubernetes API schemas that the pinned
kubernetes-validate ships (offline, strict: unknown fields are errors) for the versions in
``K8S_VERSIONS``; then what the schemas cannot see is checked: the probes' paths, a drain
that fits in the termination grace period of the ConfigMap's own config, non-root, every
Secret and ConfigMap reference resolving, the Services and the HPA finding their targets.
The ConfigMap's gateway.toml goes through the gateway's own config loader with the
environment the pod would get, and is served by a real `gateway serve` that the image's
HEALTHCHECK command and the Deployment's probes are run against. The image itself is built
only where a container engine answers (else that one test is skipped, saying why).
"""

from __future__ import annotations

import json
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
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import build_config, load_config
from gateway.server import _ABORT_GRACE

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"

# The Kubernetes versions the manifests must be valid for: the oldest we claim, and the
# newest the locked kubernetes-validate (constraints.txt) has schemas for.
K8S_VERSIONS = ("1.30", "1.37")

Doc = dict[str, Any]


# --- reading the manifests ------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def all_docs() -> list[tuple[str, Doc]]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((path.name, doc))
    return out


def find(kind: str, name: str) -> Doc:
    matches = [d for _, d in all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def gateway_deployment() -> Doc:
    return find("Deployment", "trio-gateway")


def gateway_container() -> Doc:
    (container,) = gateway_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def secret_values(name: str) -> dict[str, str]:
    secret = find("Secret", name)
    return {**secret.get("stringData", {})}


def configmap_toml() -> str:
    return str(find("ConfigMap", "trio-gateway-config")["data"]["gateway.toml"])


def pod_environ(container: Doc) -> dict[str, str]:
    """The environment Kubernetes would give ``container``: Secret values (the shipped
    placeholders) and literal values with ``$(VAR)`` expanded from the ones before."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(var["value"])
            )
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_values(ref["name"])[ref["key"]]
    return env


def env_references(value: Any) -> set[str]:
    """Every ``{ env = "NAME" }`` in a parsed TOML document."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            return {value["env"]}
        return set().union(*(env_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(env_references(v) for v in value))
    return set()


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def named_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def prestop_seconds(container: Doc) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [
        line
        for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = containerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    (args,) = [a for name, a in final_stage() if name == "HEALTHCHECK"]
    _, cmd = args.split(" CMD ", 1)
    return exec_form(cmd.strip())


# --- the schemas ----------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    kinds = {d["kind"] for _, d in all_docs()}
    assert kinds == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    (image,) = kustomization["images"]
    assert image["name"] == gateway_container()["image"].split(":")[0]


def _schema_versions() -> list[str]:
    return list(kubernetes_validate.utils.all_versions())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_pinned_schemas(version: str) -> None:
    assert version in {kubernetes_validate.utils.major_minor(v) for v in _schema_versions()}
    docs = all_docs()
    assert len(docs) >= 8
    for filename, doc in docs:
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            pytest.fail(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: {where}: {error}")
        assert used == version, (filename, used)


def test_the_validation_is_strict() -> None:
    """The check above would catch a misspelt field (it is not vacuous)."""
    doc = json.loads(json.dumps(gateway_deployment()))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    doc = json.loads(json.dumps(gateway_deployment()))
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


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


# --- probes and the drain -------------------------------------------------------------


def test_probes() -> None:
    container = gateway_container()
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert named_port(container, readiness["port"]) == named_port(container, liveness["port"])
    assert named_port(container, readiness["port"]) == 8080


def test_termination_grace_outlasts_prestop_and_the_drain() -> None:
    """Kubernetes counts terminationGracePeriodSeconds from the start of preStop; after the
    pause comes SIGTERM, then `shutdown_delay`, then `graceful_timeout` for streams, then
    the gateway's own few seconds to end the rest with an error event. All of it must end
    before the SIGKILL."""
    config = build_config(tomllib.loads(configmap_toml()), environ=pod_environ(gateway_container()))
    container = gateway_container()
    pause = prestop_seconds(container)
    grace = gateway_deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause >= 5, "the pause must outlast endpoint removal at kube-proxy and balancers"
    drain = pause + config.server.shutdown_delay + config.server.graceful_timeout + _ABORT_GRACE
    assert grace > drain, (grace, drain)
    # The readiness probe sees a stopping pod within the pause.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= pause


def test_rollout_keeps_capacity() -> None:
    spec = gateway_deployment()["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", "trio-gateway")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(gateway_deployment()).items()
    )
    assert pdb["spec"]["minAvailable"] < spec["replicas"]


# --- security -------------------------------------------------------------------------


def test_runs_as_non_root() -> None:
    for deployment in (gateway_deployment(), find("Deployment", "trio-gateway-redis")):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
    # The image's user is the one the pod asks for, by number (so runAsNonRoot can check it).
    (user,) = [a for name, a in final_stage() if name == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    pod = gateway_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_every_secret_and_configmap_reference_resolves() -> None:
    for _, doc in all_docs():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secret_values(ref["name"]), ref
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                find("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                find("Secret", volume["secret"]["secretName"])
    # Placeholder keys admit nobody: hashes that no key has.
    for name in ("team-example-key", "admin-key"):
        assert re.fullmatch(r"sha256:0{64}", secret_values("trio-gateway-secrets")[name])


# --- Services and the autoscaler ------------------------------------------------------


def pod_labels(deployment: Doc) -> dict[str, str]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    return dict(labels)


def test_services_select_their_deployments_only() -> None:
    deployments = [d for _, d in all_docs() if d["kind"] == "Deployment"]
    for service_name, deployment_name in (
        ("trio-gateway", "trio-gateway"),
        ("trio-gateway-redis", "trio-gateway-redis"),
    ):
        service = find("Service", service_name)
        selector = service["spec"]["selector"].items()
        selected = [d["metadata"]["name"] for d in deployments if selector <= pod_labels(d).items()]
        assert selected == [deployment_name], (service_name, selected)
        (container,) = find("Deployment", deployment_name)["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            named_port(container, port["targetPort"])  # a port the container has


def test_hpa_scales_the_gateway_on_cpu() -> None:
    hpa = find("HorizontalPodAutoscaler", "trio-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = gateway_deployment()
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is a share of the request: the container must have one.
    assert gateway_container()["resources"]["requests"]["cpu"]


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
