"""HTTP/1.1 attacks on a served gateway (issue 17 items 4, 5, 6), with raw sockets: the
timing and the end of the connection are what is under test.

- A head that trickles is cut after ``header_timeout``, while an idle keep-alive
  connection waits its own, longer ``keep_alive_timeout``.
- ``Connection: close`` (and HTTP/1.0) closes the connection on every path, Quart's too.
- Connections the clients closed are released at once, not after the keep-alive time.

Timeouts are configured in fractions of a second, so nothing waits real tens of seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

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


# -- 4. slow request heads -----------------------------------------------------------------


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


# -- 6. closed clients released at once ----------------------------------------------------


def server_sockets(port: int) -> int:
    """The gateway's accepted sockets on ``port`` that are not yet released (any state but
    LISTEN and TIME_WAIT)."""
    count = 0
    for line in PROC_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] not in ("0A", "06"):
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
