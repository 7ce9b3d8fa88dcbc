"""What a benchmark run records about where it ran, beside its numbers: the versions of
everything measured (the gateway's commit, its stack, nginx, LiteLLM, the harness's uvloop),
the kernel and CPU, and the load average when each measurement starts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path

from servers import GATEWAY_VENV, LITELLM_VENV, PY, ROOT


def _out(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (done.stdout or done.stderr).decode().strip()


def versions() -> dict[str, str]:
    def dist(python: Path, *names: str) -> dict[str, str]:
        code = (
            "import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = 'missing'\n"
            "print(json.dumps(out))"
        )
        text = _out([str(python), "-c", code, *names])
        try:
            return dict(json.loads(text))
        except ValueError:
            return {n: "unknown" for n in names}

    commit = _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _out(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "backends"])
    info: dict[str, str] = {
        "trio-gateway": f"{commit}{' + uncommitted changes' if dirty else ''}",
        "python (harness)": platform.python_version(),
        "nginx": _out(["nginx", "-v"]).replace("nginx version: ", ""),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
    }
    for name, version in dist(
        GATEWAY_VENV / "bin" / "python", "hypercorn", "quart-trio", "trio", "httpx", "h11"
    ).items():
        info[f"{name} (gateway)"] = version
    for name, version in dist(
        LITELLM_VENV / "bin" / "python", "litellm", "uvicorn", "uvloop"
    ).items():
        info[f"{name} (litellm venv)"] = version
    info["uvloop (harness)"] = dist(Path(PY), "uvloop")["uvloop"]
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()}"
    return f"×{os.cpu_count()}"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
