"""The ``vllm`` backend: requests go to vLLM's OpenAI-compatible API through an
:class:`~backends.openai.OpenAIBackend` (same pool, timers, error mapping and cancellation);
this class adds vLLM's health and load signals, kept fresh in :attr:`status` by a poller.

Request bodies are forwarded as they are, so vLLM's own fields (``structured_outputs``,
``guided_json``, ``priority``, ``top_k``, ``min_p``, ``repetition_penalty``,
``chat_template_kwargs``, ``stream_options``, ...) reach the server untouched. Both of its
error bodies — ``{"error": {...}}`` and the older ``{"object": "error", ...}`` — become the
gateway's error with the status vLLM sent (see ``UpstreamStatusError.from_body``).

Token counts (``count_tokens``, for Anthropic's ``/v1/messages/count_tokens``) are vLLM's
own: its ``/tokenize`` renders the chat with the model's template and tokenizer (see
``_count.py``).

vLLM sends the response headers of a stream at once, then nothing until the first token:
however long a request waits for a batch slot or prefills, only the route's heartbeat keeps
the client's connection alive (vLLM's own keepalive is off by default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from gateway.abc import (
    OPENAI_ENDPOINTS,
    Backend,
    BackendStatus,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamResponse,
)

from .._polling import poll_status
from ..openai import OpenAIBackend, OpenAISettings
from ._count import TokenCounter, open_token_counter
from ._probe import Probe, ServedModel
from ._settings import VLLMSettings


class VLLMBackend(Backend[VLLMSettings]):
    """A running vLLM server at ``url``."""

    Settings = VLLMSettings
    # vLLM serves Anthropic's Messages itself; its token count is asked of /tokenize.
    native_endpoints = OPENAI_ENDPOINTS | {"messages", "responses"}

    def __init__(self, id: str, settings: VLLMSettings) -> None:
        super().__init__(id, settings)
        self._http: OpenAIBackend | None = None
        self._probe: Probe | None = None
        self._counter: TokenCounter | None = None
        self._status_changed = trio.Event()

    @property
    def served_models(self) -> tuple[ServedModel, ...] | None:
        """What the server listed in ``/v1/models`` when it last became ready."""
        return self._probe.models if self._probe is not None else None

    def _publish(self, status: BackendStatus) -> None:
        self.status = status
        self._status_changed.set()
        self._status_changed = trio.Event()

    async def wait_status_change(self) -> BackendStatus:
        """Return the next status the poller publishes."""
        await self._status_changed.wait()
        return self.status

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the request pool and start the poller; the first status is awaited (at
        most twice ``poll_timeout``), so readiness is known before the gateway serves."""
        s = self.settings
        auth = {"authorization": f"Bearer {s.api_key.get_secret_value()}"} if s.api_key else {}
        http = OpenAIBackend(
            self.id,
            OpenAISettings(
                type="openai",
                url=s.url + "/v1",
                api_key=s.api_key,
                timeouts=s.timeouts,
                max_connections=s.max_connections,
                max_keepalive_connections=s.max_keepalive_connections,
            ),
        )
        # Polls use a pool of their own: a full request pool never delays a health check.
        async with (
            httpx.AsyncClient(
                base_url=s.url,
                headers=auth,
                timeout=s.poll_timeout,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
                trust_env=False,
                # vLLM mounts /metrics as a sub-app; a server that redirects /metrics to
                # /metrics/ must still be read.
                follow_redirects=True,
            ) as probe_client,
            http.running(),
            open_token_counter(self.id, s) as counter,
            trio.open_nursery() as nursery,
        ):
            probe = Probe(probe_client, s.poll_timeout)
            first = trio.Event()

            def publish(status: BackendStatus) -> None:
                self._publish(status)
                first.set()

            nursery.start_soon(poll_status, self.id, s.poll_interval, probe.status, publish)
            # One check reads at most twice in sequence (health and metrics together, then
            # the models), each bounded by poll_timeout; the margin is only a safety net.
            with trio.move_on_after(2 * s.poll_timeout + 1):
                await first.wait()
            self._http, self._probe, self._counter = http, probe, counter
            try:
                yield
            finally:
                self._http = self._counter = None
                nursery.cancel_scope.cancel()

    def pool_connections(self) -> tuple[int, int]:
        """(open, idle) connections of the request pool — diagnostics for tests and metrics."""
        return self._http.pool_connections() if self._http is not None else (0, 0)

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        if self._http is None:
            raise RuntimeError(f"backend {self.id} is not running")
        async with self._http.open_response(request) as response:
            yield response

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """The prompt tokens vLLM would see for the chat ``request.body``, from its
        ``/tokenize`` (the model's tokenizer over its chat template). Raises
        :class:`~gateway.abc.UpstreamConnectError` while the backend is not running, and
        the :class:`~gateway.abc.UpstreamError` that vLLM's answer (or its absence) means."""
        if self._counter is None:
            raise UpstreamConnectError(f"backend {self.id} is not running")
        return await self._counter.count(request)
