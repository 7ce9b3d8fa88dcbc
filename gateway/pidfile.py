"""Where a serving gateway's pid is found, so that ``gateway reload`` can signal it.

``gateway serve --config PATH`` writes its pid to ``[server] pid_file`` or, by default, to
a file in the temp directory named after PATH (resolved): ``gateway reload --config PATH``
then finds the gateway that serves that file without being told more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .config import GatewayConfig


def pid_path(config: GatewayConfig, config_path: Path) -> Path:
    if config.server.pid_file is not None:
        return Path(config.server.pid_file)
    key = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"trio-gateway-{key}.pid"


def write_pid(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n", encoding="ascii")


def remove_pid(path: Path) -> None:
    """Remove the file if it is still this process's."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii")) == os.getpid():
            path.unlink()


def read_pid(path: Path) -> int:
    """The pid in ``path``. Raises :class:`OSError` or :class:`ValueError`."""
    return int(path.read_text(encoding="ascii").strip())
