"""The package's layering: which module may import which.

Two views of the same graph. Statically, from every import statement in ``gateway/`` —
``TYPE_CHECKING`` blocks and imports inside functions included, since a cycle the type
checker sees is still a cycle in the design. And at run time: every module, imported first
and alone, loads and pulls in only what it should.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent

# The one import cycle known today: the config reads the teams' settings through the
# ``gateway.teams`` package, whose service names the config's types back. At run time the
# package loads its service lazily, so only the type checker's graph still has it. A cycle
# found outside these modules fails the test.
KNOWN_CYCLES = frozenset({"gateway.config", "gateway.teams", "gateway.teams.service"})


def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name → (file, is a package ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _named(node: ast.AST, package: str) -> Iterator[str]:
    """The dotted names an import statement may load (a name after ``from X import``
    may be a module or an attribute: both are offered, the caller keeps modules)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = package.split(".")[: package.count(".") + 2 - node.level]
            base = ".".join([*parts, node.module] if node.module else parts)
        else:
            base = node.module or ""
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports. Importing ``a.b.c`` runs ``a.b``'s
    ``__init__`` too, so that is an edge as well — except into the importer's own
    packages, which are already loading when it runs."""
    known = modules(package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        own = name if is_package else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _named(node, own):
                while target:
                    if target in known and target != name and target not in ancestors:
                        edges.add(target)
                    target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module."""
    reach = {name: reachable(graph, name) for name in graph}
    groups: list[set[str]] = []
    for name in sorted(graph):
        if any(name in group for group in groups):
            continue
        group = {name} | {other for other in reach[name] if name in reach[other]}
        if len(group) > 1:
            groups.append(group)
    return groups


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself, on a package that hides a cycle behind ``TYPE_CHECKING``, a
    relative import and an import inside a function."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import top\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .lazy import X\n"
    )
    (pkg / "lazy.py").write_text("def f():\n    from pkg.sub.leaf import g\n")
    (pkg / "alone.py").write_text("import json\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}  # its own package is no edge
    assert graph["pkg.lazy"] == {"pkg.sub", "pkg.sub.leaf"}
    assert cycles(graph) == [{"pkg.lazy", "pkg.sub", "pkg.sub.leaf", "pkg.top"}]
    assert reachable(graph, "pkg.alone") == set()


def test_telemetry_never_reaches_the_service_even_for_the_type_checker() -> None:
    graph = import_graph()
    assert "gateway.telemetry" in graph["gateway.service"]
    assert "gateway.service" not in reachable(graph, "gateway.telemetry")


def test_no_import_cycles_beyond_the_known_one() -> None:
    found = cycles(import_graph())
    assert [group for group in found if not group <= KNOWN_CYCLES] == []
    for name in ("gateway.service", "gateway.telemetry", "gateway.relay", "gateway.app"):
        assert not any(name in group for group in found), name


# Run in a fresh interpreter: for each module, forget every module of the project, then
# import that one first. Third-party modules stay loaded (they cannot be in the project's
# cycles), which keeps this to one interpreter instead of one per module.
_IMPORT_EACH = """
import importlib, json, sys
def ours(name):
    return name.split(".")[0] in ("gateway", "backends")
result = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if ours(m)]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        result[name] = {"error": f"{type(error).__name__}: {error}"}
    else:
        result[name] = {"loaded": sorted(m for m in sys.modules if ours(m))}
print(json.dumps(result))
"""


def test_every_module_imports_first_and_alone() -> None:
    names = sorted(name for name in modules() if not name.endswith(".__main__"))  # runs the CLI
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {name: r["error"] for name, r in result.items() if "error" in r} == {}
    assert "gateway.service" not in result["gateway.telemetry"]["loaded"]
    assert "gateway.telemetry" in result["gateway.service"]["loaded"]


def test_the_readmes_layout_names_every_module_of_the_host() -> None:
    # A module the Layout does not list is one a reader of the README cannot find.
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    # "  name.py  what it is", "  a.py, b.py what they are", "  package/  what it holds"
    entries = [re.match(r" +([\w.]+/?(?:, [\w.]+/?)*)", line) for line in layout.splitlines()]
    listed = {name for entry in entries if entry for name in entry[1].split(", ")}
    ours = {p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("__")}
    ours |= {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert ours - listed == set()


# ``./dev test --fast`` installs the test extras only: no llama-cpp-python. Its selection must
# still collect there — a test module that imports the in-process engine at its top, for a
# sans-I/O helper, broke collection of the whole fast lane on a fresh machine.
_COLLECT_WITHOUT_LLAMA_CPP = """
import sys
sys.modules["llama_cpp"] = None  # import llama_cpp raises ImportError, as where it is missing
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", sys.argv[1],
                      "tests", "plugins"]))
"""


def test_the_fast_lane_collects_without_llama_cpp() -> None:
    dev = (PACKAGE.parent / "dev").read_text(encoding="utf-8")
    heavy = re.search(r'^HEAVY_MARKERS="([^"]+)"$', dev, re.MULTILINE)
    assert heavy is not None, "./dev no longer names its HEAVY_MARKERS"
    done = subprocess.run(
        [sys.executable, "-c", _COLLECT_WITHOUT_LLAMA_CPP, f"not ({heavy[1]})"],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " deselected" in done.stdout.splitlines()[-1]
