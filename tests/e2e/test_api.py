"""The HTTP API through real sockets: endpoints, request ids, and every client error."""

from __future__ import annotations

import json

import h11
import httpx
import pytest
import trio

from gateway.abc import BackendStatus
from gateway.testing.fake_openai import FakeOpenAI, chat_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(resp: httpx.Response, status: int, code: str | None, param=...) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not ...:
        assert body["error"]["param"] == param
    return body["error"]


async def still_serves(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert resp.json()["object"] == "chat.completion"


async def test_chat_completion_non_stream(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"tokens": 2}})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "upstream-m"
    assert sent.body["messages"] == CHAT["messages"]


async def test_completions_stream_and_embeddings(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        async with client.stream(
            "POST", "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}
        ) as resp:
            raw = await resp.aread()
        emb = await client.post("/v1/embeddings", json={"model": "m", "input": "hello"})
    assert raw.endswith(b"data: [DONE]\n\n")
    assert fake.requests[0].path == "/v1/completions"
    assert emb.status_code == 200 and emb.json()["data"][0]["embedding"] == [0.25, -0.5, 1.0]
    assert fake.requests[1].path == "/v1/embeddings"


async def test_models_lists_public_names_only(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.get("/v1/models")
        one = await client.get("/v1/models/m-alias")
        missing = await client.get("/v1/models/m-glob-only")
    assert resp.status_code == 200
    assert [m["id"] for m in resp.json()["data"]] == ["m", "m-alias"]
    assert resp.json()["object"] == "list"
    assert one.json()["id"] == "m-alias"
    assert_openai_error(missing, 404, "model_not_found")


async def test_errors_quote_a_clients_long_values_cut_short(start_gateway) -> None:
    # A model name, a path and a previous_response_id come back at most 200 characters long.
    gw = await start_gateway()
    long = "x" * 5_000  # (a request line holds no more than some KiB)
    async with gw.client() as client:
        answers = [
            await client.post("/v1/chat/completions", json={**CHAT, "model": long}),
            await client.get(f"/v1/models/{long}"),
            await client.get(f"/{long}"),
            await client.post(
                "/v1/responses", json={"model": "m", "input": "hi", "previous_response_id": long}
            ),
        ]
    assert [a.status_code for a in answers] == [404, 404, 404, 400]
    for answer in answers:
        message = answer.json()["error"]["message"]
        assert len(message) < 300 and "x" * 199 + "… (5,00" in message


@pytest.mark.parametrize("model", ["m", "m-alias", "m-anything"])
async def test_names_aliases_and_globs_route(start_gateway, fake: FakeOpenAI, model: str) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert resp.status_code == 200
    assert fake.requests[-1].body["model"] == "upstream-m"


async def test_healthz_and_readyz(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["routes"] == {"chat": True}
        # A backend whose model is still loading makes its routes not ready, not failed.
        gw.gateway.backends["fake"].status = BackendStatus(health="loading", detail="model loading")
        loading = await client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["status"] == "not_ready"
        assert loading.json()["routes"] == {"chat": False}
        assert loading.json()["backends"]["fake"] == {
            "health": "loading",
            "detail": "model loading",
        }
        assert (await client.get("/healthz")).status_code == 200


async def test_request_id_accepted_echoed_and_passed_upstream(start_gateway, fake) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        given = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-123"}
        )
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-request-id": "stream-7"},
        ) as streamed:
            await streamed.aread()
        minted = await client.post("/v1/chat/completions", json=CHAT)
        bogus = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "bad id\twith junk"}
        )
        error = await client.post(
            "/v1/chat/completions", content=b"{", headers={"x-request-id": "e-1"}
        )
    assert given.headers["x-request-id"] == "abc-123"
    assert streamed.headers["x-request-id"] == "stream-7"
    assert [r.headers["x-request-id"] for r in fake.requests[:2]] == ["abc-123", "stream-7"]
    assert len(minted.headers["x-request-id"]) == 32
    assert fake.requests[2].headers["x-request-id"] == minted.headers["x-request-id"]
    assert bogus.headers["x-request-id"] != "bad id\twith junk"
    assert error.headers["x-request-id"] == "e-1"


async def test_client_authorization_never_forwarded(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-client-secret"}
        )
    assert "authorization" not in fake.requests[-1].headers


@pytest.mark.parametrize(
    "content,status,code,param",
    [
        (b"{not json", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_request", None),
        (json.dumps({"messages": []}).encode(), 400, "missing_required_parameter", "model"),
        (json.dumps({"model": 5, "messages": []}).encode(), 400, "invalid_request", "model"),
        (json.dumps({"model": "m"}).encode(), 400, "missing_required_parameter", "messages"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), 400, "invalid_request", "stream"),
        (json.dumps({**CHAT, "model": "nope"}).encode(), 404, "model_not_found", "model"),
        (b"\xff\xfe", 400, "invalid_json", None),
        # JSON that Python parses but that could not be sent on (it was a 500):
        (b'{"model": "m", "messages": [], "temperature": 1e999}', 400, "invalid_json", None),
        (b'{"model": "m", "messages": [], "temperature": -1e999}', 400, "invalid_json", None),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
            400,
            "invalid_json",
            None,
        ),
        (b'{"model": "m", "messages": [], "x": {"\\udfff": 1}}', 400, "invalid_json", None),
        (
            b'{"model": "m", "messages": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            400,
            "invalid_json",
            None,
        ),
        (
            b'{"model": "m", "messages": [], "x": ' + b"[" * 200 + b"]" * 200 + b"}",
            400,
            "invalid_json",
            None,
        ),
        # messages that are not a list of objects are not forwarded
        (json.dumps({"model": "m", "messages": "hi"}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({"model": "m", "messages": None}).encode(), 400, "invalid_request", "messages"),
        (
            json.dumps({"model": "m", "messages": ["hi", 1]}).encode(),
            400,
            "invalid_request",
            "messages",
        ),
    ],
)
async def test_bad_requests(start_gateway, fake, content, status, code, param) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.post("/v1/chat/completions", content=content)
        assert_openai_error(resp, status, code, param)
        await still_serves(client)
    assert len(fake.requests) == 1  # only the good request reached the upstream


async def test_oversize_body(start_gateway, fake) -> None:
    gw = await start_gateway(server={"max_body_bytes": 1000})
    async with gw.client() as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]},
        )
        assert_openai_error(resp, 413, "request_too_large")
        await still_serves(client)


async def test_oversize_chunked_body_without_a_length(start_gateway, fake) -> None:
    """No content-length to refuse up front: the body is counted as it arrives."""
    gw = await start_gateway(server={"max_body_bytes": 1000})

    async def pieces():
        yield json.dumps(CHAT).encode()[:-1]
        for _ in range(20):
            yield b" " * 100
        yield b"}"

    async with gw.client() as client:
        resp = await client.post(
            "/v1/chat/completions", content=pieces(), headers={"content-type": "application/json"}
        )
        assert_openai_error(resp, 413, "request_too_large")
        await still_serves(client)
    assert len(fake.requests) == 1  # only still_serves reached the upstream


async def _read_response(sock: trio.socket.SocketType, conn: h11.Connection) -> tuple[int, bytes]:
    status, body = 0, b""
    with trio.fail_after(5):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            else:
                raise AssertionError(f"unexpected {event!r}")


async def test_oversize_body_still_being_sent_is_read_before_the_413(start_gateway, fake) -> None:
    """The client is still sending its body when the gateway decides to refuse it. Answering
    and closing at once raced the client: a socket closed with unread bytes sends a reset
    that can destroy the 413 before the client reads it (the flaky "reset instead of 413").
    The gateway reads the rest of a refused body (within bounds) first, so the 413 arrives
    whole — and the connection, its request complete, stays usable."""
    gw = await start_gateway(server={"max_body_bytes": 1000})
    host, port = gw.url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    await sock.connect((host, int(port)))
    client = h11.Connection(h11.CLIENT)
    head = [("host", "x"), ("content-type", "application/json")]
    await sock.send(
        client.send(
            h11.Request(
                method="POST",
                target="/v1/chat/completions",
                headers=[*head, ("transfer-encoding", "chunked")],
            )
        )
        + client.send(h11.Data(data=json.dumps(CHAT).encode()[:-1] + b" " * 1500))
    )
    for _ in range(20):
        await sock.send(client.send(h11.Data(data=b" " * 100)))
    await sock.send(client.send(h11.Data(data=b"}")) + client.send(h11.EndOfMessage()))
    status, body = await _read_response(sock, client)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"

    client.start_next_cycle()  # the same connection serves the next request
    good = json.dumps({**CHAT, "stream": False}).encode()
    length = [("content-length", str(len(good)))]
    await sock.send(
        client.send(
            h11.Request(method="POST", target="/v1/chat/completions", headers=head + length)
        )
        + client.send(h11.Data(data=good))
        + client.send(h11.EndOfMessage())
    )
    status, _ = await _read_response(sock, client)
    sock.close()
    assert status == 200
    assert len(fake.requests) == 1  # the refused body never went upstream


async def test_client_gone_in_the_middle_of_its_body(start_gateway, fake) -> None:
    gw = await start_gateway()
    host, port = gw.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 500\r\n\r\n" + json.dumps(CHAT).encode()[:20]
    )
    await stream.aclose()
    async with gw.client() as client:
        await still_serves(client)
    assert len(fake.requests) == 1  # the half-sent request never went upstream


async def test_embeddings_cannot_stream(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.post(
            "/v1/embeddings", json={"model": "m", "input": "a", "stream": True}
        )
        assert_openai_error(resp, 400, "invalid_request", "stream")


async def test_wrong_method_and_path(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        wrong_method = await client.get("/v1/chat/completions")
        err = assert_openai_error(wrong_method, 405, "method_not_allowed")
        assert "POST" in wrong_method.headers["allow"]
        assert "GET" in err["message"]
        assert_openai_error(await client.post("/v1/nope", json=CHAT), 404, "not_found")
        assert_openai_error(await client.delete("/v1/models"), 405, "method_not_allowed")
        await still_serves(client)


async def test_upstream_error_status_is_kept(start_gateway) -> None:
    gw = await start_gateway(keepalive={"early_headers": False})
    async with gw.client() as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "fake": {
                    "status": 429,
                    "message": "slow down",
                    "type": "rate_limit_error",
                    "code": "rate_limited",
                },
            },
        )
        err = assert_openai_error(resp, 429, "rate_limited")
        assert err["message"] == "slow down" and err["type"] == "rate_limit_error"
        await still_serves(client)


async def test_stream_without_keepalive_is_plain_relay(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0})
    async with (
        gw.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "fake": {"tokens": 4}}
        ) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["cache-control"] == "no-cache"
        raw = await resp.aread()
    assert raw == b"".join(chat_events(4, model="upstream-m"))
