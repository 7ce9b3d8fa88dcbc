"""What llama-server says about itself: ``/health`` (200 ready, 503 while the model loads),
its load from ``/metrics`` (with ``--metrics``) or else ``/slots``, and, once ready,
``/props`` and ``/v1/models`` for the log and diagnostics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.abc import BackendStatus

from .._prometheus import parse_metrics

log = logging.getLogger("gateway.backends.llamacpp")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The server's own description, read once it is ready."""

    models: tuple[str, ...]
    n_ctx: int | None
    total_slots: int | None
    build: str | None


class Probe:
    """Reads a llama-server's health and load through ``client`` (base URL = the server's
    root). Remembers whether ``/metrics`` is enabled so a server without it costs one
    request per check, not two."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._metrics = True
        self._last_load: tuple[int | None, int | None] = (None, None)

    async def health(self) -> BackendStatus:
        """``ready``, ``loading`` (503: the model is loading) or ``down``. Never raises
        for the server's trouble."""
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError as exc:
            return BackendStatus(health="down", detail=f"/health: {type(exc).__name__}: {exc}")
        if response.status_code == 200:
            return BackendStatus(health="ready")
        message = _error_message(response)
        if response.status_code == 503:
            return BackendStatus(health="loading", detail=message)
        return BackendStatus(
            health="down", detail=f"/health answered {response.status_code}: {message}"
        )

    async def status(self, *, read_load: bool) -> BackendStatus:
        """:meth:`health`, plus — when ready and ``read_load`` — the number of requests
        running and waiting (else the last ones read)."""
        status = await self.health()
        if status.health != "ready":
            self._last_load = (None, None)
            return status
        if read_load:
            try:
                self._last_load = await self._load()
            except (httpx.HTTPError, ValueError) as exc:  # healthy, load unknown this time
                log.debug("%s: reading load failed: %s", self._client.base_url, exc)
                self._last_load = (None, None)
        running, queued = self._last_load
        return BackendStatus(health="ready", running=running, queued=queued)

    async def _load(self) -> tuple[int | None, int | None]:
        if self._metrics:
            response = await self._client.get("/metrics")
            if response.status_code == 200:
                values = parse_metrics(response.text)
                return (
                    _int(values.get("llamacpp:requests_processing")),
                    _int(values.get("llamacpp:requests_deferred")),
                )
            self._metrics = False  # started without --metrics
            log.info("%s has no /metrics; reading /slots instead", self._client.base_url)
        response = await self._client.get("/slots")
        if response.status_code != 200:
            return None, None
        slots = response.json()
        return sum(1 for slot in slots if slot.get("is_processing")), None

    async def info(self) -> ServerInfo:
        props: dict[str, Any] = {}
        response = await self._client.get("/props")
        if response.status_code == 200:
            props = response.json()
        models: tuple[str, ...] = ()
        response = await self._client.get("/v1/models")
        if response.status_code == 200:
            models = tuple(str(m.get("id")) for m in response.json().get("data", []))
        settings = props.get("default_generation_settings") or {}
        return ServerInfo(
            models=models,
            n_ctx=_int(settings.get("n_ctx")),
            total_slots=_int(props.get("total_slots")),
            build=props.get("build_info"),
        )


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))
    return response.text[:200]
