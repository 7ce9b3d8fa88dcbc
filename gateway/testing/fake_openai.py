"""A scripted fake OpenAI-compatible upstream: a real HTTP/1.1 server on loopback.

Tests drive the gateway against it. Each request carries its own script in the JSON body
under ``"fake"`` (the gateway passes unknown fields through untouched), so one server serves
every scenario. Responses are written as raw bytes, so faults can be exact: a reset before
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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

from ..abc import SSE_DONE, CompletionEncoder
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

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_MODELS_ANTHROPIC = {
    "data": [
        {
            "type": "model",
            "id": "fake",
            "display_name": "Fake",
            "created_at": "2025-01-01T00:00:00Z",
        }
    ],
    "has_more": False,
    "first_id": "fake",
    "last_id": "fake",
}


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


def chat_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """A chat stream as OpenAI sends it: role, ``n`` content deltas, finish, usage, [DONE]."""
    encoder = CompletionEncoder("chat/completions", "chatcmpl-fake", model, 0)
    return _stream(encoder, n, text)


def completion_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """A legacy completions stream as OpenAI sends it: ``n`` text chunks, the last one with
    its finish reason, usage, [DONE]."""
    return _stream(CompletionEncoder("completions", "cmpl-fake", model, 0), n, text)


def _stream(encoder: CompletionEncoder, n: int, text: str) -> list[bytes]:
    opening = encoder.opening()
    return [
        *([opening] if opening else []),
        *(encoder.piece(f"{text}{i} ") for i in range(n)),
        encoder.piece("", "stop"),
        encoder.usage(5, n),
        SSE_DONE,
    ]


def messages_events(n: int, *, model: str = "fake", text: str = "tok") -> list[bytes]:
    """An Anthropic Messages stream, one named event per item: ``message_start``, one
    text block of ``n`` ``text_delta`` events, ``message_delta`` (end_turn), ``message_stop``."""
    start = _message(model, "", 0)
    start["content"], start["stop_reason"] = [], None
    return [
        _event({"type": "message_start", "message": start}),
        _event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        *(
            _event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"{text}{i} "},
                }
            )
            for i in range(n)
        ),
        _event({"type": "content_block_stop", "index": 0}),
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            }
        ),
        _event({"type": "message_stop"}),
    ]


def responses_events(
    n: int, *, model: str = "fake", text: str = "tok", id: str = "resp_fake"
) -> list[bytes]:
    """An OpenAI Responses stream, one named event per item, numbered from 0:
    ``response.created``, ``response.in_progress``, one message item of one output_text part
    made of ``n`` deltas, its ``.done`` events, ``response.completed``."""
    whole = "".join(f"{text}{i} " for i in range(n))
    opening = {**_response(model, "", 0, id), "status": "in_progress", "output": [], "usage": None}
    item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "in_progress"}
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    docs: list[dict[str, Any]] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **at, "part": part},
        *(
            {"type": "response.output_text.delta", **at, "delta": f"{text}{i} ", "logprobs": []}
            for i in range(n)
        ),
        {"type": "response.output_text.done", **at, "text": whole, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": whole}},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _response(model, whole, n, id)["output"][0],
        },
        {"type": "response.completed", "response": _response(model, whole, n, id)},
    ]
    return [_event({**doc, "sequence_number": i}) for i, doc in enumerate(docs)]


def _response(model: str, text: str, n: int, id: str = "resp_fake") -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_fake",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 5,
            "output_tokens": n,
            "total_tokens": 5 + n,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (
        data["type"].encode(),
        json.dumps(data, separators=(",", ":")).encode(),
    )


def _message(model: str, text: str, n: int) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": n},
    }


def _anthropic_error(script: dict[str, Any], error_type: str, message: str) -> bytes:
    """An Anthropic error object; the script's ``type`` and ``message`` win."""
    error = {"type": script.get("type", error_type), "message": script.get("message", message)}
    return json.dumps({"type": "error", "error": error}).encode()


def _count_tokens(body: dict[str, Any]) -> int:
    """The words of the text in ``system`` and ``messages`` (strings or text blocks), + 10."""
    texts: list[str] = []
    for content in [body.get("system"), *(m.get("content") for m in body.get("messages", []))]:
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [b["text"] for b in content if isinstance(b.get("text"), str)]
    return sum(len(t.split()) for t in texts) + 10


def _completion(body: dict[str, Any], n: int) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(n))
    usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
    if "messages" in body:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "usage": usage,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
        }
    if "input" in body:
        return {
            "object": "list",
            "model": body.get("model"),
            "usage": usage,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
        }
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": body.get("model"),
        "usage": usage,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
    }


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
                listing = json.dumps(_MODELS_ANTHROPIC)
            else:
                listing = json.dumps(
                    {"object": "list", "data": [{"id": "fake", "object": "model"}]}
                )
            await self._send_fixed(stream, 200, "application/json", listing.encode(), req)
            return True
        if messages and status >= 300:
            error_type = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            body = _anthropic_error(script, error_type, f"fake error {status}")
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
            count = int(script.get("input_tokens", _count_tokens(req.body)))
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
                body = json.dumps(_message(str(req.body.get("model")), text, n)).encode()
            elif responses:
                rid = self._response_id()
                body = json.dumps(_response(str(req.body.get("model")), text, n, rid)).encode()
            else:
                body = json.dumps(_completion(req.body, n)).encode()
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
                events, beat = messages_events, _PING
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
                error = _anthropic_error(script, "overloaded_error", "fake error event")
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
