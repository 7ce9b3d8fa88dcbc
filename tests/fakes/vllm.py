"""A protocol-faithful fake of vLLM's OpenAI-compatible server (``vllm serve``), for tests
on machines without a GPU: a real HTTP/1.1 server on loopback (h11 over trio sockets).

This module is the server: routes, authentication, batch slots, timing and aborts. The
bodies it sends are built by :mod:`~tests.fakes.vllm_protocol` and the ``/metrics``
exposition by :mod:`~tests.fakes.vllm_metrics`; each cites the vLLM files it was
read from. What is read here, from vLLM **v0.12.0** (no code copied):

* Routes — ``vllm/entrypoints/openai/api_server.py``: ``GET /health`` (an empty 200; an
  empty 503 once the engine is dead, ``EngineDeadError``), ``GET /v1/models``,
  ``GET /version``, ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
  ``POST /tokenize`` (at the root: no API key, no batch slot) and ``GET /metrics``
  (``mount_metrics``). An unknown path is FastAPI's
  ``404 {"detail": "Not Found"}``, a wrong method ``405 {"detail": "Method Not Allowed"}``.
* ``--api-key`` — ``AuthenticationMiddleware``: only paths starting with ``/v1`` need
  ``Authorization: Bearer <key>``; otherwise ``401 {"error": "Unauthorized"}``. ``/health``
  and ``/metrics`` are open.
* Streams — ``serving_chat.py``/``serving_completion.py`` return Starlette's
  ``StreamingResponse`` (``text/event-stream; charset=utf-8``): the headers go out at once,
  then nothing until the first token, however long the request waits for a batch slot or
  prefills. vLLM has no SSE keepalive of its own. A non-streamed answer comes in one piece
  after generation, no byte before it. The request id is ``X-Request-Id`` when given
  (``_base_request_id``).
* A client that disconnects aborts its request (``with_cancellation``, and the streaming
  response's disconnect listener): it leaves the batch at once and is counted as
  ``finished_reason="abort"``. :attr:`VLLMRequest.aborted_at` records when.
* Scheduling — ``--max-num-seqs`` slots per engine, the rest wait (``num_requests_waiting``);
  ``engines > 1`` is a data-parallel server with requests spread over its engines.

The statements above and in the two sibling modules were re-checked against snapshots of
``vllm-project/vllm`` (``/health``, ``AuthenticationMiddleware``, ``StreamOptions``,
``ModelCard``, ``validation_exception_handler``, ``_check_model``, the context-length
messages, ``create_streaming_error_response``, the v1 metric names). Where a GPU serves a
real model, ``python -m tests.fakes.vllm_diff URL`` lists every difference between
it and this fake.

Not modelled: tokenization and sampling (every extra request field is accepted and
recorded, as vLLM's ``OpenAIBaseModel`` accepts and ignores unknown ones; words stand in
for tokens, and ``/tokenize`` counts them as generation bills them), LoRA, tool calls
(tools only cost prompt tokens), logprobs, sleep mode, generation failing once the engine
is dead.

Behaviour is set on the instance and may change while it serves: ``prefill`` (seconds
after a batch slot, before the first token), ``tokens``, ``pace`` (seconds between tokens),
``max_num_seqs``, ``kv_cache_usage`` (a number, one per engine, or None: 5 % per running
request), ``engine_dead``, ``metrics_fault`` (``"hang"``: ``/metrics`` never answers;
``"error"``: it answers 500; ``"redirect"``: 307 to ``/metrics/``, as a bare Starlette
``Mount`` does), ``fail_stream_after`` (tokens before an in-stream error).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import h11
import trio

from gateway.testing.http11 import read_request

from . import vllm_protocol as proto
from .vllm_metrics import CONTENT_TYPE as METRICS_TYPE
from .vllm_metrics import EngineLoad, MetricsVersion, exposition
from .vllm_protocol import ErrorForm, Generation, VLLMError

__all__ = ["VLLM_VERSION", "FakeVLLM", "VLLMRequest"]

VLLM_VERSION = "0.12.0"

_SSE_TYPE = "text/event-stream; charset=utf-8"
_JSON_TYPE = "application/json"


@dataclass(eq=False)
class VLLMRequest:
    """One HTTP request as the fake saw it, with trio timestamps."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, None when there was none or it was not JSON
    received_at: float
    engine: int = 0
    status: int | None = None
    headers_at: float | None = None  # when the status line went out
    slot_at: float | None = None  # when it got a batch slot
    first_token_at: float | None = None
    finished_at: float | None = None  # when its last byte went out
    aborted_at: float | None = None  # when the client's disconnect aborted it
    sent: bytes = b""  # the response body as sent (before chunked framing)


Handler = Callable[["_Writer", VLLMRequest], Awaitable[None]]


class FakeVLLM:
    """Serve with ``port = await nursery.start(fake.serve)``; point a backend at :attr:`url`."""

    def __init__(
        self,
        *,
        served_model_name: str = "fake-model",
        model_path: str = "org/fake-model-0.5B",
        api_key: str | None = None,
        max_model_len: int = 2048,
        max_num_seqs: int = 256,
        engines: int = 1,
        error_form: ErrorForm = "openai",
        metrics_version: MetricsVersion = "v1",
        tokens: int = 4,
        prefill: float = 0.0,
        pace: float = 0.0,
    ) -> None:
        self.served_model_name = served_model_name
        self.model_path = model_path
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.engines = engines
        self.error_form: ErrorForm = error_form
        self.metrics_version: MetricsVersion = metrics_version
        self.tokens = tokens
        self.prefill = prefill
        self.pace = pace
        self.kv_cache_usage: float | Sequence[float] | None = None
        self.engine_dead = False
        self.metrics_fault: Literal["hang", "error", "redirect"] | None = None
        self.fail_stream_after: int | None = None
        self.requests: list[VLLMRequest] = []
        self.port = 0
        self._created = int(time.time())
        self._limiters = [trio.CapacityLimiter(max_num_seqs) for _ in range(engines)]
        self._changed = trio.Event()
        self._counters = {"prompt": 0, "generation": 0, "stop": 0, "length": 0, "abort": 0}
        self._next_engine = 0
        self._routes: dict[str, tuple[str, Handler]] = {
            "/health": ("GET", self._health),
            "/metrics": ("GET", self._metrics),
            "/version": ("GET", self._version),
            "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._generate),
            "/v1/completions": ("POST", self._generate),
            "/v1/embeddings": ("POST", self._embeddings),
            "/tokenize": ("POST", self._tokenize),
        }

    # -- what tests look at ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root, as ``vllm serve`` prints it (the API lives under ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def running(self, engine: int | None = None) -> int:
        """Requests holding a batch slot (``vllm:num_requests_running``)."""
        engines = range(self.engines) if engine is None else (engine,)
        return sum(int(self._limiters[e].borrowed_tokens) for e in engines)

    def waiting(self, engine: int | None = None) -> int:
        """Requests waiting for a slot (``vllm:num_requests_waiting``)."""
        engines = range(self.engines) if engine is None else (engine,)
        return sum(self._limiters[e].statistics().tasks_waiting for e in engines)

    def cache_usage(self, engine: int) -> float:
        if isinstance(self.kv_cache_usage, (int, float)):
            return float(self.kv_cache_usage)
        if self.kv_cache_usage is not None:
            return float(self.kv_cache_usage[engine])
        return min(1.0, 0.05 * self.running(engine))

    def generation_requests(self) -> list[VLLMRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path != "/tokenize"]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked on every change of state
        (request seen, slot taken, token sent, request finished or aborted)."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- HTTP --------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on a free loopback port until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, conn)
                if request is None or not await self._answer(stream, conn, request):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> VLLMRequest | None:
        incoming = await read_request(stream, conn)
        if incoming is None:
            return None
        head, raw = incoming.head, incoming.body
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = VLLMRequest(
            method=head.method.decode(),
            path=head.target.decode().split("?", 1)[0],
            headers={k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
            body=body,
            received_at=trio.current_time(),
        )
        self.requests.append(request)
        self._notify()
        return request

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: VLLMRequest
    ) -> bool:
        """Answer one request while watching the socket, as Starlette's disconnect listener
        does; False when the client left (the request is then aborted)."""
        gone = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    gone = True
                    scope.cancel()
                    return
                conn.receive_data(data)  # a pipelined request; h11 keeps it for later

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                await self._dispatch(_Writer(stream, conn, request), request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True
            nursery.cancel_scope.cancel()
        if gone and request.finished_at is None:
            request.aborted_at = trio.current_time()
            self._counters["abort"] += 1
            self._notify()
        return not gone

    async def _dispatch(self, out: _Writer, request: VLLMRequest) -> None:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/v1") and self.api_key is not None and not self._authorized(request):
            await out.json(401, {"error": "Unauthorized"})
            return
        route = self._routes.get(path)
        if route is None:
            await out.json(404, {"detail": "Not Found"})
        elif route[0] != request.method:
            await out.json(405, {"detail": "Method Not Allowed"})
        else:
            try:
                await route[1](out, request)
            except VLLMError as error:
                await out.json(
                    error.status, self._error(error.message, error.err_type, error.status)
                )

    def _authorized(self, request: VLLMRequest) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token == self.api_key

    def _error(self, message: str, err_type: str, status: int) -> dict[str, Any]:
        return proto.error_body(self.error_form, message, err_type, status)

    # -- routes ------------------------------------------------------------------------

    async def _health(self, out: _Writer, request: VLLMRequest) -> None:
        await out.fixed(503 if self.engine_dead else 200, None, b"")

    async def _version(self, out: _Writer, request: VLLMRequest) -> None:
        await out.json(200, {"version": VLLM_VERSION})

    async def _metrics(self, out: _Writer, request: VLLMRequest) -> None:
        if self.metrics_fault == "hang":
            await trio.sleep_forever()
        if self.metrics_fault == "redirect" and not request.path.endswith("/"):
            # Starlette's Mount without vLLM's path_regex workaround: 307 to /metrics/
            await out.redirect("/metrics/")
            return
        if self.metrics_fault == "error":
            await out.fixed(500, "text/plain; charset=utf-8", b"Internal Server Error")
            return
        engines = [
            EngineLoad(
                self.running(e),
                self.waiting(e),
                self.cache_usage(e),
                tuple(
                    r.finished_at - r.received_at
                    for r in self.requests
                    if r.engine == e and r.finished_at is not None and r.slot_at is not None
                ),
            )
            for e in range(self.engines)
        ]
        body = exposition(self.metrics_version, self.served_model_name, engines, self._counters)
        await out.fixed(200, METRICS_TYPE, body)

    async def _models(self, out: _Writer, request: VLLMRequest) -> None:
        await out.json(
            200,
            proto.model_list(
                self.served_model_name, self.model_path, self.max_model_len, self._created
            ),
        )

    def _body(self, request: VLLMRequest, kind: str) -> dict[str, Any]:
        return proto.check_request(
            request.headers.get("content-type", ""), request.body, kind, self.served_model_name
        )

    async def _generate(self, out: _Writer, request: VLLMRequest) -> None:
        chat = request.path.rstrip("/").endswith("chat/completions")
        body = self._body(request, "ChatCompletionRequest" if chat else "CompletionRequest")
        prompt_tokens, max_tokens = proto.check_generation(body, chat, self.max_model_len)
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        gen = Generation(
            id=("chatcmpl-" if chat else "cmpl-") + rid,
            model=self.served_model_name,
            created=int(time.time()),
            prompt_tokens=prompt_tokens,
            n=self.tokens if max_tokens is None else min(self.tokens, max_tokens),
            truncated=max_tokens is not None and max_tokens < self.tokens,
        )
        if body.get("stream"):
            include_usage, continuous = proto.usage_flags(body.get("stream_options"))
            await out.start(200, _SSE_TYPE)
            events = (gen.chat_events if chat else gen.completion_events)(include_usage, continuous)
            await self._run(request, gen, events, out)
        else:
            await self._run(request, gen, None, out)
            await out.json(200, gen.chat_response() if chat else gen.completion_response())

    async def _embeddings(self, out: _Writer, request: VLLMRequest) -> None:
        inputs = proto.check_embedding(self._body(request, "EmbeddingCompletionRequest"))
        gen = Generation(
            id="embd-" + uuid.uuid4().hex[:16],
            model=self.served_model_name,
            created=int(time.time()),
            prompt_tokens=proto.count_inputs(inputs),
            n=0,
        )
        await self._run(request, gen, None, out)
        await out.json(200, proto.embedding_response(gen, inputs))

    async def _tokenize(self, out: _Writer, request: VLLMRequest) -> None:
        # Tokenized by the API server itself: no batch slot, no prefill.
        body = self._body(request, "TokenizeChatRequest")
        count = proto.check_tokenize(body)
        await out.json(200, proto.tokenize_response(count, self.max_model_len))

    # -- the engine --------------------------------------------------------------------

    async def _run(
        self,
        request: VLLMRequest,
        gen: Generation,
        events: Iterator[tuple[str, bytes]] | None,
        out: _Writer,
    ) -> None:
        """Take a batch slot, prefill, produce the tokens (writing ``events`` as they come,
        when streaming). Cancellation (the client left) frees the slot at once."""
        engine = self._next_engine
        self._next_engine = (engine + 1) % self.engines
        request.engine = engine
        limiter = self._limiters[engine]
        limiter.total_tokens = self.max_num_seqs
        self._notify()
        async with limiter:
            request.slot_at = trio.current_time()
            self._notify()
            try:
                await trio.sleep(self.prefill)
                self._counters["prompt"] += gen.prompt_tokens
                if events is None:
                    for _ in range(gen.n):
                        await trio.sleep(self.pace)
                    request.first_token_at = trio.current_time()
                else:
                    await self._stream(request, events, out)
                self._counters["generation"] += gen.n
                self._counters["length" if gen.truncated else "stop"] += 1
            finally:
                self._notify()

    async def _stream(
        self, request: VLLMRequest, events: Iterator[tuple[str, bytes]], out: _Writer
    ) -> None:
        tokens = 0
        for kind, data in events:
            if kind == "token":
                if tokens and self.pace:
                    await trio.sleep(self.pace)
                if self.fail_stream_after is not None and tokens == self.fail_stream_after:
                    # serving_chat.py: an exception after the headers becomes an error event,
                    # and the stream still ends with [DONE].
                    await out.data(
                        proto.stream_error_event(
                            self.error_form,
                            "fake engine failure mid-stream",
                            "BadRequestError",
                            400,
                        )
                    )
                    await out.data(proto.DONE)
                    break
                tokens += 1
            if kind in ("role", "token") and request.first_token_at is None:
                request.first_token_at = trio.current_time()
            await out.data(data)
            self._notify()
        await out.end()


class _Writer:
    """Writes one response with h11, recording what went out on the request."""

    def __init__(
        self, stream: trio.SocketStream, conn: h11.Connection, request: VLLMRequest
    ) -> None:
        self._stream, self._conn, self._request = stream, conn, request

    async def start(self, status: int, content_type: str | None, length: int | None = None) -> None:
        headers = [
            ("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
            ("server", "uvicorn"),
        ]
        if length is not None:
            headers.append(("content-length", str(length)))
        if content_type is not None:
            headers.append(("content-type", content_type))
        # Recorded before the bytes go out: a client may act on them before this task runs.
        self._request.status = status
        self._request.headers_at = trio.current_time()
        await self._send(h11.Response(status_code=status, headers=headers))

    async def data(self, data: bytes) -> None:
        self._request.sent += data
        await self._send(h11.Data(data=data))

    async def end(self) -> None:
        self._request.finished_at = trio.current_time()
        try:
            await self._send(h11.EndOfMessage())
        except BaseException:
            self._request.finished_at = None  # the client left before the end: an abort
            raise

    async def fixed(self, status: int, content_type: str | None, body: bytes) -> None:
        await self.start(status, content_type, len(body))
        if body:
            await self.data(body)
        await self.end()

    async def json(self, status: int, doc: Any) -> None:
        await self.fixed(status, _JSON_TYPE, proto.dumps(doc))

    async def redirect(self, location: str) -> None:
        self._request.status = 307
        self._request.headers_at = trio.current_time()
        await self._send(
            h11.Response(
                status_code=307,
                headers=[("location", location), ("content-length", "0"), ("server", "uvicorn")],
            )
        )
        await self.end()

    async def _send(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:  # h11 returns None only for ConnectionClosed, which is never sent here
            await self._stream.send_all(data)
