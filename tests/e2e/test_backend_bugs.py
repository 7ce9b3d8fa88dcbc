"""A backend (a plugin, usually) that raises what no exchange should: the client gets a
500 in its dialect, the log names the request and the backend, the attempt is in the
attempts header and the access line, and the gateway serves on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from gateway.abc import Backend, BackendSettings, UpstreamRequest, UpstreamResponse
from gateway.testing.serving import open_test_gateway


class Buggy(Backend[BackendSettings]):
    """Fails with a TypeError on every request, as a plugin with a bug does."""

    Settings = BackendSettings

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield

    def open_response(
        self, request: UpstreamRequest
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        raise TypeError("can't concat str to bytes")


async def test_a_backends_bug_is_a_500_naming_the_backend_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    config = {
        "backends": {"bug": {"type": "buggy"}},
        "routes": {"m": {"backend": "bug"}},
    }
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with open_test_gateway(config, backends={"buggy": Buggy}) as gw:
        async with gw.client() as client:
            answers = [await client.post("/v1/chat/completions", json=ask) for _ in range(4)]
    for answer in answers:
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "internal_error"
        assert answer.headers["x-gateway-attempts"] == "bug=500:internal_error"
    failures = [r for r in caplog.records if r.getMessage().startswith("relay failed")]
    assert len(failures) == 4 and "backend bug)" in failures[0].getMessage()
    assert "can't concat str to bytes" in caplog.text  # the traceback is logged
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [line["attempts"] for line in access] == [["bug=500:internal_error"]] * 4
    # A bug may be the gateway's: no verdict on the backend, which is not ejected.
    assert gw.gateway.upstreams["bug"].breaker.failures == 0
