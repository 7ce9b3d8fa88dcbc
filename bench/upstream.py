"""A fast, deterministic fake OpenAI (Chat and Responses) and Anthropic Messages upstream for
the benchmarks.

Raw HTTP/1.1 on an asyncio ``Protocol`` (uvloop when installed), keep-alive, no framework:
it must never be what limits a measurement, and its ``direct`` rows show that it is not.

A request's shape is read from its body, so that every proxy forwards it unchanged:

* ``"stream": false`` (or absent) — one small ``chat.completion`` JSON at once.
* ``"stream": true`` — ``text/event-stream`` with chunked encoding; the headers go out at
  once, then (after ``prefill`` ms of silence) a role chunk, ``n`` content deltas
  ``tok0 ``, ``tok1 ``, … each ``gap`` ms after the previous event, a ``finish_reason``
  chunk, a usage chunk and ``[DONE]``. Every event is its own write (its own HTTP chunk).
  The parameters come from the last user message, ``bench:n=64,gap=20,prefill=0``;
  the defaults are those values.
* ``POST …/messages`` — Anthropic Messages, the same shapes: non-streaming, one small
  ``message`` object; streaming, ``message_start`` and ``content_block_start`` where chat
  has its role chunk, ``n`` ``text_delta`` events ``tok0 ``, … on the same pacing, and
  ``content_block_stop``, ``message_delta`` and ``message_stop`` where chat ends.
* ``POST …/responses`` — OpenAI Responses, the same shapes: non-streaming, one small
  ``response`` object; streaming, ``response.created``, ``response.in_progress``,
  ``response.output_item.added`` and ``response.content_part.added`` where chat has its role
  chunk, ``n`` ``response.output_text.delta`` events ``tok0 ``, … on the same pacing, and
  ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done`` and ``response.completed`` where chat ends; every event has
  its ``sequence_number``, from 0.

Times are scheduled on absolute deadlines (``call_at``), so they do not drift. uvloop's
timers count whole milliseconds and may fire up to one early; an event whose timer fired is
written then (:data:`TIMER_SLACK`), not rescheduled — rescheduling spun the loop: 68,690
timer calls for 101 events, most of a core at 180 paced streams.

Run: ``python bench/upstream.py --port 0`` prints ``LISTENING <port>`` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
from collections.abc import Callable
from functools import lru_cache

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_PARAMS = re.compile(rb"bench:n=(\d+),gap=(\d+),prefill=(\d+)")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_MESSAGES_PATH = re.compile(rb"POST [^ ?]*/messages[ ?]")
_RESPONSES_PATH = re.compile(rb"POST [^ ?]*/responses[ ?]")

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    },
    separators=(",", ":"),
).encode()


def _unary(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_UNARY_RESPONSE = _unary(_COMPLETION)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_PREFIX = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[{"index":0,"delta":'


def _chunk(event: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(event), event)


def _sse(payload: bytes) -> bytes:
    return _chunk(b"data: " + payload + b"\n\n")


_ROLE = _sse(_PREFIX + b'{"role":"assistant","content":""},"finish_reason":null}]}')
_TOKENS = [_sse(_PREFIX + b'{"content":"tok%d "},"finish_reason":null}]}' % i) for i in range(4096)]
_FINISH = _sse(_PREFIX + b'{},"finish_reason":"stop"}]}')
_USAGE = _sse(
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":64,'
    b'"total_tokens":69}}'
)
_DONE = _sse(b"[DONE]") + b"0\r\n\r\n"


class _Shape:
    """One dialect's pre-encoded answers: the whole response, and the stream's events —
    ``first`` where chat has its role chunk, ``tokens`` the content, ``last`` the end (or
    ``ending(n)``, for a dialect whose end depends on ``n``) — each event its own write."""

    __slots__ = ("ending", "first", "last", "tokens", "unary")

    def __init__(
        self,
        unary: bytes,
        first: list[bytes],
        tokens: list[bytes],
        last: list[bytes],
        ending: Callable[[int], list[bytes]] | None = None,
    ) -> None:
        self.unary, self.first, self.tokens, self.last = unary, first, tokens, last
        self.ending = ending

    def end(self, n: int) -> list[bytes]:
        return self.last if self.ending is None else self.ending(n)


def _named(kind: str, payload: dict[str, object]) -> bytes:
    """An Anthropic SSE event (``event:`` line, ``data:`` line) as one HTTP chunk."""
    data = json.dumps({"type": kind, **payload}, separators=(",", ":")).encode()
    return _chunk(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")


_MESSAGE: dict[str, object] = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "bench",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
}
CHAT = _Shape(_UNARY_RESPONSE, [_ROLE], _TOKENS, [_FINISH, _USAGE, _DONE])
MESSAGES = _Shape(
    _unary(
        json.dumps(
            {
                **_MESSAGE,
                "content": [{"type": "text", "text": "Hello from the fake upstream."}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 5, "output_tokens": 6},
            },
            separators=(",", ":"),
        ).encode()
    ),
    [
        _named("message_start", {"message": _MESSAGE}),
        _named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ],
    [
        _named(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}},
        )
        for i in range(4096)
    ],
    [
        _named("content_block_stop", {"index": 0}),
        _named(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 64},
            },
        ),
        _named("message_stop", {}) + b"0\r\n\r\n",
    ],
)


def _typed(payload: dict[str, object]) -> bytes:
    """An OpenAI Responses SSE event (``event:`` line, ``data:`` line) as one HTTP chunk."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    return _chunk(b"event: " + str(payload["type"]).encode() + b"\ndata: " + data + b"\n\n")


_RESP_ITEM = "msg_bench"
# A response's id, in the events that carry it: replaced in each stream by one of its own of
# the same length (the gateway stores a passed-through response under its upstream id).
_RESP_ID = b"resp_000000000000"


def _response(status: str, text: str | None, output_tokens: int) -> dict[str, object]:
    """A ``response`` object: in progress (no output) or completed with ``text``."""
    output: list[object] = []
    if text is not None:
        output = [
            {
                "id": _RESP_ITEM,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": _RESP_ID.decode(),
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": "bench",
        "output": output,
        "usage": None
        if text is None
        else {
            "input_tokens": 5,
            "output_tokens": output_tokens,
            "total_tokens": 5 + output_tokens,
        },
    }


def _part(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": []}


_RESP_FIRST = [
    _typed(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": _response("in_progress", None, 0),
        }
    ),
    _typed(
        {
            "type": "response.in_progress",
            "sequence_number": 1,
            "response": _response("in_progress", None, 0),
        }
    ),
    _typed(
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": {
                "id": _RESP_ITEM,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        }
    ),
    _typed(
        {
            "type": "response.content_part.added",
            "sequence_number": 3,
            "item_id": _RESP_ITEM,
            "output_index": 0,
            "content_index": 0,
            "part": _part(""),
        }
    ),
]
_RESP_TOKENS = [
    _typed(
        {
            "type": "response.output_text.delta",
            "sequence_number": 4 + i,
            "item_id": _RESP_ITEM,
            "output_index": 0,
            "content_index": 0,
            "delta": f"tok{i} ",
            "logprobs": [],
        }
    )
    for i in range(4096)
]


@lru_cache(maxsize=64)
def _responses_end(n: int) -> list[bytes]:
    """The events after ``n`` deltas: the whole text in each ``.done``, then the response."""
    text = "".join(f"tok{i} " for i in range(n))
    seq = 4 + n
    item = {
        "id": _RESP_ITEM,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [_part(text)],
    }
    where = {"item_id": _RESP_ITEM, "output_index": 0, "content_index": 0}
    return [
        _typed(
            {
                "type": "response.output_text.done",
                "sequence_number": seq,
                **where,
                "text": text,
                "logprobs": [],
            }
        ),
        _typed(
            {
                "type": "response.content_part.done",
                "sequence_number": seq + 1,
                **where,
                "part": _part(text),
            }
        ),
        _typed(
            {
                "type": "response.output_item.done",
                "sequence_number": seq + 2,
                "output_index": 0,
                "item": item,
            }
        ),
        _typed(
            {
                "type": "response.completed",
                "sequence_number": seq + 3,
                "response": _response("completed", text, n),
            }
        )
        + b"0\r\n\r\n",
    ]


RESPONSES = _Shape(
    _unary(
        json.dumps(
            _response("completed", "Hello from the fake upstream.", 6), separators=(",", ":")
        ).encode()
    ),
    _RESP_FIRST,
    _RESP_TOKENS,
    [],
    _responses_end,
)


_responses_served = 0  # streamed Responses, for their ids
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


TIMER_SLACK = 0.001  # seconds a timer may fire early (uvloop's resolution) and count as due


class Upstream(asyncio.Protocol):
    __slots__ = ("_buf", "_busy", "_id", "_loop", "_served", "_timer", "_transport")

    max_requests = 0  # like hypercorn's keep_alive_max_requests; 0: no limit

    def __init__(self) -> None:
        self._served = 0
        self._id = _RESP_ID
        self._buf = bytearray()
        self._busy = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        transport = self._transport
        while transport is not None and not self._busy:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[: end + 2])
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(self._buf) < end + 4 + length:
                return
            body = bytes(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            if not head.startswith(b"POST "):
                transport.write(_BAD)
                transport.close()
                return
            if _MESSAGES_PATH.match(head):
                shape = MESSAGES
            elif _RESPONSES_PATH.match(head):
                shape = RESPONSES
            else:
                shape = CHAT
            if _STREAM.search(body):
                params = _PARAMS.findall(body)
                n, gap, prefill = (int(v) for v in params[-1]) if params else (64, 20, 0)
                self._busy = True
                transport.write(_STREAM_HEAD)
                self._stream(shape, 0, n, gap / 1000, self._loop.time() + prefill / 1000)
            else:
                self._served += 1
                if self.max_requests and self._served >= self.max_requests:
                    transport.write(
                        shape.unary.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
                    )
                    transport.close()
                    return
                transport.write(shape.unary)

    def _stream(self, shape: _Shape, step: int, n: int, gap: float, at: float) -> None:
        """Write event ``step`` at ``at`` (now or later), then schedule the next one."""
        now = self._loop.time()
        if at > now + TIMER_SLACK:
            self._timer = self._loop.call_at(at, self._stream, shape, step, n, gap, at)
            return
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if step == 0:
            if shape is RESPONSES:
                global _responses_served
                _responses_served += 1
                self._id = b"resp_%012d" % _responses_served
            for event in shape.first:
                transport.write(event.replace(_RESP_ID, self._id, 1))
        elif step <= n:
            transport.write(shape.tokens[step - 1])
        else:
            for event in shape.end(n):
                transport.write(event.replace(_RESP_ID, self._id, 1))
            self._busy = False
            if self._buf:
                self._serve_buffered()
            return
        self._stream(shape, step + 1, n, gap, at + gap)


def raise_nofile(want: int = 65536) -> None:
    """Lift the open-file limit for 10,000-stream runs (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {getattr(uvloop, '__version__', '?')}"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=16384, reuse_address=True)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="close a connection after this many non-streamed answers",
    )
    args = parser.parse_args()
    raise_nofile()
    install_uvloop()
    Upstream.max_requests = args.max_requests
    asyncio.run(serve(args.host, args.port))
    os._exit(0)  # 10k open connections: skip the slow orderly teardown


if __name__ == "__main__":
    main()
