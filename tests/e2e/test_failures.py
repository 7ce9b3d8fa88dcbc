"""Upstream failures: before headers they keep a real status; after, they become an error
event and the stream never ends cleanly."""

from __future__ import annotations

import json
import socket

import h11
import httpx
import pytest
import trio

from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def read_stream(client: httpx.AsyncClient, script: dict) -> tuple[httpx.Response, list]:
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "fake": script}) as resp:
        raw = await resp.aread()
    return resp, SSEFramer().feed(raw)


def data_events(events: list) -> list[str]:
    return [e.data for e in events if e.is_data]


@pytest.mark.parametrize(
    "script,fragment",
    [
        ({"fault": "reset_mid_stream", "tokens": 6}, "upstream"),
        ({"fault": "cut_mid_line", "tokens": 6}, "upstream"),
        ({"fault": "garbage", "tokens": 6}, "upstream"),
        ({"fault": "no_done", "tokens": 3}, "[DONE]"),
        ({"fault": "reset_after_headers"}, "upstream"),
    ],
    ids=["reset", "cut-mid-line", "garbage", "no-done", "reset-after-headers"],
)
async def test_mid_stream_failure_is_an_error_event(start_gateway, script, fragment) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp, events = await read_stream(client, script)
        assert resp.status_code == 200
        data = data_events(events)
        assert "[DONE]" not in data
        error = json.loads(data[-1])["error"]
        assert error["type"] == "upstream_error" and fragment in error["message"]
        # Only whole upstream events reached the client before the error: all parse.
        for item in data[:-1]:
            assert "choices" in json.loads(item)
        ok, _ = await read_stream(client, {"tokens": 1})
        assert ok.status_code == 200


async def test_stall_hits_idle_timer_despite_heartbeats(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1}, timeouts={"idle": 0.6})
    async with gw.client() as client:
        _, events = await read_stream(client, {"fault": "stall", "tokens": 4})
    heartbeats = [e for e in events if e.comments == ("keepalive",)]
    assert len(heartbeats) >= 3  # heartbeats kept flowing, yet the idle timer fired
    error = json.loads(data_events(events)[-1])["error"]
    assert error["code"] == "upstream_timeout" and "idle" in error["message"]


async def test_a_client_that_reads_slowly_is_not_an_idle_upstream(start_gateway) -> None:
    """A client that stops reading for longer than the idle limit holds up the relay's
    writes, and the relay reads nothing from the upstream meanwhile: that silence is the
    client's, not the upstream's. The stream goes on to [DONE], no backend failure counted."""
    gw = await start_gateway(keepalive={"interval": 0}, timeouts={"idle": 0.3})
    stream = await trio.open_tcp_stream("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    body = json.dumps({**CHAT, "fake": {"tokens": 1500}}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json"
    await stream.send_all(head + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    got = bytearray(await stream.receive_some(4096))
    await trio.sleep(1.0)  # the client reads nothing: the gateway's writes wait for it
    with trio.move_on_after(30):
        while not got.endswith(b"0\r\n\r\n"):  # the chunked body's end
            more = await stream.receive_some(1 << 20)
            if not more:
                break
            got += more
    await stream.aclose()
    assert b"data: [DONE]" in got and b"upstream_timeout" not in got
    assert gw.gateway.upstreams["fake"].breaker.failures == 0


async def test_first_byte_timer_measures_upstream_only(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1}, timeouts={"first_byte": 0.5})
    async with gw.client() as client:
        resp, events = await read_stream(client, {"prefill": 5})
    assert resp.status_code == 200
    error = json.loads(data_events(events)[-1])["error"]
    assert error["code"] == "upstream_timeout" and "first_byte" in error["message"]


async def test_total_timer(start_gateway) -> None:
    gw = await start_gateway(timeouts={"total": 0.5}, keepalive={"early_headers": False})
    async with gw.client() as client:
        resp, events = await read_stream(client, {"tokens": 50, "pace": 0.05})
    assert resp.status_code == 200  # headers came from the upstream before the timer fired
    error = json.loads(data_events(events)[-1])["error"]
    assert "total" in error["message"]


@pytest.mark.parametrize(
    "script,timeouts,status,code",
    [
        ({"fault": "reset_before_headers"}, None, 502, "upstream_protocol_error"),
        ({"fault": "close_before_headers"}, None, 502, "upstream_protocol_error"),
        ({"headers_delay": 5}, {"first_byte": 0.3}, 504, "upstream_timeout"),
        ({"status": 503, "message": "model loading"}, None, 503, "fake_error"),
        ({"status": 500}, None, 500, "fake_error"),
        ({"content_type": "application/json"}, None, 502, "upstream_protocol_error"),
    ],
    ids=["reset", "close", "first-byte-timeout", "503", "500", "not-sse"],
)
async def test_before_headers_without_early_headers_real_status(
    start_gateway, script, timeouts, status, code
) -> None:
    gw = await start_gateway(keepalive={"early_headers": False}, timeouts=timeouts)
    async with gw.client() as client:
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "fake": script}
        ) as resp:
            body = json.loads(await resp.aread())
        assert resp.status_code == status
        assert body["error"]["code"] == code
        ok, _ = await read_stream(client, {"tokens": 1})
        assert ok.status_code == 200


async def test_failure_after_early_headers_is_error_event(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2})
    async with gw.client() as client:
        resp, events = await read_stream(
            client, {"headers_delay": 0.5, "status": 503, "message": "model loading"}
        )
    assert resp.status_code == 200  # committed by the first heartbeat, at 0.2 s
    assert [e.comments for e in events if not e.is_data][:2] == [("keepalive",), ("keepalive",)]
    [data] = data_events(events)
    assert json.loads(data)["error"]["message"] == "model loading"


async def test_failure_before_first_heartbeat_keeps_real_status(start_gateway) -> None:
    """Early headers are committed no later than the first heartbeat; a failure that comes
    sooner still gets its real status."""
    gw = await start_gateway(keepalive={"interval": 1})
    async with gw.client() as client:
        resp, _ = await read_stream(client, {"status": 503, "message": "model loading"})
    assert resp.status_code == 503


async def test_unreachable_upstream(start_gateway, nursery) -> None:
    # A port nobody listens on: bind, learn the port, close.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    from functools import partial

    from gateway.server import serve
    from gateway.service import open_gateway
    from tests.conftest import gateway_config

    config = gateway_config(f"http://127.0.0.1:{port}/v1", keepalive={"early_headers": False})
    async with open_gateway(config) as gw:
        [url] = await nursery.start(partial(serve, gw, shutdown=trio.Event()))
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_connect_error"


async def test_non_stream_whitespace_keepalive(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.1, "non_stream": "whitespace"})
    async with gw.client() as client:
        resp = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": False, "fake": {"prefill": 0.6}}
        )
    assert resp.status_code == 200
    assert resp.content.startswith(b"   ")  # heartbeats are leading JSON whitespace
    assert resp.json()["object"] == "chat.completion"
    assert "content-length" not in resp.headers  # committed before the length was known


async def test_error_after_whitespace_is_the_error_object_then_a_cut(start_gateway) -> None:
    """After the first space the status is committed: a later upstream error is written as
    the OpenAI error object, and then the response is cut short — no end of the chunked
    body — so that no HTTP client can take it for a whole 200 answer. Raw socket: the
    framing is what is under test."""
    gw = await start_gateway(keepalive={"interval": 0.05, "non_stream": "whitespace"})
    host, port = gw.url.removeprefix("http://").split(":")
    body = json.dumps(
        {**CHAT, "stream": False, "fake": {"headers_delay": 0.3, "status": 503}}
    ).encode()
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, int(port))
    events: list[object] = []
    async with stream:
        await stream.send_all(
            conn.send(
                h11.Request(
                    method="POST",
                    target="/v1/chat/completions",
                    headers=[
                        ("host", host),
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ],
                )
            )
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        with trio.fail_after(5):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    events.append(exc)  # the peer closed inside the body
                    break
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                events.append(event)
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    head = events[0]
    assert isinstance(head, h11.Response) and head.status_code == 200
    headers = dict(head.headers)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"transfer-encoding"] == b"chunked"
    payload = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    assert payload.startswith(b" ") and payload.lstrip(b" ").startswith(b"{")
    error = json.loads(payload)["error"]  # whitespace, then exactly the error object
    assert error["code"] == "fake_error" and error["type"] == "server_error"
    assert isinstance(events[-1], h11.RemoteProtocolError), events[-1]
    assert "incomplete chunked read" in str(events[-1])
    async with gw.client() as client:  # and the gateway serves on
        ok = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert ok.status_code == 200 and ok.json()["object"] == "chat.completion"


async def test_a_non_streamed_answer_past_the_cap_is_a_502_and_never_buffered_whole(
    start_gateway, fake: FakeOpenAI
) -> None:
    """An upstream's non-streamed answer is held whole before it is sent (it has a length):
    past the backend's ``max_response_bytes`` the gateway stops reading, closes the upstream
    request and answers 502 — it once buffered 200 MB. Not retried, not held against the
    backend: the request asked for that much."""
    gw = await start_gateway(backend={"max_response_bytes": 50_000})
    async with gw.client() as client:
        big = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": False, "fake": {"tokens": 20_000}}
        )
        small = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert big.status_code == 502
    error = big.json()["error"]
    assert error["code"] == "upstream_response_too_large"
    assert "max_response_bytes" in error["message"]
    assert big.headers["x-gateway-attempts"] == "fake=502:upstream_response_too_large"
    assert small.status_code == 200
    upstream = gw.gateway.upstreams["fake"]
    assert upstream.breaker.failures == 0


@pytest.mark.parametrize(
    "body,says",
    [
        ("", "an empty body"),
        ('data: {"choices": []}\n\n', "not JSON"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not an object"),
    ],
)
async def test_a_non_streamed_200_that_is_no_json_object_is_a_502(
    start_gateway, fake: FakeOpenAI, body: str, says: str
) -> None:
    """A backend's 200 whose body is no JSON object (a plugin's empty or broken answer, SSE
    for a non-streamed request) is the upstream's protocol error: the client is told so in
    its dialect, as for a stream cut short, instead of a 200 its SDK cannot read."""
    gw = await start_gateway()
    async with gw.client() as client:
        bad = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": False, "fake": {"body": body}}
        )
        good = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert bad.status_code == 502
    error = bad.json()["error"]
    assert error["code"] == "upstream_protocol_error" and says in error["message"]
    assert good.status_code == 200 and good.json()["object"] == "chat.completion"
