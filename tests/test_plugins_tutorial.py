"""plugins/README.md is a test: its files, written out exactly as the tutorial shows them,
make a distribution that installs, registers its backend, validates its example config, and
passes its own tests — the conformance suite and an end-to-end test through a gateway."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "plugins" / "README.md"

# A fenced block that names its file: ```python title="tests/test_parrot.py"
_FILE_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def tutorial_files() -> dict[str, str]:
    return {path: text for path, text in _FILE_BLOCK.findall(TUTORIAL.read_text())}


def run(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=300, env=env, cwd=cwd, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The tutorial's folder, and an environment in which it is pip-installed (into a
    target directory on PYTHONPATH, so the shared environment is left as it was)."""
    root = tmp_path_factory.mktemp("tutorial")
    project = root / "parrot"
    for name, text in tutorial_files().items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    site = root / "site"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(site),
        str(project),
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project, env


def test_the_tutorial_shows_every_file_of_its_folder() -> None:
    assert set(tutorial_files()) == {
        "pyproject.toml",
        "gateway.toml",
        "trio_gateway_parrot/__init__.py",
        "tests/test_parrot.py",
    }


def test_the_installed_tutorial_backend_is_listed_with_its_settings(
    installed: tuple[Path, dict[str, str]],
) -> None:
    _, env = installed
    result = run(sys.executable, "-m", "gateway", "plugins", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("parrot  trio-gateway-parrot 0.1.0  (trio_gateway_parrot.ParrotBackend)")
    assert lines[start + 1 : start + 3] == [
        "    words_per_second: float (default 20.0)  how fast the parrot talks",
        "    think: float (default 0.0)  seconds of silence before the first word",
    ]


def test_the_tutorial_config_is_valid(installed: tuple[Path, dict[str, str]]) -> None:
    project, env = installed
    result = run(
        sys.executable, "-m", "gateway", "check", "--config", str(project / "gateway.toml"), env=env
    )
    assert result.returncode == 0, result.stderr
    assert "1 backend(s), 1 route(s)" in result.stdout


def test_the_tutorial_tests_pass(installed: tuple[Path, dict[str, str]]) -> None:
    project, env = installed
    result = run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests",
        env=env,
        cwd=project,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]
    assert passed >= 15, summary  # the suite's tests and the tutorial's own
    assert "failed" not in summary and "skipped" not in summary, summary
