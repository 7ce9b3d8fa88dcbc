"""The ``llamacpp`` backend: requests go to llama-server's OpenAI-compatible API through an
:class:`~backends.openai.OpenAIBackend` (same pool, timers, error mapping and cancellation);
this class adds what is llama.cpp's own — health and load from ``/health`` + ``/metrics``
(or ``/slots``), sending only when a slot is free (so a client that leaves while waiting
costs the server nothing), waiting out a model load, and, in managed mode, the process.

Request bodies are forwarded as they are, so llama.cpp's extra fields (``cache_prompt``,
``id_slot``, ``n_probs``, ``samplers``, ``grammar``, ``json_schema``, ``return_progress``,
``sse_ping_interval``, ...) reach the server untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from functools import partial

import httpx
import trio

from gateway.abc import (
    OPENAI_ENDPOINTS,
    Backend,
    BackendSettings,
    BackendStatus,
    Overloaded,
    Placement,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
)

from .._polling import poll_status
from ..openai import OpenAIBackend, OpenAISettings
from ._launch import plan_launch
from ._probe import Probe, ServerInfo
from ._settings import LlamaCppSettings
from ._slots import SlotGate
from ._supervisor import Supervisor

log = logging.getLogger("gateway.backends.llamacpp")

# Health and metrics reads are small and local; a server that takes longer is in trouble.
_PROBE_TIMEOUT = 5.0
# A request that found the server loading is sent again at least this often (seconds).
_LOAD_RETRY = 1.0


class LlamaCppBackend(Backend[LlamaCppSettings]):
    """llama.cpp's ``llama-server``: one that runs already (``url``), or one the gateway
    runs itself (``model``)."""

    Settings = LlamaCppSettings
    # llama-server serves Anthropic's Messages, OpenAI's Responses and their token counts
    # itself (b11434 does).
    native_endpoints = OPENAI_ENDPOINTS | {
        "messages",
        "messages/count_tokens",
        "responses",
        "responses/input_tokens",
    }

    def __init__(self, id: str, settings: LlamaCppSettings) -> None:
        super().__init__(id, settings)
        self.url: str | None = settings.url
        """The server's root URL (in managed mode known once running)."""
        self.supervisor: Supervisor | None = None
        """Managed mode: the process keeper (pid, starts) while running."""
        self.server_info: ServerInfo | None = None
        """What the server said about itself (models, context size, slots) once ready."""
        self.slots = SlotGate()
        """Holds this backend's requests until the server has a free slot."""
        self._http: OpenAIBackend | None = None
        self._status_changed = trio.Event()
        self._next_load_read = -math.inf
        if settings.managed:
            self.status = BackendStatus(health="loading", detail="llama-server not started yet")

    @classmethod
    def placement(cls, settings: BackendSettings) -> Placement:
        """A managed server runs once per machine, in the parent; a remote one is reached
        from every worker."""
        return "parent" if isinstance(settings, LlamaCppSettings) and settings.managed else "worker"

    def address(self) -> str:
        assert self.url is not None, "running"
        return self.url

    @classmethod
    def reached_at(cls, settings: BackendSettings, address: str) -> BackendSettings:
        """Remote mode, at the server the parent runs."""
        return settings.model_copy(update={"url": address, "model": None})

    def _publish(self, status: BackendStatus) -> None:
        if status.health != "ready":
            self.server_info = None
        self.status = status
        self._status_changed.set()
        self._status_changed = trio.Event()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the poller (and, in managed mode, llama-server); yields without waiting
        for the model to load — until it has, the backend reports ``loading``. Raises
        :class:`~gateway.abc.ConfigError` when the binary or the model cannot be found."""
        s = self.settings
        launch = await trio.to_thread.run_sync(plan_launch, self.id, s) if s.managed else None
        url = launch.url if launch is not None else s.url
        assert url is not None
        self.url = url
        auth = {"authorization": f"Bearer {s.api_key.get_secret_value()}"} if s.api_key else {}
        http = OpenAIBackend(self.id, self._openai_settings(url))
        async with (
            httpx.AsyncClient(
                base_url=url, headers=auth, timeout=_PROBE_TIMEOUT, trust_env=False
            ) as probe_client,
            http.running(),
            trio.open_nursery() as nursery,
        ):
            probe = Probe(probe_client)
            if launch is not None:
                self.supervisor = Supervisor(self.id, launch, s, probe, self._publish)
                nursery.start_soon(self.supervisor.serve)
            nursery.start_soon(
                poll_status, self.id, s.poll_interval, partial(self._check, probe), self._publish
            )
            self._http = http
            try:
                yield
            finally:
                self._http = None
                nursery.cancel_scope.cancel()

    def _openai_settings(self, url: str) -> OpenAISettings:
        s = self.settings
        return OpenAISettings(
            type="openai",
            url=url + "/v1",
            api_key=s.api_key,
            timeouts=s.timeouts,
            max_connections=s.max_connections,
            max_keepalive_connections=s.max_keepalive_connections,
        )

    async def _check(self, probe: Probe) -> BackendStatus:
        """One poll: health every time, load every ``load_interval``, ``/props`` once per
        ready spell. Fresh load figures go to the slot gate."""
        supervisor = self.supervisor
        if supervisor is None or supervisor.serving:
            now = trio.current_time()
            read_load = now >= self._next_load_read
            status = await probe.status(read_load=read_load)
            if supervisor is None or supervisor.serving:
                return await self._took(probe, status, read_load, now)
        # Starting or restarting (or it died while we asked): the supervisor knows best.
        assert supervisor is not None
        self._not_ready()
        return supervisor.status

    async def _took(
        self, probe: Probe, status: BackendStatus, read_load: bool, now: float
    ) -> BackendStatus:
        if status.health != "ready":
            self._not_ready()
            return status
        if self.server_info is None:
            try:
                self.server_info = await probe.info()
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("backend %s: /props or /v1/models unreadable: %s", self.id, exc)
                return status
            log.info("backend %s: llama-server at %s: %s", self.id, self.url, self.server_info)
        if read_load:
            self._next_load_read = now + self.settings.load_interval
            self.slots.observe(self.server_info.total_slots, status.running, status.queued)
        return status

    def _not_ready(self) -> None:
        """Forget what a ready spell learnt: the next one reads load and props at once."""
        self._next_load_read = -math.inf
        self.slots.observe(None, None, None)

    def pool_connections(self) -> tuple[int, int]:
        """(open, idle) connections of the request pool — diagnostics for tests and metrics."""
        return self._http.pool_connections() if self._http is not None else (0, 0)

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        """Relay ``request`` through the OpenAI backend, once the server has a free slot
        (:class:`~._slots.SlotGate`; until then the request waits here, cancellable).

        A server that turns out to be loading its model answers every request with 503
        "Loading model" before doing anything with it (the status said ready a moment ago:
        it restarted between two polls). The backend is marked ``loading`` at once — its
        routes stop taking requests — and this request waits for the load and is sent
        again, at each status change and at least every second; after ``wait_ready``
        seconds it is refused with :class:`Overloaded` (503, may fail over, not held
        against the backend).
        """
        http = self._http
        if http is None:
            raise RuntimeError(f"backend {self.id} is not running")
        limit = self.settings.wait_ready
        deadline = trio.current_time() + (limit if limit is not None else math.inf)
        waited = False
        # A token count takes no slot: llama-server answers it from its HTTP thread.
        gate = self.slots.slot() if request.endpoint != "messages/count_tokens" else nullcontext()
        async with gate, AsyncExitStack() as stack:
            while True:
                try:
                    response = await stack.enter_async_context(http.open_response(request))
                except UpstreamStatusError as exc:
                    if not _is_loading(exc):
                        raise
                    await self._wait_for_load(request, exc.message, deadline)
                    waited = True
                    continue
                break
            if waited and self.status.health == "loading":
                # Answered: the load is over, whether or not the poller has seen it yet.
                self._publish(BackendStatus(health="ready", detail="answered after loading"))
            yield response

    async def _wait_for_load(self, request: UpstreamRequest, detail: str, deadline: float) -> None:
        if self.status.health != "loading":
            log.info("backend %s: llama-server is loading its model; requests wait", self.id)
            self._publish(BackendStatus(health="loading", detail=detail))
        now = trio.current_time()
        if now >= deadline:
            raise Overloaded(
                f"backend {self.id}: llama-server is still loading its model",
                retry_after=self.settings.poll_interval,
            )
        log.debug("backend %s: request %s waits for the model", self.id, request.request_id)
        with trio.move_on_at(min(deadline, now + min(self.settings.poll_interval, _LOAD_RETRY))):
            await self._status_changed.wait()


def _is_loading(error: UpstreamStatusError) -> bool:
    """llama-server's answer to every request until its model is loaded."""
    return error.status == 503 and error.type == "unavailable_error"
