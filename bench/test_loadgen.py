"""Checks of the load generator and the fake upstream (``bench/run``'s measuring parts): the
load generator's HTTP decoder at every split point; the two against each other over real
sockets, including a sustained level that must fail and a fixed rate; what a connection
records of chat, Anthropic Messages and OpenAI Responses streams fed by hand, and of
Responses turns over a WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from fixtures import loadgen, upstream, upstream_port  # noqa: F401 (pytest fixtures)
from loadgen_conn import Conn, ResponseDecoder, StreamRecord

PIECES = [b"data: one\n\n", b": keepalive\n\ndata: x", b"\n\n\n"]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in PIECES)
    + b"0\r\n\r\n"
)
FIXED = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("response", "status", "body"),
    [
        (CHUNKED, 200, b"data: one\n\n: keepalive\n\ndata: x\n\n\n"),
        (FIXED, 201, b"hello"),
    ],
)
def test_decoder_at_every_split_point(response: bytes, status: int, body: bytes) -> None:
    for cut in range(len(response) + 1):
        decoder = ResponseDecoder()
        out = decoder.feed(response[:cut])
        assert not decoder.done or cut == len(response)
        out += decoder.feed(response[cut:])
        assert decoder.done, cut
        assert decoder.status == status
        assert out == body, cut


def test_decoder_rejects_a_response_without_length() -> None:
    with pytest.raises(ValueError, match="without length"):
        ResponseDecoder().feed(b"HTTP/1.1 200 OK\r\n\r\nbody")


def test_unary_requests_all_answered(upstream_port: int) -> None:
    r = loadgen(
        upstream_port, "unary", "--concurrency", "4", "--duration", "0.3", "--warmup", "0.1"
    )
    assert r["errors"] == {}
    assert isinstance(r["requests"], int) and r["requests"] > 0
    assert r["ok"] == r["requests"]


@pytest.mark.parametrize("upstream", [["--max-requests", "7"]], indirect=True)
def test_unary_carries_on_after_connection_close(upstream_port: int) -> None:
    r = loadgen(upstream_port, "unary", "--concurrency", "2", "--duration", "0.3", "--warmup", "0")
    assert r["errors"] == {}
    assert isinstance(r["requests"], int) and r["requests"] > 14
    assert isinstance(r["reconnects"], int) and r["reconnects"] >= r["requests"] // 7 - 2


class _EarlyTimers:
    """An event loop's clock and timers, fired by hand half a millisecond early, as uvloop's
    (whole milliseconds) may fire them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []
        self.scheduled = 0

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Any, *args: Any) -> SimpleNamespace:
        self.scheduled += 1
        self.timers.append((at, callback, args))
        return SimpleNamespace(cancel=lambda: None)

    def fire_next(self) -> None:
        at, callback, args = self.timers.pop(0)
        self.now = at - 0.0005
        callback(*args)


def test_upstream_writes_an_event_whose_timer_fired_a_little_early() -> None:
    """One timer per paced event, even when timers fire early: rescheduling instead spun
    uvloop's loop through tens of thousands of timers per stream."""
    import upstream as fake_upstream

    written: list[bytes] = []
    body = b'{"stream": true, "content": "bench:n=5,gap=20,prefill=0"}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    async def make() -> Any:
        return fake_upstream.Upstream()

    server = asyncio.run(make())
    loop = _EarlyTimers()
    server._loop = loop
    server.connection_made(SimpleNamespace(write=written.append))
    server.data_received(request)
    for _ in range(100):  # bounded: without the slack each early timer is rescheduled
        if not loop.timers:
            break
        loop.fire_next()
    assert not loop.timers
    assert loop.scheduled == 6  # tokens 1..5 and the end; the first event went out at once
    text = b"".join(written)
    assert (
        all(b"tok%d " % i in text for i in range(5))
        and b"data: [DONE]" in text
        and text.endswith(b"0\r\n\r\n")
    )


def test_streams_arrive_whole_and_in_order(upstream_port: int) -> None:
    r = loadgen(
        upstream_port, "stream", "--count", "3", "--concurrency", "2", "--tokens", "8", "--gap", "2"
    )
    assert r["errors"] == {}
    assert r["streams"] == 3
    assert (r["missing"], r["reordered"], r["incomplete"], r["failed"]) == (0, 0, 0, 0)
    gaps = r["inter_chunk_ms"]
    assert isinstance(gaps, dict) and gaps["n"] == 3 * 7


def test_a_sustained_level_fails_when_silence_exceeds_the_limit(upstream_port: int) -> None:
    passing = loadgen(
        upstream_port,
        "sustain",
        "--streams",
        "5",
        "--tokens",
        "3",
        "--gap",
        "10",
        "--ramp",
        "0.05",
        "--max-gap",
        "5000",
    )
    assert passing["passed"] is True
    # The upstream waits 10 ms between events: a 1 ms limit cannot be met.
    failing = loadgen(
        upstream_port,
        "sustain",
        "--streams",
        "5",
        "--tokens",
        "3",
        "--gap",
        "10",
        "--ramp",
        "0.05",
        "--max-gap",
        "1",
    )
    assert failing["passed"] is False
    assert failing["missing"] == 0


def test_unary_at_a_fixed_rate_keeps_to_it_and_sums_the_cpu_of_every_pid(
    upstream: tuple[int, int],
) -> None:
    """``--rate``: 4 connections share one schedule of 100 requests/s (closed, a loop would
    send thousands); ``--also-pid``: the CPU of each process, and their sum."""
    port, pid = upstream
    r = loadgen(
        port,
        "unary",
        "--concurrency",
        "4",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--pid",
        str(pid),
        "--also-pid",
        str(os.getpid()),
    )
    assert r["errors"] == {} and r["rate"] == 100
    assert isinstance(r["requests"], int) and 95 <= r["requests"] <= 105
    each = r["server_cpu_s_each"]
    assert isinstance(each, list) and len(each) == 2
    assert r["server_cpu_us_per_request"] == pytest.approx(1e6 * sum(each) / r["requests"], abs=60)
    # the whole machine was busy at least while this pair of processes was
    assert isinstance(r["machine_busy_pct"], float)
    assert r["server_cpu_pct"] - 5 <= r["machine_busy_pct"] <= 100 * (os.cpu_count() or 1) + 5


def test_a_closed_loop_has_no_rate() -> None:
    """Without ``--rate`` nothing is paced (and without ``--also-pid`` nothing is split)."""
    import loadgen_measure as measure

    args = SimpleNamespace(pid=0, also_pid=[])
    assert measure.server_sample(args) is None
    args = SimpleNamespace(pid=os.getpid(), also_pid=[])
    sample = measure.server_sample(args)
    assert sample is not None and "each" not in sample
    assert "server_cpu_s_each" not in measure.cpu_between(sample, sample, 1, "request")


class _Transport:
    """What a :class:`Conn` writes to, for feeding it a response by hand."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _one_stream(events: list[bytes]) -> StreamRecord:
    """The record a connection makes of one streamed response of ``events``."""
    records: list[StreamRecord] = []
    sent = False

    def next_request() -> tuple[bytes, bool] | None:
        nonlocal sent
        if sent:
            return None
        sent = True
        return b"POST / HTTP/1.1\r\n\r\n", True

    def never(*_: object) -> None:
        raise AssertionError("not called")

    conn = Conn(next_request, never, records.append, lambda c, e: None)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.data_received(CHUNKED.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    for event in events:
        conn.data_received(b"%x\r\n%s\r\n" % (len(event), event))
    conn.data_received(b"0\r\n\r\n")
    (record,) = records
    return record


def _named(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _delta(i: int) -> bytes:
    text = f'{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"tok{i} "}}}}'
    return _named("content_block_delta", text)


PING = _named("ping", '{"type": "ping"}')
MESSAGE_START = _named("message_start", '{"type":"message_start","message":{"id":"msg_tok1x"}}')


def test_messages_events_pings_are_heartbeats_and_message_stop_ends() -> None:
    record = _one_stream(
        [PING, MESSAGE_START, PING, _delta(0), PING, _delta(1), _named("message_stop", "{}")]
    )
    assert len(record.heartbeats) == 3
    assert record.first_event is not None and record.first_event <= record.tokens[0]
    assert len(record.tokens) == 2  # "msg_tok1x" in message_start is no content
    assert record.order_ok and record.complete and not record.errors


def test_messages_stream_without_message_stop_is_incomplete_and_error_event_counts() -> None:
    error = _named("error", '{"type":"error","error":{"type":"api_error","message":"x"}}')
    record = _one_stream([MESSAGE_START, _delta(0), error])
    assert not record.complete
    assert record.errors and "api_error" in record.errors[0]


def test_messages_streams_from_the_upstream_arrive_whole_and_in_order(upstream_port: int) -> None:
    r = loadgen(
        upstream_port,
        "stream",
        *("--path", "/v1/messages", "--dialect", "messages"),
        *("--count", "3", "--concurrency", "2", "--tokens", "8", "--gap", "2"),
    )
    assert r["errors"] == {}
    assert r["streams"] == 3
    assert (r["missing"], r["reordered"], r["incomplete"], r["failed"]) == (0, 0, 0, 0)
    gaps = r["inter_chunk_ms"]
    assert isinstance(gaps, dict) and gaps["n"] == 3 * 7


def _typed(kind: str, **fields: object) -> bytes:
    return _named(kind, json.dumps({"type": kind, **fields}, separators=(",", ":")))


def _text_delta(i: int) -> bytes:
    return _typed("response.output_text.delta", delta=f"tok{i} ", sequence_number=4 + i)


def test_responses_events_only_text_deltas_count_and_response_completed_ends() -> None:
    """The ``.done`` events and ``response.completed`` repeat the whole text (``"tok0 …``):
    they are no deltas; comments and ``keepalive`` events are heartbeats."""
    whole = "tok0 tok1 "
    record = _one_stream(
        [
            b": keepalive\n\n",
            _typed("response.created", response={"id": "resp_tok1"}),
            _typed("keepalive", sequence_number=1),
            _text_delta(0),
            _text_delta(1),
            _typed("response.output_text.done", text=whole),
            _typed("response.content_part.done", part={"text": whole}),
            _typed("response.completed", response={"output": [{"text": whole}]}),
        ]
    )
    assert len(record.heartbeats) == 2
    assert len(record.tokens) == 2
    assert record.order_ok and record.complete and not record.errors


def test_responses_failed_is_counted_and_leaves_the_stream_incomplete() -> None:
    failed = _typed("response.failed", response={"error": {"code": "server_error"}})
    record = _one_stream([_text_delta(0), failed])
    assert not record.complete
    assert record.errors and "server_error" in record.errors[0]


def test_responses_streams_from_the_upstream_arrive_whole_numbered_and_in_order(
    upstream_port: int,
) -> None:
    r = loadgen(
        upstream_port,
        "stream",
        *("--path", "/v1/responses", "--dialect", "responses"),
        *("--count", "3", "--concurrency", "2", "--tokens", "8", "--gap", "2"),
    )
    assert r["errors"] == {}
    assert r["streams"] == 3
    assert (r["missing"], r["reordered"], r["incomplete"], r["failed"]) == (0, 0, 0, 0)
    gaps = r["inter_chunk_ms"]
    assert isinstance(gaps, dict) and gaps["n"] == 3 * 7
    # The events themselves: OpenAI's order, sequence numbers from 0, an id per stream.
    ids = set()
    for _ in range(2):
        body = json.dumps({"input": "bench:n=3,gap=1,prefill=0", "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", upstream_port)) as sock:
            sock.sendall(
                b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            raw = b""
            while not raw.endswith(b"0\r\n\r\n"):
                raw += sock.recv(65536)
        docs = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
        assert [d["type"] for d in docs] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * 3,
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert [d["sequence_number"] for d in docs] == list(range(11))
        assert docs[-1]["response"]["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 "
        assert docs[0]["response"]["id"] == docs[-1]["response"]["id"]
        ids.add(docs[0]["response"]["id"])
    assert len(ids) == 2


class _ServerSide:
    """A transport for a :class:`WSConn` fed by hand: what it writes goes to a wsproto
    server connection, the test's stand-in for the gateway."""

    def __init__(self) -> None:
        from wsproto import ConnectionType, WSConnection

        self.server = WSConnection(ConnectionType.SERVER)
        self.closed = False

    def write(self, data: bytes) -> None:
        self.server.receive_data(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def test_websocket_turns_are_recorded_like_sse_streams() -> None:
    """One socket, two turns: every text frame an event, only text deltas count (in order,
    two in one read are one coalesced), a ping is answered and is a heartbeat,
    ``response.completed`` ends a turn and sends the next, an ``error`` event ends one as
    broken, and after the last turn the socket sends its close."""
    import asyncio

    from loadgen_ws import WSConn, create_message
    from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

    def frame(kind: str, **fields: object) -> bytes:
        text = json.dumps({"type": kind, **fields}, separators=(",", ":"))
        return transport.server.send(TextMessage(data=text))

    async def run() -> None:
        turns = iter([create_message({"model": "m", "input": "hi", "stream": True})] * 2)
        conn = WSConn(
            "127.0.0.1",
            1,
            "/v1/responses",
            "sk-x",
            False,
            lambda: next(turns, None),
            records.append,
            handshakes.append,
            lambda c, e: closes.append(e),
        )
        conn.connection_made(transport)  # type: ignore[arg-type]
        (request,) = transport.server.events()
        assert isinstance(request, Request) and request.target == "/v1/responses"
        assert (b"authorization", b"Bearer sk-x") in list(request.extra_headers)
        conn.data_received(transport.server.send(AcceptConnection()))
        (first,) = transport.server.events()
        assert isinstance(first, TextMessage)
        assert json.loads(first.data) == {"type": "response.create", "model": "m", "input": "hi"}
        conn.data_received(frame("response.created", response={"id": "resp_tok1"}))
        delta = "response.output_text.delta"
        conn.data_received(frame(delta, delta="tok0 ") + frame(delta, delta="tok1 "))
        conn.data_received(transport.server.send(Ping(payload=b"p")))
        conn.data_received(frame("response.output_text.done", text="tok0 tok1 "))
        assert not records
        conn.data_received(frame("response.completed", response={"text": "tok0 tok1 "}))
        pong, second = transport.server.events()
        assert isinstance(pong, Pong) and isinstance(second, TextMessage)
        conn.data_received(frame(delta, delta="tok0 "))
        conn.data_received(frame("error", status=500, error={"type": "server_error"}))
        (close,) = transport.server.events()
        assert isinstance(close, CloseConnection) and close.code == 1000
        conn.data_received(transport.server.send(close.response()))
        assert transport.closed
        conn.connection_lost(None)

    records: list[StreamRecord] = []
    handshakes: list[float] = []
    closes: list[str | None] = []
    transport = _ServerSide()
    asyncio.run(run())
    whole, broken = records
    assert len(handshakes) == 1 and closes == [None]
    assert whole.complete and not whole.errors and whole.order_ok
    assert len(whole.tokens) == 2 and whole.coalesced == 1
    assert len(whole.events) == 6 and len(whole.heartbeats) == 1
    assert whole.first_event is not None and whole.ended is not None
    assert whole.sent < whole.first_event < whole.ended
    assert not broken.complete and broken.errors and "server_error" in broken.errors[0]
