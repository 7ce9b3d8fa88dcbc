"""Framework floors for reading the gateway's numbers (an optional bench target).

``python bench/floor_app.py asgi PORT`` — a bare ASGI app on hypercorn answering the same way:
what hypercorn and trio alone cost, the floor under the gateway's relayed endpoints (which
skip Quart).
``python bench/floor_app.py quart PORT`` — quart-trio on hypercorn (the gateway's stack)
answering like the fake upstream itself (the ``chat.completion``, or the paced SSE stream
from ``trio.sleep_until``), with no upstream call: what the server framework costs.
``python bench/floor_app.py httpx PORT UPSTREAM`` — the same app relaying to the upstream
through one pooled ``httpx.AsyncClient`` (streams with ``aiter_raw``) and nothing else:
framework + HTTP client, without any of the gateway's own code.
Run with the gateway's virtualenv (``.venv/bin/python``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the fake '
    b'upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6,'
    b'"total_tokens":11}}'
)


_PARAMS = re.compile(rb"bench:n=(\d+),gap=(\d+),prefill=(\d+)")
_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n'
)


async def paced(body: bytes) -> AsyncIterator[bytes]:
    """The fake upstream's stream shape, paced on absolute deadlines."""
    match = _PARAMS.search(body)
    n, gap, prefill = (int(v) for v in match.groups()) if match else (64, 20, 0)
    at = trio.current_time() + prefill / 1000
    await trio.sleep_until(at)
    yield _CHUNK % (b'{"role":"assistant","content":""}', b"null")
    for i in range(n):
        at += gap / 1000
        await trio.sleep_until(at)
        yield _CHUNK % (b'{"content":"tok%d "}' % i, b"null")
    at += gap / 1000
    await trio.sleep_until(at)
    yield _CHUNK % (b"{}", b'"stop"')
    yield b"data: [DONE]\n\n"


async def bare_asgi(scope: dict, receive: Any, send: Any) -> None:  # type: ignore[type-arg]
    """The fake upstream's answers from a plain ASGI callable: no framework at all."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].removeprefix("lifespan.")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if b'"stream":true' not in body.replace(b" ", b""):
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    async for event in paced(body):
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    app = QuartTrio("floor")
    app.config["RESPONSE_TIMEOUT"] = None
    client: list[httpx.AsyncClient] = []

    @app.route("/healthz")
    async def healthz() -> Response:
        return Response(b"ok")

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat() -> Response:
        body = await request.get_data()
        stream = b'"stream":true' in body.replace(b" ", b"")
        if mode == "quart":
            if stream:
                return Response(paced(body), content_type="text/event-stream")
            return Response(BODY, content_type="application/json")
        if stream:
            req = client[0].build_request(
                "POST",
                "/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            upstream_response = await client[0].send(req, stream=True)

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream_response.aiter_raw():
                        yield chunk
                finally:
                    await upstream_response.aclose()

            return Response(relay(), content_type="text/event-stream")
        upstream = await client[0].post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        return Response(
            upstream.content, status=upstream.status_code, content_type="application/json"
        )

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None

    if mode == "asgi":
        trio.run(partial(serve, bare_asgi, config))  # type: ignore[arg-type]
        return

    async def run() -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        base = f"http://127.0.0.1:{sys.argv[3]}" if len(sys.argv) > 3 else "http://127.0.0.1:1"
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=None) as c:
            client.append(c)
            await serve(app, config)  # type: ignore[arg-type]

    trio.run(run)


if __name__ == "__main__":
    main()
