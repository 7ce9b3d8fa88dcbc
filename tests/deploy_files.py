"""deploy/ as the tests read it, shared by test_deploy.py and test_deploy_manifests.py:
the Kubernetes manifests parsed and their objects found by kind and name, the environment
Kubernetes would give the gateway's container, and the Containerfile's instructions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"

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
