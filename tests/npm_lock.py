"""The npm packages a test needs, installed from their lock the first time it needs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def npm_installed(directory: Path, what: str, *npm_args: str) -> str:
    """``npm ci`` in ``directory`` unless its ``node_modules`` is as new as its lock; fails
    the test, naming ``what`` needs them, without Node.js and npm. Returns ``node``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(f"Node.js and npm are required for {what} (install nodejs, npm)")
    lock = directory / "package-lock.json"
    installed = directory / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", *npm_args],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {directory} failed:\n{done.stdout}\n{done.stderr}")
    return node
