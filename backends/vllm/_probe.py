"""What a vLLM server says about itself: ``/health`` (an empty 200, or an empty 503 once its
engine is dead), its load from ``/metrics`` and, once ready, its models from ``/v1/models``.

Routes are vLLM's ``vllm/entrypoints/openai/api_server.py`` (v0.12.0): ``/health`` and
``/metrics`` need no API key, ``/v1/models`` does. Each ``ModelCard`` carries
``max_model_len``. Metric names are ``vllm/v1/metrics/loggers.py``'s:
``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc``, which v0.9 introduced beside the older
``vllm:gpu_cache_usage_perc`` (the only name of the V0 engine, ``vllm/engine/metrics.py``,
and gone from v0.12's exposition). A data-parallel server has one series per engine
(label ``engine``): requests are summed, and the cache pressure is the fullest engine's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.abc import BackendStatus

from .._prometheus import parse_metrics

log = logging.getLogger("gateway.backends.vllm")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"


@dataclass(frozen=True, slots=True)
class Load:
    """A server's load; a metric it does not export is None."""

    running: int | None = None
    queued: int | None = None
    cache_usage: float | None = None


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of ``/v1/models``."""

    id: str
    max_model_len: int | None = None


def read_load(text: str) -> Load:
    """The load in a ``/metrics`` exposition. Raises ``ValueError`` for a malformed one."""
    totals = parse_metrics(text)
    fullest: dict[str, float] = {}
    if KV_CACHE in totals or KV_CACHE_OLD in totals:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (KV_CACHE, KV_CACHE_OLD):
                    fullest[sample.name] = max(fullest.get(sample.name, 0.0), sample.value)
    cache = fullest.get(KV_CACHE, fullest.get(KV_CACHE_OLD))
    return Load(
        running=_int(totals.get(RUNNING)),
        queued=_int(totals.get(WAITING)),
        cache_usage=min(1.0, max(0.0, cache)) if cache is not None else None,
    )


def read_models(doc: object) -> tuple[ServedModel, ...]:
    """The models of a ``/v1/models`` answer. Raises ``TypeError`` if it is not a list of
    model cards."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise TypeError("no `data` list")
    models = []
    for card in data:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            raise TypeError(f"a model card without an id: {card!r}"[:200])
        length = card.get("max_model_len")
        models.append(ServedModel(card["id"], length if isinstance(length, int) else None))
    return tuple(models)


class Probe:
    """Reads one vLLM server through ``client`` (base URL = the server's root). Every read
    is bounded by ``timeout``; none raises for the server's trouble."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self.models: tuple[ServedModel, ...] | None = None
        """The served models, read on each change to ready; None until then."""
        self._models_problem = ""
        self._key_rejected = False

    async def status(self) -> BackendStatus:
        """Health and load, read at once. A server that fails ``/metrics`` but answers
        ``/health`` stays ready, with its load unknown (None). One that rejects ``api_key``
        is down: ``/health`` needs no key, but every request would fail with 401."""
        health = BackendStatus(health="down")
        load: Load | str = Load()

        async def read_health() -> None:
            nonlocal health
            health = await self._health()

        async def read_metrics() -> None:
            nonlocal load
            load = await self._load()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_health)
            nursery.start_soon(read_metrics)
        if health.health != "ready":
            self.models = None  # read again when it comes back: it may serve others
            return health
        if self.models is None:
            await self._read_models()
        if self._key_rejected:
            return BackendStatus(health="down", detail=self._models_problem)
        problems = [self._models_problem, load if isinstance(load, str) else ""]
        detail = "; ".join(p for p in (self._describe_models(), *problems) if p)
        if isinstance(load, str):
            return BackendStatus(health="ready", detail=detail)
        return BackendStatus(
            health="ready",
            detail=detail,
            running=load.running,
            queued=load.queued,
            cache_usage=load.cache_usage,
        )

    def _describe_models(self) -> str:
        if not self.models:
            return ""
        return "serving " + ", ".join(
            m.id + (f" (max_model_len {m.max_model_len})" if m.max_model_len else "")
            for m in self.models
        )

    async def _get(self, path: str) -> httpx.Response | str:
        """The response, or what went wrong as text."""
        with trio.move_on_after(self._timeout):
            try:
                return await self._client.get(path)
            except httpx.HTTPError as exc:
                return f"{path}: {type(exc).__name__}: {exc}".rstrip(": ")
        return f"{path}: no answer within {self._timeout:g} s"

    async def _health(self) -> BackendStatus:
        response = await self._get("/health")
        if isinstance(response, str):
            return BackendStatus(health="down", detail=response)
        if response.status_code == 200:
            return BackendStatus(health="ready")
        if response.status_code == 503:
            return BackendStatus(health="down", detail="/health answered 503: the engine is dead")
        return BackendStatus(health="down", detail=f"/health answered {response.status_code}")

    async def _load(self) -> Load | str:
        response = await self._get("/metrics")
        if isinstance(response, str):
            return f"load unknown ({response})"
        if response.status_code != 200:
            return f"load unknown (/metrics answered {response.status_code})"
        try:
            return read_load(response.text)
        except ValueError as exc:
            return f"load unknown (/metrics unreadable: {exc})"

    async def _read_models(self) -> None:
        response = await self._get("/v1/models")
        self._models_problem = ""
        self._key_rejected = not isinstance(response, str) and response.status_code == 401
        if isinstance(response, str):
            self._models_problem = f"models unknown ({response})"
        elif response.status_code == 401:
            self._models_problem = "the server rejects api_key (/v1/models answered 401)"
        elif response.status_code != 200:
            self._models_problem = f"models unknown (/v1/models answered {response.status_code})"
        else:
            try:
                self.models = read_models(response.json())
            except (ValueError, TypeError) as exc:
                self._models_problem = f"models unknown (/v1/models unreadable: {exc})"
                return
            log.info("vLLM at %s %s", self._client.base_url, self._describe_models())


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None
