"""HTTP/1.1 attacks on a served gateway (issue 17 items 1, 4, 5, 6), with raw sockets: the
framing, the timing and the end of the connection are what is under test.

- A request with both Content-Length and Transfer-Encoding is a 400 that closes the
  connection; what follows its body never reaches the upstream (request smuggling).
- A request body that stalls or trickles gets a 408 and the connection closes; a head that
  trickles is cut after ``header_timeout``, while an idle keep-alive connection waits its
  own, longer ``keep_alive_timeout``.
- ``Connection: close`` (and HTTP/1.0) closes the connection on every path, Quart's too.
- Connections the clients closed are released at once, not after the keep-alive time.
- A client whose window is full gets every byte of a large answer once it reads.

Timeouts are configured in fractions of a second, so nothing waits real tens of seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.conftest import RunningGateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BODY = json.dumps(CHAT).encode()

PROC_TCP = Path("/proc/net/tcp")
linux_only = pytest.mark.skipif(not PROC_TCP.exists(), reason="counts sockets in /proc")


def chat_request(*, extra: bytes = b"", body: bytes = CHAT_BODY) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n" % len(body)
        + extra
        + b"\r\n"
        + body
    )


async def connect(gw: RunningGateway) -> trio.SocketStream:
    host, port = gw.url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def error(self) -> dict[str, str]:
        assert self.headers["content-type"] == "application/json"
        error: dict[str, str] = json.loads(self.body)["error"]
        assert set(error) >= {"message", "type", "code"}
        return error


async def read_answer(stream: trio.SocketStream, buffered: bytearray | None = None) -> Answer:
    """One whole answer (its head, then the body its ``content-length`` gives); bytes read
    past it stay in ``buffered``."""
    data = buffered if buffered is not None else bytearray()
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a whole head: {bytes(data)!r}"
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = bytearray(rest)
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed inside the body: {bytes(body)!r}"
            body += chunk
    data[:] = body[length:]
    return Answer(int(status_line.split()[1]), headers, bytes(body[:length]))


async def closed_by_server(stream: trio.SocketStream, within: float) -> bytes:
    """Wait until the server ends the connection (EOF or reset), at most ``within`` seconds;
    return whatever it sent before that. Fails if the connection is still open."""
    received = bytearray()
    with trio.fail_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset: closed with our bytes unread
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


# -- 1. request smuggling ------------------------------------------------------------------


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"


def framing_headers(order: str, casing: str, content_length: int) -> bytes:
    cl_name, te_name, te_value = {
        "lower": (b"content-length", b"transfer-encoding", b"chunked"),
        "title": (b"Content-Length", b"Transfer-Encoding", b"chunked"),
        "upper": (b"CONTENT-LENGTH", b"TRANSFER-ENCODING", b"Chunked"),
    }[casing]
    cl = cl_name + b": %d\r\n" % content_length
    te = te_name + b": " + te_value + b"\r\n"
    return cl + te if order == "cl-first" else te + cl


def cl_te_attack(path: str, order: str, casing: str) -> bytes:
    """A front proxy framing by Content-Length forwards the whole chunked body and the
    request after it as one body; a back end framing by Transfer-Encoding serves the
    request after it as a second request — one the proxy never saw."""
    body = chunked(CHAT_BODY)
    return (
        f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n".encode()
        + framing_headers(order, casing, len(body))
        + b"\r\n"
        + body
        + chat_request()
    )


def te_cl_attack(order: str) -> bytes:
    """A front proxy framing by Transfer-Encoding forwards a chunk that holds a request;
    a back end framing by Content-Length (4 bytes) serves the rest as a second request."""
    hidden = chat_request()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + framing_headers(order, "title", 4)
        + b"\r\n"
        + chunked(hidden)
    )


async def assert_refused_and_closed(gw: RunningGateway, attack: bytes) -> None:
    stream = await connect(gw)
    async with stream:
        await stream.send_all(attack)
        buffered = bytearray()
        answer = await read_answer(stream, buffered)
        assert answer.status == 400
        assert answer.headers["connection"] == "close"
        error = answer.error()
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "ambiguous_framing"
        # Nothing after the answer: the bytes after the body were never served.
        assert buffered + await closed_by_server(stream, within=2) == b""


@pytest.mark.parametrize("casing", ["lower", "title", "upper"])
@pytest.mark.parametrize("order", ["cl-first", "te-first"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/healthz"])
async def test_cl_te_request_is_refused_and_the_smuggled_one_never_served(
    start_gateway, fake: FakeOpenAI, path: str, order: str, casing: str
) -> None:
    gw = await start_gateway()
    await assert_refused_and_closed(gw, cl_te_attack(path, order, casing))
    assert fake.requests == []  # neither request reached the upstream


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
async def test_te_cl_request_is_refused(start_gateway, fake: FakeOpenAI, order: str) -> None:
    gw = await start_gateway()
    await assert_refused_and_closed(gw, te_cl_attack(order))
    assert fake.requests == []


async def test_smuggling_attempts_leave_everyone_else_served(
    start_gateway, fake: FakeOpenAI, caplog
) -> None:
    gw = await start_gateway()
    caplog.set_level("INFO", logger="gateway.access")
    async with trio.open_nursery() as nursery:
        for order in ("cl-first", "te-first"):
            nursery.start_soon(
                assert_refused_and_closed, gw, cl_te_attack("/v1/models", order, "lower")
            )
    async with gw.client() as client:
        ok = await client.post("/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200
    assert len(fake.requests) == 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [line["status"] for line in lines].count(400) == 2  # the refusals are logged


# -- 4. slow request bodies and heads ------------------------------------------------------


async def test_silent_body_gets_408_and_the_connection_closes(
    start_gateway, fake: FakeOpenAI, caplog
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 30})
    stream = await connect(gw)
    async with stream:
        head = chat_request(body=b"")
        await stream.send_all(head.replace(b"content-length: 0", b"content-length: 100000"))
        await stream.send_all(b'{"model": "m"')  # a few bytes, then nothing
        start = trio.current_time()
        buffered = bytearray()
        answer = await read_answer(stream, buffered)
        waited = trio.current_time() - start
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        assert answer.error()["code"] == "request_timeout"
        assert buffered + await closed_by_server(stream, within=2) == b""
    assert 0.4 <= waited < 3
    assert fake.requests == []
    # One request, one line: the guard's 408 (it was followed by a 499 "client_gone").
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["status"], line["outcome"]) for line in lines] == [(408, "rejected")]


async def test_trickling_body_gets_408_at_the_total_timeout(start_gateway) -> None:
    """One byte every 0.1 s never trips the 0.5 s idle timer; the 1.5 s total does."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 1.5})
    stream = await connect(gw)
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(chat_request(body=b"").replace(b"length: 0", b"length: 100000"))
        start = trio.current_time()
        nursery.start_soon(trickle_bytes, stream, 0.1)
        answer = await read_answer(stream)
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert answer.status == 408 and answer.error()["code"] == "request_timeout"
    assert 1.4 <= waited < 4


async def test_body_in_slow_pieces_within_the_timeouts_is_served(
    start_gateway, fake: FakeOpenAI
) -> None:
    """Each piece restarts the idle timer: four 0.25 s gaps pass a 0.5 s idle timeout."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 10})
    stream = await connect(gw)
    async with stream:
        request = chat_request()
        split = len(request) - len(CHAT_BODY)
        await stream.send_all(request[:split])
        for i in range(0, len(CHAT_BODY), len(CHAT_BODY) // 4 + 1):
            await trio.sleep(0.25)  # the client's pace
            await stream.send_all(CHAT_BODY[i : i + len(CHAT_BODY) // 4 + 1])
        answer = await read_answer(stream)
    assert answer.status == 200, answer.body
    assert len(fake.requests) == 1


async def test_body_timeouts_never_cut_a_long_answer(start_gateway) -> None:
    """The timers run only while the body is awaited: a 1.5 s stream outlives a 0.5 s
    total body timeout."""
    gw = await start_gateway(server={"body_idle_timeout": 0.3, "body_timeout": 0.5})
    body = {**CHAT, "stream": True, "fake": {"tokens": 6, "pace": 0.25}}
    async with gw.client() as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = await resp.aread()
    assert resp.status_code == 200
    assert raw.endswith(b"data: [DONE]\n\n")


@linux_only
async def test_slow_bodies_are_answered_and_released(start_gateway, fake: FakeOpenAI) -> None:
    """20 connections promising 100,000 bytes and sending a few (issue 17's slowloris):
    every one gets its 408, and the gateway's sockets and fds return to their baseline."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 1})
    port = int(gw.url.rsplit(":", 1)[1])
    fds_before = open_fds()
    answers: list[int] = []

    async def slow_client(trickle: bool) -> None:
        stream = await connect(gw)
        async with stream:
            head = chat_request(body=b"").replace(b"length: 0", b"length: 100000")
            await stream.send_all(head + b"{")
            async with trio.open_nursery() as nursery:
                if trickle:
                    nursery.start_soon(trickle_bytes, stream, 0.2)
                answers.append((await read_answer(stream)).status)
                await closed_by_server(stream, within=2)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(slow_client, i % 2 == 0)
    assert answers == [408] * 20
    assert fake.requests == []
    await wait_until(lambda: server_sockets(port) == 0, within=2)
    await wait_until(lambda: open_fds() <= fds_before, within=2)


async def trickle_bytes(stream: trio.SocketStream, pace: float) -> None:
    """Send a space every ``pace`` seconds (the attacker's pace) until the server closes."""
    try:
        while True:
            await stream.send_all(b" ")
            await trio.sleep(pace)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_silent_new_connection_is_closed_after_the_header_timeout(start_gateway) -> None:
    gw = await start_gateway(server={"header_timeout": 0.5, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream:
        start = trio.current_time()
        assert await closed_by_server(stream, within=3) == b""
        assert trio.current_time() - start >= 0.4


async def test_trickling_head_is_cut_after_the_header_timeout(start_gateway) -> None:
    """A head sent a byte at a time is cut ``header_timeout`` after its first byte, even on
    a connection whose keep-alive time is far longer."""
    gw = await start_gateway(server={"header_timeout": 0.5, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream, trio.open_nursery() as nursery:
        start = trio.current_time()

        async def trickle() -> None:
            try:
                for byte in chat_request():
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)  # the attacker's pace
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(trickle)
        assert await closed_by_server(stream, within=3) == b""
        nursery.cancel_scope.cancel()
    assert 0.4 <= trio.current_time() - start < 3


async def test_idle_keep_alive_outlives_the_header_timeout(start_gateway) -> None:
    """Between requests the connection waits ``keep_alive_timeout``, not the (shorter)
    head timeout; once the next head starts, that head has ``header_timeout``."""
    gw = await start_gateway(server={"header_timeout": 0.3, "keep_alive_timeout": 30})
    stream = await connect(gw)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert (await read_answer(stream)).status == 200
        await trio.sleep(0.8)  # idle for longer than a head may take
        await stream.send_all(chat_request())
        assert (await read_answer(stream)).status == 200
        await stream.send_all(b"GET /healthz HTTP/1.1\r\n")  # a head that stops halfway
        start = trio.current_time()
        assert await closed_by_server(stream, within=3) == b""
    assert 0.2 <= trio.current_time() - start < 3


# -- 5. Connection: close on every path ----------------------------------------------------

CLOSING_REQUESTS = {
    "healthz": b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "readyz": b"GET /readyz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "models": b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "404": b"GET /nonexistent HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "405": b"DELETE /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "relayed-405": b"GET /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    "relayed": chat_request(extra=b"connection: close\r\n"),
    "http/1.0-healthz": b"GET /healthz HTTP/1.0\r\n\r\n",
    "http/1.0-models": b"GET /v1/models HTTP/1.0\r\n\r\n",
    "http/1.0-404": b"GET /nonexistent HTTP/1.0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", CLOSING_REQUESTS.values(), ids=CLOSING_REQUESTS.keys())
async def test_connection_close_closes_on_every_path(start_gateway, request_bytes) -> None:
    gw = await start_gateway()
    stream = await connect(gw)
    async with stream:
        await stream.send_all(request_bytes)
        buffered = bytearray()
        answer = await read_answer(stream, buffered)
        assert answer.headers.get("connection") == "close" or b"HTTP/1.0" in request_bytes
        assert buffered + await closed_by_server(stream, within=1) == b""


async def test_keep_alive_timer_runs_after_a_quart_answer(start_gateway) -> None:
    """After a Quart-served answer the connection is idle and its keep-alive timer runs
    (it used to be cancelled with the answer's task, leaving the connection open for good)."""
    gw = await start_gateway(server={"keep_alive_timeout": 0.5})
    for request in (b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n", chat_request()):
        stream = await connect(gw)
        async with stream:
            await stream.send_all(request)
            buffered = bytearray()
            assert (await read_answer(stream, buffered)).status == 200
            assert buffered + await closed_by_server(stream, within=3) == b""


async def test_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
    start_gateway,
) -> None:
    """At shutdown a kept-alive connection with no request in progress is closed at once
    (not after its keep-alive time); one whose answer is still streaming gets the whole
    answer, then is closed; and a connection's first head still has its header time."""
    gw = await start_gateway(server={"graceful_timeout": 10, "keep_alive_timeout": 60})
    idle, busy = await connect(gw), await connect(gw)
    async with idle, busy:
        await idle.send_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert (await read_answer(idle)).status == 200
        body = json.dumps({**CHAT, "stream": True, "fake": {"tokens": 10, "pace": 0.1}})
        await busy.send_all(chat_request(body=body.encode()))
        await wait_until(lambda: len(gw.gateway.inflight) == 1)
        gw.shutdown.set()
        assert await closed_by_server(idle, within=0.5) == b""
        streamed = await closed_by_server(busy, within=5)  # then closed, by the server
        assert streamed.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in streamed
        assert streamed.endswith(b"0\r\n\r\n")  # the chunked body ended whole


async def test_a_client_gone_while_sending_its_body_leaves_an_access_line(
    start_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    gw = await start_gateway()
    stream = await connect(gw)
    async with stream:
        await stream.send_all(chat_request(body=b"x" * 100)[:-90])  # 10 of its 100 bytes
    await wait_until(lambda: any(r.name == "gateway.access" for r in caplog.records))
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert (line["status"], line["outcome"], line["phase"]) == (499, "client_gone", "body")


@linux_only
async def test_a_client_that_floods_pings_and_reads_nothing_is_cut_at_the_drains_end(
    start_gateway,
) -> None:
    """Every ping is answered from the connection's reader; once the client's window is
    full, that write waits — shielded, as every write, so as never to be cut in half — and
    held the connection, and the drain, for as long as the client kept its socket open. At
    the drain's deadline the connection is given up: the write is cut, the socket closed."""
    gw = await start_gateway(server={"graceful_timeout": 0.5})
    port = int(gw.url.rsplit(":", 1)[1])
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    async with trio.SocketStream(sock) as stream:
        client = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="gw", target="/v1/responses")))
        accepted = False
        while not accepted:
            client.receive_data(await stream.receive_some(65536))
            accepted = any(isinstance(e, AcceptConnection) for e in client.events())
        ping = client.send(Ping(b"p" * 125)) * 64
        with trio.move_on_after(1.5):  # until the gateway stops reading: its pongs wait
            while True:
                await stream.send_all(ping)
        assert server_sockets(port) == 1
        gw.shutdown.set()
        # The drain gives requests graceful_timeout, then their ends _ABORT_GRACE (5 s).
        await wait_until(lambda: server_sockets(port) == 0, within=10)


# -- 6. closed clients released at once ----------------------------------------------------


def server_sockets(port: int) -> int:
    """The gateway's accepted sockets on ``port`` that are not yet released (any state but
    LISTEN and TIME_WAIT). Only this process's (the gateway is served in it): another
    process's client socket can have the same local port, an ephemeral one to elsewhere."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                ours.add(target[len("socket:[") : -1])
    count = 0
    for line in PROC_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] not in ("0A", "06") and fields[9] in ours:
            count += 1
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@linux_only
async def test_idle_connections_closed_by_clients_are_released_at_once(start_gateway) -> None:
    gw = await start_gateway()  # keep_alive_timeout: the default 75 s
    port = int(gw.url.rsplit(":", 1)[1])
    async with gw.client() as client:  # warm up: the upstream pool's connection exists
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await wait_until(lambda: server_sockets(port) == 0)
    fds_before = open_fds()

    streams = []
    for i in range(200):
        stream = await connect(gw)
        streams.append(stream)
        # Half Quart-served, half relayed: both kinds of answer leave an idle connection.
        request = chat_request() if i % 2 else b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
        await stream.send_all(request)
        assert (await read_answer(stream)).status == 200
    assert server_sockets(port) == 200
    for stream in streams:
        await stream.aclose()

    took = await wait_until(lambda: server_sockets(port) == 0, within=2)
    await wait_until(lambda: open_fds() <= fds_before, within=2)
    assert took < 2  # hypercorn alone held them in CLOSE_WAIT for the keep-alive time


async def test_refusals_on_messages_paths_are_in_anthropic_shape(
    start_gateway, fake: FakeOpenAI
) -> None:
    """A smuggling attempt on /v1/messages and a silent body there are refused in the
    dialect of that path: Anthropic's error object, with its ``request-id`` header."""
    gw = await start_gateway(server={"body_idle_timeout": 0.5, "body_timeout": 30})
    stream = await connect(gw)
    async with stream:
        await stream.send_all(cl_te_attack("/v1/messages", "cl-first", "lower"))
        answer = await read_answer(stream, bytearray())
    assert answer.status == 400 and answer.headers["connection"] == "close"
    assert json.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert json.loads(answer.body)["type"] == "error" and "request-id" in answer.headers
    stream = await connect(gw)
    async with stream:
        head = chat_request(body=b"").replace(b"/v1/chat/completions", b"/v1/messages")
        await stream.send_all(head.replace(b"content-length: 0", b"content-length: 100"))
        answer = await read_answer(stream, bytearray())
    assert answer.status == 408
    assert json.loads(answer.body) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": json.loads(answer.body)["error"]["message"],
        },
    }
    assert fake.requests == []


async def small_window_connection(gw: RunningGateway) -> trio.SocketStream:
    """A connection whose receive buffer is a few KiB (set before the connect, so the
    window the gateway sees stays small)."""
    host, port = gw.url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    return trio.SocketStream(sock)


async def test_a_client_that_reads_late_gets_every_byte(start_gateway, fake: FakeOpenAI) -> None:
    """A 5 MB answer to a client with a few KiB of window that reads nothing until the
    upstream has answered: the gateway writes what the socket takes at once and waits for
    the rest (a write that dropped the rest failed this). Then a stream of 5,000 events on
    the same connection arrives whole and in order, and the connection keeps serving."""
    gw = await start_gateway()
    stream = await small_window_connection(gw)
    async with stream:
        big = json.dumps({**CHAT, "fake": {"tokens": 600_000}}).encode()
        await stream.send_all(chat_request(body=big))
        await wait_until(lambda: len(fake.requests) == 1)
        answer = await read_answer(stream)
        assert answer.status == 200 and len(answer.body) > 5_000_000
        text = json.loads(answer.body)["choices"][0]["message"]["content"]
        assert text.split() == [f"tok{i}" for i in range(600_000)]

        streamed = json.dumps({**CHAT, "stream": True, "fake": {"tokens": 5_000}}).encode()
        await stream.send_all(chat_request(body=streamed))
        await wait_until(lambda: len(fake.requests) == 2)
        raw = bytearray()
        with trio.fail_after(30):
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                chunk = await stream.receive_some(65536)
                assert chunk, "closed inside the stream"
                raw += chunk
        body = bytes(raw).partition(b"\r\n\r\n")[2]
        deltas = [e for e in body.split(b"\n\n") if b'"content":"tok' in e]
        assert len(deltas) == 5_000 and b"data: [DONE]" in body
        assert [int(d.split(b'"content":"tok')[1].split(b" ")[0]) for d in deltas] == list(
            range(5_000)
        )

        await stream.send_all(chat_request())
        assert (await read_answer(stream)).status == 200


async def test_absolute_form_targets_are_routed_by_their_path(
    start_gateway, fake: FakeOpenAI
) -> None:
    """``POST http://host/v1/chat/completions`` (RFC 9112 §3.2.2; a client told to use the
    gateway as its proxy sends it) is the relayed endpoint, as Quart's paths are; it was a
    404 "Unknown path: POST /v1/chat/completions"."""
    gw = await start_gateway()
    stream = await connect(gw)
    async with stream:
        buffered = bytearray()
        for target in (b"http://gw/v1/chat/completions?x=1", b"HTTPS://gw:443/v1/chat/completions"):
            await stream.send_all(chat_request().replace(b"/v1/chat/completions", target, 1))
            answer = await read_answer(stream, buffered)
            assert answer.status == 200, answer.body
            assert json.loads(answer.body)["object"] == "chat.completion"
        await stream.send_all(b"GET http://gw/healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert (await read_answer(stream, buffered)).status == 200
        # An escaped "?" is part of the path, not the start of a query.
        await stream.send_all(b"GET http://gw/v1/models/m%3Fx HTTP/1.1\r\nhost: gw\r\n\r\n")
        missing = await read_answer(stream, buffered)
        assert missing.status == 404 and "`m?x`" in missing.error()["message"]
    assert len(fake.requests) == 2
