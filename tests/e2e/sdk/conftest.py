"""Fixtures for driving the gateway with the official OpenAI SDKs, unmodified.

Python: ``openai.OpenAI`` (run in worker threads) and ``openai.AsyncOpenAI``. Node: the
``openai`` npm package on this machine's Node.js, installed by :func:`node_client` from
``tests/node/package-lock.json`` the first time the suite needs it, and driven through
``tests/node/client.mjs`` (its header documents the JSON it reads and writes). The
``@anthropic-ai/sdk`` npm package, from the same lock, through ``tests/node/anthropic.mjs``
(:func:`run_anthropic_node`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.npm_lock import npm_installed

NODE_DIR = Path(__file__).resolve().parents[2] / "node"

RunNode = Callable[..., Awaitable[dict[str, dict[str, Any]]]]


@pytest.fixture(scope="session")
def node_client() -> tuple[str, Path]:
    """(node binary, client script), with the locked npm packages installed."""
    node = npm_installed(NODE_DIR, "the Node SDK tests")
    return node, NODE_DIR / "client.mjs"


def node_runner(node: str, script: Path) -> RunNode:
    """Run ops at once in one Node process through ``script`` (each driver's header
    documents its ops and results) and return their results by id. Fails if Node takes
    longer than ``limit`` seconds: an SDK that hangs is a failure, not a wait."""

    async def run(ops: list[dict[str, Any]], *, limit: float = 30.0) -> dict[str, dict[str, Any]]:
        with trio.fail_after(limit):
            done = await trio.run_process(
                [node, str(script)],
                stdin=json.dumps({"ops": ops}).encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == 0, f"node exited with {done.returncode}:\n{stderr}"
        results = json.loads(done.stdout)["results"]
        return {r["id"]: r for r in results}

    return run


@pytest.fixture
def run_node(node_client: tuple[str, Path]) -> RunNode:
    """``await run_node(ops, limit=...)``: the official ``openai`` package's chat,
    completions and models calls, through ``tests/node/client.mjs``."""
    node, script = node_client
    return node_runner(node, script)


@pytest.fixture(params=["sync", "async"])
def sdk_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run_anthropic_node(node_client: tuple[str, Path]) -> RunNode:
    """``run_node`` for the official ``@anthropic-ai/sdk`` package, through
    ``tests/node/anthropic.mjs``."""
    return node_runner(node_client[0], NODE_DIR / "anthropic.mjs")


@pytest.fixture
def run_responses_node(node_client: tuple[str, Path]) -> RunNode:
    """``run_node`` for the ``openai`` package's Responses API, through
    ``tests/node/responses.mjs``."""
    return node_runner(node_client[0], NODE_DIR / "responses.mjs")
