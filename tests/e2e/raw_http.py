"""Raw-socket HTTP/1.1 for the HTTP hardening tests (``test_http_framing``,
``test_http_slow_requests``, ``test_http_connections``): a chat request written by hand,
an answer read back by its framing, the wait for the server to end the connection, and the
count of the gateway's open sockets and fds (Linux: it reads ``/proc``)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import trio

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
