"""The plugin API is whole: the built-in backends and the example plugins import from the
gateway only what any plugin may (``gateway.abc``, and only the names it exports), read
statically from every import statement of their sources."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import backends
import gateway.abc

ROOT = Path(backends.__file__).parent.parent
# The code that must keep to the plugin API: the built-ins, and the example plugins' packages
# (their tests may use gateway.testing too).
PLUGIN_CODE = {
    "backends": ROOT / "backends",
    "simulator": ROOT / "plugins" / "simulator" / "trio_gateway_simulator",
    "ollama": ROOT / "plugins" / "ollama" / "trio_gateway_ollama",
}
ALLOWED_MODULE = "gateway.abc"


def gateway_imports(source: str) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for each name imported from the ``gateway`` package
    (``name`` is None for ``import gateway.x``). Imports inside functions and
    ``TYPE_CHECKING`` blocks count: they are the same dependency."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gateway":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            top = node.module.split(".")[0]
            yield from ((node.lineno, node.module, a.name) for a in node.names if top == "gateway")


def leaks(source: str) -> list[str]:
    """What ``source`` imports from the gateway beyond :mod:`gateway.abc`'s exports."""
    found = []
    for line, module, name in gateway_imports(source):
        if module == "gateway" and name is not None:
            module, name = f"gateway.{name}", None  # from gateway import x: the module x
        if module != ALLOWED_MODULE:
            found.append(f"line {line}: {module}")
        elif name is not None and name not in gateway.abc.__all__:
            found.append(f"line {line}: {module}.{name} (not in gateway.abc.__all__)")
    return found


def test_the_checker_sees_every_form_of_import() -> None:
    source = (
        "import gateway.errors\n"
        "from gateway import config, abc\n"
        "from gateway.abc import Backend, _private\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.relay import x\n"
        "def f():\n"
        "    from gateway.testing.serving import open_test_gateway\n"
        "from . import gateway\n"  # a sibling module of that name: not the package
    )
    assert leaks(source) == [
        "line 1: gateway.errors",
        "line 2: gateway.config",
        "line 3: gateway.abc._private (not in gateway.abc.__all__)",
        "line 6: gateway.relay",
        "line 8: gateway.testing.serving",
    ]


@pytest.mark.parametrize("code", sorted(PLUGIN_CODE))
def test_backends_import_only_the_plugin_api(code: str) -> None:
    sources = sorted(PLUGIN_CODE[code].rglob("*.py"))
    assert sources
    problems = {
        str(path.relative_to(ROOT)): found
        for path in sources
        if (found := leaks(path.read_text(encoding="utf-8")))
    }
    assert problems == {}


def test_every_exported_name_exists() -> None:
    missing = [name for name in gateway.abc.__all__ if not hasattr(gateway.abc, name)]
    assert missing == []
    assert len(set(gateway.abc.__all__)) == len(gateway.abc.__all__)


def test_every_error_a_backend_may_raise_is_exported() -> None:
    """Every error the gateway maps for a backend — the upstream family, the config error,
    invalid input, shutting down, overload — comes from gateway.abc."""
    from gateway import errors

    for name in (
        "GatewayError",
        "ConfigError",
        "InvalidRequest",
        "ShuttingDown",
        "Overloaded",
        "UpstreamError",
        "UpstreamConnectError",
        "UpstreamProtocolError",
        "UpstreamStatusError",
        "UpstreamTimeout",
    ):
        assert getattr(gateway.abc, name) is getattr(errors, name), name
