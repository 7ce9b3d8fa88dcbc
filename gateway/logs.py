"""Log set-up for ``gateway serve``: text or JSON lines on stderr.

Access-log records (logger ``gateway.access``) are JSON documents already and are written
as they are, one line each, in both formats. Nothing logged carries a request's headers or
body, so no client key or configured secret reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Formatter(logging.Formatter):
    def __init__(self, fmt: LogFormat) -> None:
        super().__init__(_TEXT)
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "gateway.access":
            return record.getMessage()
        if not self._json:
            return super().format(record)
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def configure_logging(level: str, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn's own access log would duplicate ours
    logging.getLogger("hypercorn.access").disabled = True
    # httpx logs each request at INFO: the backends' health and load reads, twice a second
    # per llama-server. Shown when debugging.
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    )
