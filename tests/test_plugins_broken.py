"""A broken plugin installed beside the good ones: ``gateway plugins`` names it and says
why, and ``gateway serve`` logs it and starts with every other backend."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from .test_registry import install_fake_distribution, write_module


@pytest.fixture
def broken_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    write_module(site, "plugin_import_error", "import no_such_module_anywhere\n")
    write_module(site, "plugin_not_a_backend", "class Thing:\n    pass\n")
    install_fake_distribution(
        site,
        "trio-gateway-broken",
        {
            "broken-import": "plugin_import_error:Backend",
            "broken-class": "plugin_not_a_backend:Thing",
        },
    )
    return {**os.environ, "PYTHONPATH": str(site)}


def test_gateway_plugins_reports_the_broken_ones_and_lists_the_rest(
    broken_env: dict[str, str],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        env=broken_env,
        check=False,
    )
    assert result.returncode == 1, "a broken plugin makes the listing fail, for scripts"
    lines = result.stdout.splitlines()
    assert (
        "BROKEN broken-import  trio-gateway-broken 1.2.3: import failed: ModuleNotFoundError: "
        "No module named 'no_such_module_anywhere'"
    ) in lines
    assert any(
        line.startswith(
            "BROKEN broken-class  trio-gateway-broken 1.2.3: plugin_not_a_backend:"
            "Thing is <class 'plugin_not_a_backend.Thing'>, not a gateway.abc.Backend"
        )
        for line in lines
    )
    for listed in (
        "openai  trio-gateway ",
        "llamacpp-python  trio-gateway ",
        "simulator  trio-gateway-simulator 0.1.0 ",
        "ollama  trio-gateway-ollama 0.1.0 ",
    ):
        assert any(line.startswith(listed) for line in lines), listed
    assert "    tokens_per_second: float (default 50.0)" in lines
    assert "    url: str (required)  Ollama's base URL, e.g. http://127.0.0.1:11434" in lines


async def test_gateway_serve_starts_with_the_rest(
    broken_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[backends.sim]\ntype = "simulator"\nmax_tokens = 3\n'
        '[backends.llama]\ntype = "ollama"\nurl = "http://127.0.0.1:9"\n'
        '[routes.sim]\nbackend = "sim"\n'
        '[routes.llama]\nbackend = "llama"\n'
    )
    command = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--bind",
        "127.0.0.1:0",
    ]
    log = b""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, env=broken_env, check=False)
        )
        assert process.stderr is not None
        with trio.fail_after(60):
            while (found := re.search(rb"serving on (http://\S+)", log)) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"gateway serve exited: {log.decode(errors='replace')}"
                log += chunk
        async with httpx.AsyncClient(base_url=found.group(1).decode(), timeout=30) as client:
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": "sim", "messages": [{"role": "user", "content": "hi"}]},
            )
        process.send_signal(signal.SIGTERM)
        async for chunk in process.stderr:
            log += chunk
    text = log.decode(errors="replace")
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "The quick brown "
    assert "backend plugin broken-import (trio-gateway-broken) not loaded: import failed" in text
    assert "backend plugin broken-class (trio-gateway-broken) not loaded" in text
    assert process.returncode == 0, text
