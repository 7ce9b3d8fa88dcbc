"""Backend hosts: each backend's resources held by a task of its own, started and stopped
alone (a config reload), all stopped on the way out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.lowlevel

from gateway.abc import Backend, BackendSettings, UpstreamRequest, UpstreamResponse
from gateway.backend_hosts import BackendStartError, open_backend_hosts


class Held(Backend):
    """Records its life; ``fail_on``: ``"start"`` or ``"stop"`` raises there."""

    def __init__(self, id: str, fail_on: str = "") -> None:
        super().__init__(id, BackendSettings(type="held"))
        self.fail_on = fail_on
        self.events: list[str] = []

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self.fail_on == "start":
            raise RuntimeError(f"{self.id} cannot start")
        self.events.append("started")
        try:
            yield
        finally:
            self.events.append("stopped")
            if self.fail_on == "stop":
                raise RuntimeError(f"{self.id} failed to stop")

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        raise NotImplementedError
        yield  # pragma: no cover


async def test_one_backend_stops_alone_and_the_rest_on_the_way_out() -> None:
    a, b = Held("a"), Held("b")
    async with open_backend_hosts() as hosts:
        await hosts.start(a)
        await hosts.start(b)
        await hosts.stop(a)
        assert a.events == ["started", "stopped"] and b.events == ["started"]
    assert b.events == ["started", "stopped"]


async def test_a_backend_failing_to_start_is_an_error_naming_it_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(BackendStartError, match=r"^backend x \(\w+\) failed to start: Runtime"):
        async with open_backend_hosts() as hosts:
            await hosts.start(Held("x", fail_on="start"))
    [record] = [r for r in caplog.records if "failed to start" in r.getMessage()]
    assert record.exc_info is not None and "x cannot start" in str(record.exc_info[1])


async def test_a_backend_failing_as_it_stops_is_logged_and_the_others_serve_on(caplog) -> None:
    bad, good = Held("bad", fail_on="stop"), Held("good")
    async with open_backend_hosts() as hosts:
        await hosts.start(bad)
        await hosts.start(good)
        await hosts.stop(bad)  # as a reload does: no error reaches the gateway
        await trio.lowlevel.checkpoint()
        assert good.events == ["started"]
    assert good.events == ["started", "stopped"]
    assert any("backend bad failed while stopping" in r.getMessage() for r in caplog.records)
