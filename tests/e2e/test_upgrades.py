"""Upgrade requests the gateway does not serve: a WebSocket handshake on any path but
``/v1/responses`` (and there too with ``[server] websockets = false``) is answered ``426
Upgrade Required`` at once with an OpenAI error body (coding agents fall back to plain HTTP
on exactly that status), and the gateway goes on serving everyone else. The WebSocket the
gateway does serve is tested in ``test_responses_websocket.py``.

Raw sockets throughout: the handshake and the answer's framing are what is under test."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from tests.conftest import RunningGateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/nonexistent", "/"]


def handshake(path: str, host: str, extra: bytes = b"") -> bytes:
    return (
        (
            f"GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\n"
            "connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "sec-websocket-version: 13\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


async def exchange(
    gw: RunningGateway, request: bytes, *, then_closed: bool = True
) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``request`` on a new connection and read one answer (head, then the body its
    ``content-length`` announces); with ``then_closed``, also the end of the connection.
    Returns (status line, headers by lower-case name, body)."""
    host, port = gw.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(5):  # an answer that does not come, or a hang after it, fails
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed before a whole head: {answer!r}"
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            status, *lines = head.split(b"\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            while len(body) < int(headers.get("content-length", "0")):
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed inside the body: {body!r}"
                body += chunk
            if then_closed:
                assert await stream.receive_some(65536) == b""
    return status, headers, body


@pytest.mark.parametrize(
    ("path", "websockets"), [*((path, True) for path in PATHS), ("/v1/responses", False)]
)
async def test_websocket_upgrade_is_426_with_an_openai_error(
    start_gateway, fake, path, websockets
) -> None:
    gw = await start_gateway(server={"websockets": websockets})
    host = gw.url.removeprefix("http://")
    with trio.fail_after(5):  # "at once": no waiting on anything
        status, headers, body = await exchange(gw, handshake(path, host))
    assert status.startswith(b"HTTP/1.1 426 "), status
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "upgrade_required"
    assert "WebSocket" in error["message"]
    # The only protocol the gateway accepts is the one the request came on (RFC 9110 §15.5.22
    # asks a 426 to name it); the connection was never upgraded and is closed.
    assert headers["upgrade"] == "HTTP/1.1"
    assert "close" in headers["connection"].lower()
    assert "sec-websocket-accept" not in headers
    assert headers["x-request-id"]
    assert not fake.requests  # nothing reached an upstream

    async with gw.client() as client:  # and the gateway serves on
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.json()["object"] == "chat.completion"


async def test_upgrades_answered_concurrently_with_a_stream_in_flight(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.05})
    host = gw.url.removeprefix("http://")
    answers: list[bytes] = []
    async with gw.client() as client, trio.open_nursery() as nursery:
        stream_done = trio.Event()

        async def long_stream() -> None:
            body = {**CHAT, "stream": True, "fake": {"prefill": 0.5, "tokens": 2}}
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                raw = await resp.aread()
            assert raw.endswith(b"data: [DONE]\n\n")
            stream_done.set()

        nursery.start_soon(long_stream)

        async def upgrade(path: str) -> None:
            status, _, _ = await exchange(gw, handshake(path, host))
            answers.append(status)

        for path in PATHS * 4:
            nursery.start_soon(upgrade, path)
    assert stream_done.is_set()
    assert len(answers) == len(PATHS) * 4
    assert all(a.startswith(b"HTTP/1.1 426 ") for a in answers)


async def test_upgrade_with_a_bad_handshake_is_not_a_500(start_gateway) -> None:
    """Without a usable Sec-WebSocket-Key the server refuses the handshake itself (400);
    either way the client never sees a 500."""
    gw = await start_gateway()
    host = gw.url.removeprefix("http://")
    request = (
        f"GET /v1/responses HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\n"
        "connection: Upgrade\r\n\r\n"
    ).encode()
    # (hypercorn then leaves the connection open until its keep-alive timeout.)
    status, _, _ = await exchange(gw, request, then_closed=False)
    assert status.split()[1] in (b"400", b"426"), status


async def test_upgrade_is_counted_and_logged(start_gateway, caplog) -> None:
    gw = await start_gateway()
    host = gw.url.removeprefix("http://")
    caplog.set_level("INFO", logger="gateway.access")
    await exchange(gw, handshake("/v1/completions", host, b"x-request-id: ws-upgrade-1\r\n"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    [line] = [x for x in lines if x.get("request_id") == "ws-upgrade-1"]
    assert line["status"] == 426 and line["outcome"] == "rejected"
    assert line["path"] == "/v1/completions" and line["method"] == "GET"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        metrics = (await client.get("/metrics")).text
    assert 'status="426"' in metrics
