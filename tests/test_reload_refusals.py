"""Config reloads refused: the running config serves on, and the log names what was wrong
— the backend that never got ready among several started."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio

from gateway import reload
from gateway.abc import (
    Backend,
    BackendSettings,
    BackendStatus,
    UpstreamRequest,
    UpstreamResponse,
)
from gateway.config import read_config
from gateway.registry import BackendType, Registry, load_registry
from gateway.reload import reload_config
from gateway.service import open_gateway


class Loading(Backend[BackendSettings]):
    """A backend whose model never finishes loading."""

    Settings = BackendSettings

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.status = BackendStatus(health="loading", detail="model loading")
        yield

    def open_response(
        self, request: UpstreamRequest
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        raise NotImplementedError


def config(tmp_path: Path, a: str, z_url: str) -> str:
    return f"""
[usage]
database = "{tmp_path / "usage.sqlite"}"
[responses]
database = "{tmp_path / "responses.sqlite"}"
[backends.a]
{a}
[backends.z]
type = "openai"
url = "{z_url}"
[routes.m]
backend = "a"
"""


async def test_a_replacing_backend_that_never_gets_ready_is_named_and_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `a` (ready) is replaced by one that stays loading; `z`, started after it in the
    # same reload, starts fine. The refusal names `a`, the one not ready.
    monkeypatch.setattr(reload, "READY_TIMEOUT", 0.2)
    caplog.set_level(logging.ERROR, logger="gateway.reload")
    registry = Registry(
        {**load_registry().types, "loading": BackendType("loading", Loading, "t", "0")}
    )
    path = tmp_path / "gateway.toml"
    openai = 'type = "openai"\nurl = "http://127.0.0.1:9/v1"'
    path.write_text(config(tmp_path, openai, "http://127.0.0.1:9/v1"))
    async with open_gateway(read_config(path, registry=registry)[0], registry) as gateway:
        before = dict(gateway.upstreams)
        path.write_text(config(tmp_path, 'type = "loading"', "http://127.0.0.1:10/v1"))
        async with trio.open_nursery() as nursery:
            assert not await reload_config(gateway, path, nursery)
        assert gateway.upstreams == before
    [refusal] = [r.getMessage() for r in caplog.records if r.name == "gateway.reload"]
    assert "backend a did not start: not ready after 0.2 s (model loading)" in refusal
