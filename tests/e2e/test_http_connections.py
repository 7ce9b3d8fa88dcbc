"""The end of HTTP/1.1 connections on a served gateway (issue 17 items 5, 6), with raw
sockets: the end of the connection is what is under test.

- ``Connection: close`` (and HTTP/1.0) closes the connection on every path, Quart's too;
  an idle connection's keep-alive timer runs, and shutdown closes idle connections at once.
- Connections the clients closed are released at once, not after the keep-alive time.
- A client whose window is full gets every byte of a large answer once it reads.

Timeouts are configured in fractions of a second, so nothing waits real tens of seconds.
"""

from __future__ import annotations

import json

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.conftest import RunningGateway
from tests.e2e.raw_http import (
    CHAT,
    chat_request,
    closed_by_server,
    connect,
    linux_only,
    open_fds,
    read_answer,
    server_sockets,
)

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
