"""Backend ``llamacpp-python``: a GGUF model served from the gateway's own process.

Each of ``instances`` model copies serves one request at a time, in a worker thread
(llama.cpp blocks; the event loop must not). Requests beyond that wait in the gateway's
admission queue (``admission.max_concurrency`` is ``instances``; see the settings), where
streaming clients get heartbeats and a full queue is refused with ``Retry-After``.

One request, three parties::

    open_response (request task)     producer task              worker thread
    ─ parse + validate body
    ─ take a free engine
    ─ open nursery ────────────────▶ to_thread.run_sync ──────▶ Engine.run(job, emit)
    ─ receive first item ◀───────── memory channel ◀─────────── emit(bytes) per token
    ─ yield response; body reads the channel
    ─ finally: job.stop(), close channel; nursery waits for the thread (within one token)
    ─ release the engine

The body itself is a plain async generator reading the channel: it never holds a nursery
or cancel scope across a ``yield`` (PEP 789).

Token counts (:meth:`LlamaCppPythonBackend.count_tokens`) borrow an instance from a lender
of their own and run in a worker thread beside whatever that instance generates: a count
needs only the model's tokenizer, so it never waits behind a long generation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

import trio

from gateway.abc import (
    Backend,
    BackendSettings,
    BackendStatus,
    ConfigError,
    GatewayError,
    InvalidRequest,
    Placement,
    ShuttingDown,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamResponse,
)

from ._lender import InstanceLender
from ._protocol import EmbeddingRequest, TextRequest, parse_request
from ._settings import LlamaCppPythonSettings
from ._source import resolve_model

if TYPE_CHECKING:
    from ._engine import Engine, Job

log = logging.getLogger("backends.llamacpp_python")

# Items a worker may run ahead of a slow client before it waits (backpressure).
_CHANNEL_BUFFER = 64

_Item = bytes | GatewayError


class LlamaCppPythonBackend(Backend[LlamaCppPythonSettings]):
    """Serves chat and text completions (or embeddings) from an in-process model."""

    Settings = LlamaCppPythonSettings

    @classmethod
    def placement(cls, settings: BackendSettings) -> Placement:
        """The model lives in this process's memory: one copy per worker would multiply the
        memory and the compute it contends for, so several workers are refused."""
        return "single"

    def __init__(self, id: str, settings: LlamaCppPythonSettings) -> None:
        super().__init__(id, settings)
        self.engines: tuple[Engine, ...] = ()
        """The loaded instances while running (diagnostics: token counters, current job)."""
        self._lender: InstanceLender[Engine] | None = None
        # Counts use only the tokenizer, so they borrow from a lender of their own; it
        # bounds them to one thread per instance, and shutdown waits for them too.
        self._counters: InstanceLender[Engine] | None = None
        # Generation threads get their own limiter: they must never starve trio's default
        # one (DNS lookups, file I/O), nor be starved by it.
        self._threads = trio.CapacityLimiter(settings.instances)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load ``instances`` copies of the model, one after another, each in a worker
        thread; serve; then stop whatever still runs and free them all.

        Raises :class:`~gateway.abc.ConfigError` when llama-cpp-python is missing, or the
        model is missing, corrupt or unfit for the settings. Cancelling start-up waits for
        the instance being loaded (llama.cpp cannot be interrupted there).

        :attr:`status` says ``loading``, then ``ready``, then ``down``. It reports no
        running/queued counts: the gateway's own admission counts are all there is to see.
        """
        self.status = BackendStatus(health="loading", detail="loading the model")
        engines: list[Engine] = []
        try:
            path, n_gpu_layers, engine_module = await self._prepare()
            size_mib = path.stat().st_size / 2**20
            for index in range(self.settings.instances):
                log.info(
                    "backend %s: loading %s (%.0f MiB), instance %d of %d ...",
                    self.id,
                    path,
                    size_mib,
                    index + 1,
                    self.settings.instances,
                )
                started = trio.current_time()
                engine = await trio.to_thread.run_sync(
                    partial(
                        engine_module.load,
                        path,
                        self.settings,
                        n_gpu_layers=n_gpu_layers,
                        index=index,
                        backend_id=self.id,
                    )
                )
                engines.append(engine)
                log.info(
                    "backend %s: instance %d of %d loaded in %.1f s",
                    self.id,
                    index + 1,
                    self.settings.instances,
                    trio.current_time() - started,
                )
            self.engines = tuple(engines)
            self._lender = InstanceLender(engines)
            self._counters = InstanceLender(engines)
            self.status = BackendStatus(
                health="ready", detail=f"{len(engines)} instance(s) of {path.name}"
            )
            yield
        finally:
            self.status = BackendStatus(health="down", detail="stopped")
            lender, self._lender = self._lender, None
            counters, self._counters = self._counters, None
            with trio.CancelScope(shield=True):
                if lender is not None:
                    for engine in engines:
                        if engine.current is not None:
                            engine.current.stop()
                    await lender.aclose()  # every job has ended: the models are free
                if counters is not None:
                    await counters.aclose()  # and every count
                for engine in engines:
                    await trio.to_thread.run_sync(engine.close)
            self.engines = ()

    async def _prepare(self) -> tuple[Path, int, ModuleType]:
        """Import llama-cpp-python, check the settings it knows, find the model file."""
        engine_module = self._import_engine()
        where = f"backends.{self.id}"
        if self.settings.chat_format is not None:
            engine_module.check_chat_format(self.settings.chat_format, f"{where}.chat_format")
        path = await trio.to_thread.run_sync(resolve_model, self.settings.model, f"{where}.model")
        return path, self._gpu_layers(engine_module.supports_gpu_offload()), engine_module

    def _import_engine(self) -> ModuleType:
        try:
            from . import _engine
        except ImportError as error:
            if not (error.name or "").startswith("llama_cpp"):
                raise
            raise ConfigError(
                f"backends.{self.id}: type llamacpp-python needs llama-cpp-python, which is "
                "not installed; install it with: pip install 'trio-gateway[local]'"
            ) from None
        except (OSError, RuntimeError) as error:  # its native library failed to load
            raise ConfigError(
                f"backends.{self.id}: llama-cpp-python is installed but cannot load its "
                f"native library: {error}"
            ) from None
        return _engine

    def _gpu_layers(self, gpu: bool) -> int:
        configured = self.settings.n_gpu_layers
        layers = configured if configured is not None else (-1 if gpu else 0)
        if layers == 0:
            why = (
                "n_gpu_layers = 0"
                if configured is not None
                else "llama-cpp-python has no GPU support"
            )
            log.info("backend %s: running on the CPU (%s)", self.id, why)
        elif not gpu:
            log.warning(
                "backend %s: n_gpu_layers = %d, but llama-cpp-python was built without GPU "
                "support: running on the CPU",
                self.id,
                layers,
            )
        else:
            what = "all layers" if layers < 0 else f"{layers} layers"
            log.info("backend %s: %s on the GPU (n_gpu_layers = %d)", self.id, what, layers)
        return layers

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        """Validate, take a free instance, start generating; enter once the first bytes
        are ready (so a prompt the model refuses is still a real 400).

        Raises :class:`~gateway.abc.InvalidRequest` for input this backend cannot serve,
        and :class:`~gateway.abc.ShuttingDown` when the backend stops. Cancellation stops
        the model within one token, and the instance is free again once this context has
        exited. (If callers bypass admission, extra ones wait here in FIFO order.)
        """
        lender = self._lender
        if lender is None:
            raise UpstreamConnectError(f"backend {self.id} is not running")
        parsed = parse_request(request.endpoint, request.body)
        self._check_endpoint(parsed)
        try:
            engine = await lender.acquire()
        except trio.ClosedResourceError:
            raise ShuttingDown(f"backend {self.id} is shutting down") from None
        try:
            async with self._open_job(engine, parsed, request.stream) as response:
                yield response
        finally:
            lender.release(engine)

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """The prompt tokens a chat completion of ``request`` (a ``chat/completions`` body)
        would evaluate: the model's own tokenizer over the chat exactly as a generation
        formats it, so the count equals the ``usage.prompt_tokens`` that generation reports.

        The body is validated as for a generation: what generation refuses (tools, tool
        messages, images) raises :class:`~gateway.abc.InvalidRequest` here too, as does a
        chat the template refuses. Raises :class:`~gateway.abc.ShuttingDown` when the
        backend stops. Counting takes no generation slot and runs beside a generation on
        the same instance (see :meth:`~._engine.Engine.count_chat_tokens`); cancellation
        waits for the count's thread, which tokenizes in milliseconds.
        """
        counters = self._counters
        if counters is None:
            raise UpstreamConnectError(f"backend {self.id} is not running")
        parsed = parse_request("chat/completions", request.body)
        self._check_endpoint(parsed)
        if not isinstance(parsed, TextRequest):  # a chat body always parses as text
            raise InvalidRequest(f"model backend {self.id} counts chat messages only")
        try:
            engine = await counters.acquire()
        except trio.ClosedResourceError:
            raise ShuttingDown(f"backend {self.id} is shutting down") from None
        try:
            return await trio.to_thread.run_sync(
                engine.count_chat_tokens,
                parsed,
                abandon_on_cancel=False,  # the model stays loaded until the count is done
                thread_name=f"llama {self.id}#{engine.index} count",
            )
        finally:
            counters.release(engine)

    def _check_endpoint(self, parsed: TextRequest | EmbeddingRequest) -> None:
        if self.settings.embedding and isinstance(parsed, TextRequest):
            raise InvalidRequest(
                f"model backend {self.id} serves embeddings only (embedding = true)"
            )
        if not self.settings.embedding and isinstance(parsed, EmbeddingRequest):
            raise InvalidRequest(
                f"model backend {self.id} does not serve embeddings (set embedding = true "
                "on a backend of its own)"
            )

    @asynccontextmanager
    async def _open_job(
        self, engine: Engine, parsed: TextRequest | EmbeddingRequest, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        from ._engine import Job  # imported by running() already; here for the name only

        job = Job(parsed)
        send, receive = trio.open_memory_channel[_Item](_CHANNEL_BUFFER)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._produce, engine, job, send)
                try:
                    first = await self._first_item(receive)
                    body = self._body(first, receive, job)
                    try:
                        yield UpstreamResponse(
                            status=200,
                            content_type="text/event-stream" if stream else "application/json",
                            body=body,
                        )
                    finally:
                        await body.aclose()  # also when the consumer stopped reading
                finally:
                    if job.finished_at is None:
                        job.stop()
                    receive.close()
        except BaseExceptionGroup as group:
            _raise_sole(group)

    async def _produce(self, engine: Engine, job: Job, send: trio.MemorySendChannel[_Item]) -> None:
        with send:
            await trio.to_thread.run_sync(
                engine.run,
                job,
                partial(_emit, send),
                abandon_on_cancel=False,
                limiter=self._threads,
                thread_name=f"llama {self.id}#{engine.index}",
            )

    async def _first_item(self, receive: trio.MemoryReceiveChannel[_Item]) -> bytes:
        try:
            item = await receive.receive()
        except trio.EndOfChannel:
            raise ShuttingDown(f"backend {self.id} stopped before this request started") from None
        if isinstance(item, GatewayError):
            raise item
        return item

    async def _body(
        self, first: bytes, receive: trio.MemoryReceiveChannel[_Item], job: Job
    ) -> AsyncGenerator[bytes, None]:
        yield first
        async for item in receive:
            if isinstance(item, GatewayError):
                raise item
            yield item
        if job.stopped:
            raise ShuttingDown(f"backend {self.id} stopped before this request finished")


def _emit(send: trio.MemorySendChannel[_Item], item: _Item) -> None:
    """The worker thread's :data:`~._engine.Emit`: hand ``item`` to the trio side."""
    try:
        trio.from_thread.run(send.send, item)
    except (trio.BrokenResourceError, trio.Cancelled):
        # The reader closed its end, or the request task was cancelled: either way nobody
        # will read more. The task sees its own cancellation once this thread returns.
        from ._engine import Stopped

        raise Stopped from None


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise what a nursery wrapped: its one non-Cancelled exception, else a Cancelled.

    A nursery wraps even the exception of its own ``async with`` body, which here is the
    relay's (say ``ClientGone``, or an error from the body); the relay must see it as is.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(real) > 1:
        raise group
    sole = (real or leaves)[0]
    context = sole.__context__
    try:
        raise sole
    finally:  # keep the exception's own context, not the group it was unwrapped from
        sole.__context__ = context
        del sole, context
