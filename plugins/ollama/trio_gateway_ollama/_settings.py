"""The ``[backends.<id>]`` table of an ``ollama`` backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.abc import BackendSettings, http_base_url


class OllamaSettings(BackendSettings):
    type: Literal["ollama"] = "ollama"
    url: str = Field(description="Ollama's base URL, e.g. http://127.0.0.1:11434")
    keep_alive: str | None = Field(
        None, description="how long Ollama keeps the model loaded after a request (e.g. 5m)"
    )
    num_ctx: int | None = Field(None, gt=0, description="context window Ollama loads models with")
    max_connections: int = Field(100, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_base_url(value)
