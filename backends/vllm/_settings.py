"""The ``[backends.<id>]`` table of a ``vllm`` backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway.abc import BackendSettings, header_secret, http_base_url


class VLLMSettings(BackendSettings):
    """One running vLLM server. Connection and upstream timers are the common ``timeouts``."""

    type: Literal["vllm"] = "vllm"
    url: str = Field(
        description="root URL of the vLLM server, e.g. http://127.0.0.1:8000 "
        "(a trailing /v1 is accepted)"
    )
    api_key: SecretStr | None = Field(
        None, description="the server's --api-key (VLLM_API_KEY), sent as a Bearer token"
    )
    poll_interval: float = Field(
        2.0, gt=0, description="seconds between reads of /health and /metrics"
    )
    poll_timeout: float = Field(
        5.0, gt=0, description="seconds one read of /health, /metrics or /v1/models may take"
    )
    max_connections: int = Field(1000, gt=0)
    max_keepalive_connections: int = Field(100, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_base_url(value).removesuffix("/v1")

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        return header_secret(value)
