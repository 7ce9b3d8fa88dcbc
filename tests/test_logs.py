"""The process's logging, as ``gateway serve`` sets it up."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.logs import configure_logging


@pytest.fixture
def restored() -> Iterator[None]:
    """The root logger and the loggers configure_logging touches, put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level
    access = logging.getLogger("hypercorn.access").disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.getLogger("hypercorn.access").disabled = access


@pytest.mark.usefixtures("restored")
def test_httpx_request_lines_only_when_debugging() -> None:
    # The backends' health and load reads go through httpx: two INFO lines a second per
    # llama-server drowned the gateway's own.
    configure_logging("info", "text")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("gateway").isEnabledFor(logging.INFO)
    configure_logging("debug", "text")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("hypercorn.access").disabled
