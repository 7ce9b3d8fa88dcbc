"""A scripted fake OpenAI-compatible upstream: a real HTTP/1.1 server on loopback.

Tests drive the gateway against it. Each request carries its own script in the JSON body
under ``"fake"`` (the gateway passes unknown fields through untouched), so one server serves
every scenario; for a client that cannot add one (a coding agent's CLI), the test sets
:attr:`FakeOpenAI.script_for`, which picks the script from the body the fake got. Responses are written as raw bytes, so faults can be exact: a reset before
or after headers, a connection cut in the middle of a line, garbage, a stall.

A path ending in ``/responses`` is answered as a server speaking OpenAI's Responses API
does: an SSE stream of numbered events (:func:`responses_events`) or a whole ``response``;
``/responses/input_tokens`` answers ``{"object": "response.input_tokens", "input_tokens":
N}`` (N: script ``input_tokens``, default 10). A path ending in ``/messages`` (query string aside) is answered as an Anthropic-native
server does (llama-server's own ``/v1/messages``): an SSE stream of named events
(:func:`messages_events`) or a whole ``message`` object, and errors as
``{"type": "error", "error": {"type": …, "message": …}}``. ``/messages/count_tokens``
answers ``{"input_tokens": N}``. ``GET …/models`` carrying ``anthropic-version`` answers
Anthropic's list shape (``type: "model"``, ``has_more``, ``first_id``, ``last_id``).

Script keys (all optional)::

    status        HTTP status (default 200); non-2xx answers with an OpenAI error body
                  (Messages: an Anthropic one, its type from ``type`` or else the status's:
                  400 invalid_request_error, 401 authentication_error, 403 permission_error,
                  404 not_found_error, 413 request_too_large, 429 rate_limit_error,
                  529 overloaded_error, any other api_error; its text from ``message``)
    error_fields  more members of the OpenAI error object (llama-server's ``n_ctx``, ...)
    status_on_port  {port: status}: the status only the fake on that port answers with
                  (one script for a pool of fakes behind one route)
    fault_on_port {port: fault}: likewise, the fault only the fake on that port has
    reset_at      the piece before which ``reset_mid_stream`` resets (default: half-way)
    headers_delay seconds before the status line
    prefill       seconds after the headers, before the first body byte
    tokens        number of content deltas to stream (default 3)
    pace          seconds between deltas
    gap_at, gap   pause ``gap`` seconds before delta number ``gap_at``
    chunks        raw body pieces (latin-1 strings) sent instead of generated deltas
    comment_every send ``: upstream-ping`` before every n-th event, the first included
                  (Messages: ``event: ping`` / ``data: {"type": "ping"}``)
    input_tokens  count_tokens' answer (default: the whitespace-separated words of the text
                  in ``system`` and ``messages``, as strings or text blocks, plus 10)
    fault         reset_before_headers | close_before_headers | reset_after_headers |
                  reset_mid_stream | cut_mid_line | garbage | stall | no_done |
                  hold_after_done (the whole stream, [DONE] included, then the connection
                  held open without ending the body) | error_event (Messages only: half the
                  stream, then ``event: error`` with an Anthropic error object of script
                  ``type`` (default overloaded_error), and the body ends cleanly).
                  For Messages, ``no_done`` ends the stream without ``message_stop`` and
                  ``hold_after_done`` holds after ``message_stop``.
    content_type  override of the response's content type
    body          the raw body (a latin-1 string) of a non-streamed 200, instead of the answer
    queue, slots  answer at most ``slots`` (default 1) requests naming the same ``queue`` at
                  once; the others wait, first come first served, without a single byte
                  (not even the status line), as a busy llama-server's queued requests do

Every connection and request is recorded in :attr:`FakeOpenAI.log` with trio timestamps,
including when the gateway closed the connection — the proof that cancellation reached
the upstream.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

from .fake_answers import (
    ANTHROPIC_ERROR_TYPES,
    MODELS_ANTHROPIC,
    PING,
    anthropic_error,
    chat_events,
    completion_events,
    completion_object,
    count_tokens,
    message_object,
    messages_events,
    response_object,
    responses_events,
)
from .http11 import read_request

__all__ = [
    "ConnectionRecord",
    "FakeOpenAI",
    "RequestRecord",
    "chat_events",
    "completion_events",
    "messages_events",
    "responses_events",
]


@dataclass(eq=False)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    finished_at: float | None = None  # when the fake wrote its last byte
    slot_at: float | None = None  # when a request naming a ``queue`` got its slot
    sent: bytes = b""  # the body bytes as sent (before chunked framing)


@dataclass(eq=False)
class ConnectionRecord:
    opened_at: float
    closed_at: float | None = None  # when the peer's close was seen
    requests: list[RequestRecord] = field(default_factory=list)
    closed_event: trio.Event = field(default_factory=trio.Event)
    early_data: bytes = b""  # bytes of the next request that arrived during an answer


@dataclass(eq=False)
class _Queue:
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    waiting: int = 0  # arrived, no slot yet (a CapacityLimiter counts only parked tasks)


def _reset(stream: trio.SocketStream) -> None:
    """Make the coming close an RST instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FakeOpenAI:
    """Serve with ``port = await nursery.start(fake.serve)``."""

    def __init__(self) -> None:
        self.connections: list[ConnectionRecord] = []
        self.port = 0
        self._queues: dict[str, _Queue] = {}
        self._queues_changed = trio.Event()
        self.active = 0  # requests being answered right now
        self.max_active = 0  # the most ever answered at once
        # The script of a request whose body carries none: for clients that cannot add one
        # (a coding agent's CLI), chosen from the body the fake got.
        self.script_for: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @property
    def requests(self) -> list[RequestRecord]:
        return [r for c in self.connections for r in c.requests]

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self.connections if c.closed_at is None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _response_id(self) -> str:
        """A response id of its own for every answer, as a real server gives."""
        return f"resp_fake{self.port}n{len(self.requests)}"

    def queue_stats(self, queue: str) -> tuple[int, int]:
        """(requests holding a slot, requests waiting for one) of ``queue``."""
        state = self._queues.get(queue)
        if state is None:
            return (0, 0)
        return (state.limiter.borrowed_tokens, state.waiting)

    async def wait_queue(self, queue: str, *, holding: int, waiting: int = 0) -> None:
        """Return once ``queue`` has at least ``holding`` requests answered and ``waiting``
        requests waiting: how a test orders its requests without sleeping."""
        while True:
            held, queued = self.queue_stats(queue)
            if held >= holding and queued >= waiting:
                return
            await self._queues_changed.wait()

    def _queue_changed(self) -> None:
        self._queues_changed.set()
        self._queues_changed = trio.Event()

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled. ``port`` 0 picks a free one; a given port lets a test
        stop the fake and start it again where the gateway expects it."""
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        record = ConnectionRecord(opened_at=trio.current_time())
        self.connections.append(record)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, conn, record)
                if request is None:
                    return
                keep_open = await self._answer(stream, conn, record, request)
                if not keep_open:
                    return
                leftover = conn.trailing_data[0] + record.early_data
                record.early_data = b""
                conn = h11.Connection(h11.SERVER)
                if leftover:  # receive_data(b"") would mean EOF to h11
                    conn.receive_data(leftover)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            if record.closed_at is None:
                record.closed_at = trio.current_time()
                record.closed_event.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection, record: ConnectionRecord
    ) -> RequestRecord | None:
        incoming = await read_request(stream, conn)
        if incoming is None:
            record.closed_at = trio.current_time()
            record.closed_event.set()
            return None
        head, body = incoming.head, incoming.body
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {"_raw": body.decode("latin-1")}
        req = RequestRecord(
            method=head.method.decode(),
            path=head.target.decode(),
            headers={k.decode(): v.decode() for k, v in head.headers},
            body=doc,
            received_at=trio.current_time(),
        )
        record.requests.append(req)
        return req

    async def _watch_close(
        self, stream: trio.SocketStream, record: ConnectionRecord, scope: trio.CancelScope
    ) -> None:
        # While the answer is being written, the gateway sends nothing more: any read
        # result is its close (EOF or reset). Record it and stop the script at once.
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:  # a pipelined next request, not a close
            record.early_data += data
            return
        record.closed_at = trio.current_time()
        record.closed_event.set()
        scope.cancel()

    async def _answer(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        record: ConnectionRecord,
        req: RequestRecord,
    ) -> bool:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_close, stream, record, nursery.cancel_scope)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                keep = await self._script(stream, req)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                keep = False  # the gateway went away mid-answer
                if record.closed_at is None:
                    record.closed_at = trio.current_time()
                    record.closed_event.set()
            finally:
                self.active -= 1
            nursery.cancel_scope.cancel()
        if record.closed_at is not None:
            return False
        return keep

    async def _script(self, stream: trio.SocketStream, req: RequestRecord) -> bool:
        script: dict[str, Any] = req.body.get("fake") or {}
        if not script and self.script_for is not None:
            script = self.script_for(req.body)
        if "queue" not in script:
            return await self._scripted_answer(stream, req, script)
        state = self._queues.setdefault(str(script["queue"]), _Queue())
        state.limiter.total_tokens = int(script.get("slots", 1))
        state.waiting += 1
        self._queue_changed()
        try:
            await state.limiter.acquire()
        finally:
            state.waiting -= 1
            self._queue_changed()
        try:
            req.slot_at = trio.current_time()
            return await self._scripted_answer(stream, req, script)
        finally:
            state.limiter.release()
            self._queue_changed()

    async def _scripted_answer(
        self, stream: trio.SocketStream, req: RequestRecord, script: dict[str, Any]
    ) -> bool:
        fault: str | None = script.get("fault_on_port", {}).get(str(self.port), script.get("fault"))
        stream_mode = bool(req.body.get("stream"))
        await trio.sleep(script.get("headers_delay", 0))
        if fault in ("reset_before_headers", "close_before_headers"):
            if fault == "reset_before_headers":
                _reset(stream)
            return False
        status = int(
            script.get("status_on_port", {}).get(str(self.port), script.get("status", 200))
        )
        path = req.path.partition("?")[0]
        messages = path.endswith(("/messages", "/messages/count_tokens"))
        if req.path.endswith("/models") and req.method == "GET":
            if "anthropic-version" in req.headers:
                listing = json.dumps(MODELS_ANTHROPIC)
            else:
                listing = json.dumps(
                    {"object": "list", "data": [{"id": "fake", "object": "model"}]}
                )
            await self._send_fixed(stream, 200, "application/json", listing.encode(), req)
            return True
        if messages and status >= 300:
            error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            body = anthropic_error(script, error_type, f"fake error {status}")
            await self._send_fixed(stream, status, "application/json", body, req)
            return True
        responses = path.endswith("/responses")
        if path.endswith("/responses/input_tokens") and status < 300:
            count = int(script.get("input_tokens", 10))
            body = json.dumps({"object": "response.input_tokens", "input_tokens": count}).encode()
            await self._send_fixed(stream, 200, "application/json", body, req)
            return True
        if path.endswith("/messages/count_tokens"):
            await trio.sleep(script.get("prefill", 0))
            count = int(script.get("input_tokens", count_tokens(req.body)))
            body = json.dumps({"input_tokens": count}).encode()
            await self._send_fixed(stream, 200, "application/json", body, req)
            return True
        if status >= 300:
            err = {
                "error": {
                    "message": script.get("message", f"fake error {status}"),
                    "type": script.get("type", "server_error"),
                    "param": None,
                    "code": script.get("code", "fake_error"),
                    **script.get("error_fields", {}),
                }
            }
            await self._send_fixed(
                stream, status, "application/json", json.dumps(err).encode(), req
            )
            return True
        if not stream_mode:
            await trio.sleep(script.get("prefill", 0))
            n = int(script.get("tokens", 3))
            text = "".join(f"tok{i} " for i in range(n))
            if messages:
                body = json.dumps(message_object(str(req.body.get("model")), text, n)).encode()
            elif responses:
                rid = self._response_id()
                body = json.dumps(
                    response_object(str(req.body.get("model")), text, n, rid)
                ).encode()
            else:
                body = json.dumps(completion_object(req.body, n)).encode()
            if "body" in script:
                body = str(script["body"]).encode("latin-1")
            await self._send_fixed(
                stream, 200, script.get("content_type", "application/json"), body, req
            )
            return True

        ctype = script.get("content_type", "text/event-stream")
        await stream.send_all(
            f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncache-control: no-cache\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        if fault == "reset_after_headers":
            _reset(stream)
            return False
        await trio.sleep(script.get("prefill", 0))
        if "chunks" in script:
            pieces = [c.encode("latin-1") for c in script["chunks"]]
            paces = script.get("paces") or [script.get("pace", 0)] * len(pieces)
        else:
            if messages:
                events, beat = messages_events, PING
            elif responses:
                events = partial(responses_events, id=self._response_id())
                beat = b": upstream-ping\n\n"
            elif "messages" in req.body:
                events, beat = chat_events, b": upstream-ping\n\n"
            else:
                events, beat = completion_events, b": upstream-ping\n\n"
            pieces = events(int(script.get("tokens", 3)), model=str(req.body.get("model")))
            paces = [script.get("pace", 0)] * len(pieces)
            every = script.get("comment_every")
            if every:
                pieces = [
                    p2
                    for i, p in enumerate(pieces)
                    for p2 in ((beat, p) if i % every == 0 else (p,))
                ]
                paces = [script.get("pace", 0)] * len(pieces)
        if fault == "no_done":
            pieces = pieces[:-1]
        if fault == "garbage":
            pieces = [*pieces[:2], b"\x00\xffnot sse at all " * 8]
        gap_at, gap = script.get("gap_at"), script.get("gap", 0)
        reset_at = int(script.get("reset_at", len(pieces) // 2))
        for i, piece in enumerate(pieces):
            if gap_at is not None and i == gap_at:
                await trio.sleep(gap)
            if fault == "reset_mid_stream" and i == reset_at:
                _reset(stream)
                return False
            if fault == "cut_mid_line" and i == len(pieces) // 2:
                await self._send_chunk(stream, piece[: len(piece) // 2], req)
                return False
            if fault == "stall" and i == len(pieces) // 2:
                await trio.sleep_forever()
            if messages and fault == "error_event" and i == len(pieces) // 2:
                error = anthropic_error(script, "overloaded_error", "fake error event")
                await self._send_chunk(stream, b"event: error\ndata: %s\n\n" % error, req)
                break
            await self._send_chunk(stream, piece, req)
            if paces[i % len(paces)]:
                await trio.sleep(paces[i % len(paces)])
        if fault == "hold_after_done":
            await trio.sleep_forever()
        await stream.send_all(b"0\r\n\r\n")
        req.finished_at = trio.current_time()
        return fault != "garbage"

    async def _send_chunk(self, stream: trio.SocketStream, data: bytes, req: RequestRecord) -> None:
        req.sent += data
        await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def _send_fixed(
        self, stream: trio.SocketStream, status: int, ctype: str, body: bytes, req: RequestRecord
    ) -> None:
        reason = b"OK" if status < 300 else b"Error"  # the reason phrase is free text
        req.sent = body
        await stream.send_all(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, ctype.encode(), len(body), body)
        )
        req.finished_at = trio.current_time()
