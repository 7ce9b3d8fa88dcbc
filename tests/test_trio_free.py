"""The sans-I/O modules import no trio, directly or through anything they import (a
package's ``__init__`` included): each is imported first and alone in a fresh interpreter,
which then must not have loaded trio."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The sans-I/O cores (issue 16, item 7), the plugin API (plugins' own sans-I/O translation
# imports it), and the teams' pure modules.
TRIO_FREE = (
    "gateway.routing",
    "gateway.balancer",
    "gateway.config",
    "gateway.sse",
    "gateway.errors",
    "gateway.overflow_words",
    "gateway.timers",
    "gateway.keepalive",
    "gateway.testing.fake_answers",
    "gateway.abc",
    "gateway.chunks",
    "gateway.dialects",
    "gateway.dialects.anthropic_request",
    "gateway.dialects.anthropic_validate",
    "gateway.dialects.checks",
    "gateway.dialects.anthropic_answer",
    "gateway.dialects.responses",
    "gateway.dialects.responses_request",
    "gateway.dialects.responses_validate",
    "gateway.dialects.responses_answer",
    "gateway.dialects.responses_custom",
    "gateway.dialects.responses_stream",
    "gateway.plans",
    "gateway.sqlite_files",
    "gateway.teams.keys",
    "gateway.teams.limits",
    "gateway.teams.settings",
)

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps({
    "trio": "trio" in sys.modules,
    "ours": sorted(m for m in sys.modules if m.split(".")[0] == "gateway"),
}))
"""


def loads_trio(module: str) -> tuple[bool, list[str]]:
    """Whether importing ``module`` alone loads trio, and the gateway modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    return result["trio"], result["ours"]


def test_the_probe_sees_trio_where_it_is_imported() -> None:
    trio_loaded, ours = loads_trio("gateway.writer")
    assert trio_loaded
    assert "gateway.writer" in ours


@pytest.mark.parametrize("module", TRIO_FREE)
def test_imports_no_trio(module: str) -> None:
    trio_loaded, ours = loads_trio(module)
    assert not trio_loaded, f"importing {module} loads trio; it loaded {ours}"
