"""The ollama backend passes the gateway's conformance suite against the fake Ollama."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
from ollama_fake import Behaviour, FakeOllama
from trio_gateway_ollama import OllamaBackend

from gateway.testing.conformance import BackendConformance, Case, Script, SettingsTable
from gateway.testing.serving import unused_port

_BEHAVIOURS: dict[str, Behaviour] = {
    "answer": Behaviour(tokens=4),
    "error_status": Behaviour(fault="status", status=500, message="model runner crashed"),
    "error_mid_stream": Behaviour(tokens=6, fault="error_line", fault_after=2),
    "stall": Behaviour(tokens=6, fault="stall", fault_after=2),
    "hang_before_headers": Behaviour(headers_delay=3600),
    "hang_after_headers": Behaviour(prefill=3600),
    "endless": Behaviour(tokens=20_000, pace=0.005),  # 100 s
}


class TestOllama(BackendConformance[FakeOllama, OllamaBackend]):
    type_name = "ollama"
    backend_class = OllamaBackend

    @pytest.fixture
    async def upstream(self, nursery: trio.Nursery) -> FakeOllama:
        fake = FakeOllama()
        await nursery.start(fake.serve)
        return fake

    def settings(self, upstream: FakeOllama) -> SettingsTable:
        return {"url": upstream.url}

    def script(self, upstream: FakeOllama, case: Case) -> Script:
        if case.name == "connect_error":
            return Script(settings={"url": f"http://127.0.0.1:{unused_port()}"})
        if case.name == "gap":
            behaviour = Behaviour(tokens=4, gap_at=2, gap=case.seconds)
        else:
            behaviour = _BEHAVIOURS[case.name]
        upstream.models[case.name] = behaviour
        return Script(body={"model": case.name}, status=behaviour.status)

    def open_requests(self, upstream: FakeOllama, backend: OllamaBackend) -> int:
        return upstream.active

    def invalid_settings(self, upstream: FakeOllama) -> Sequence[tuple[SettingsTable, str]]:
        return [({"url": "unix:///run/ollama.sock"}, "url"), ({"num_ctx": 0}, "num_ctx")]
