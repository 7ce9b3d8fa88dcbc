"""HTTP/1.1 framing attacks on a served gateway (issue 17 item 1), with raw sockets: the
framing and the end of the connection are what is under test.

- A request with both Content-Length and Transfer-Encoding is a 400 that closes the
  connection; what follows its body never reaches the upstream (request smuggling).
- On ``/v1/messages`` the refusals are in Anthropic's shape.
- Absolute-form request targets are routed by their path.
"""

from __future__ import annotations

import json

import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI
from tests.conftest import RunningGateway
from tests.e2e.raw_http import CHAT, CHAT_BODY, chat_request, closed_by_server, connect, read_answer

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
