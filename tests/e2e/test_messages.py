"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` on a served gateway, in front of
the fake upstream speaking Messages itself (passthrough) or chat only (translation): the
bytes clients get, heartbeats, errors in Anthropic's shape, failover, hang-ups."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.testing.fake_openai import FakeOpenAI, messages_events
from gateway.testing.waiting import wait_until
from tests.conftest import serve_config

from .sdk.anthropic_gateway import events_of
from .test_failover_limits import start_fakes

NATIVE = {"native_endpoints": ["chat/completions", "messages", "messages/count_tokens"]}
ASK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hi"}],
}
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def kinds(raw: bytes) -> list[str | None]:
    return [name for name, _ in events_of(raw)]


async def serve_route(
    nursery: trio.Nursery,
    backends: dict[str, dict[str, Any]],
    route: dict[str, Any],
    **more: Any,
) -> str:
    """A gateway on port 0 with one route ``pool`` over ``backends`` in priority order;
    ``more``: other tables of its config."""
    config = build_config(
        {
            **more,
            "server": {"bind": "127.0.0.1:0"},
            "backends": backends,
            "routes": {
                "pool": {
                    "targets": [{"backend": name} for name in backends],
                    "keepalive": {"interval": 0.2},
                    **route,
                }
            },
        },
        environ={},
    )
    return (await serve_config(nursery, config)).url


async def post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], **kw: Any
) -> httpx.Response:
    return await client.post(path, json=body, **kw)


async def test_native_stream_passes_upstream_bytes_with_pings_between_events(
    start_gateway, fake: FakeOpenAI
) -> None:
    gw = await start_gateway(backend=NATIVE, keepalive={"interval": 0.2})
    body = {**ASK, "stream": True, "fake": {"tokens": 3, "prefill": 0.7, "gap_at": 3, "gap": 0.5}}
    async with gw.client() as client:
        resp = await post(
            client,
            "/v1/messages",
            body,
            headers={"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024"},
        )
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    upstream = fake.requests[-1]
    assert upstream.path == "/v1/messages" and upstream.body["model"] == "upstream-m"
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.headers["anthropic-beta"] == "tools-2024"
    assert resp.headers["request-id"] == resp.headers["x-request-id"]
    # Pings fill the prefill and the gap; taking them out leaves the upstream's bytes.
    raw = resp.content
    assert raw.startswith(PING)
    assert raw.count(PING) >= 4
    assert (
        raw.replace(PING, b"") == upstream.sent == b"".join(messages_events(3, model="upstream-m"))
    )


async def test_native_whole_answer_unchanged(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(backend=NATIVE)
    async with gw.client() as client:
        resp = await post(client, "/v1/messages", {**ASK, "fake": {"tokens": 2}})
    assert resp.status_code == 200
    assert resp.content == fake.requests[-1].sent
    assert resp.json()["type"] == "message"


async def test_translated_stream_is_anthropic_grammar(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2})
    body = {**ASK, "stream": True, "system": "Be brief.", "fake": {"tokens": 3, "prefill": 0.5}}
    async with gw.client() as client:
        resp = await post(client, "/v1/messages", body)
    assert resp.status_code == 200
    upstream = fake.requests[-1]
    assert upstream.path == "/v1/chat/completions"
    assert upstream.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert upstream.body["stream_options"] == {"include_usage": True}
    assert resp.content.startswith(PING)
    assert kinds(resp.content.replace(PING, b"")) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    events = dict(events_of(resp.content))
    assert events["message_start"]["message"]["model"] == "m"  # the public name
    assert events["message_delta"]["delta"]["stop_reason"] == "end_turn"
    assert events["message_delta"]["usage"]["output_tokens"] == 3


async def test_translated_whole_answer(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await post(client, "/v1/messages", {**ASK, "fake": {"tokens": 2}})
    assert resp.status_code == 200
    message = resp.json()
    assert message["type"] == "message" and message["model"] == "m"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": "tok0 tok1 "}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 5 and message["usage"]["output_tokens"] == 2


async def test_comment_heartbeats_when_the_route_asks(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2, "messages": "comment"})
    body = {**ASK, "stream": True, "fake": {"prefill": 0.5}}
    async with gw.client() as client:
        resp = await post(client, "/v1/messages", body)
    assert resp.content.startswith(b": keepalive\n\n") and PING not in resp.content


async def test_errors_in_anthropic_shape(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        missing = await post(client, "/v1/messages", {"model": "m", "messages": []})
        unknown = await post(client, "/v1/messages", {**ASK, "model": "nope"})
        broken = await client.post("/v1/messages", content=b"{not json")
        upstream = await post(client, "/v1/messages", {**ASK, "fake": {"status": 400}})
        method = await client.get("/v1/messages")
        # Anthropic's paths the gateway does not serve, asked without anthropic-version
        batches = await client.post("/v1/messages/batches", json={})
        slash = await client.post("/v1/messages/", json=ASK)
    assert [batches.status_code, slash.status_code] == [404, 404]
    assert batches.json()["error"]["type"] == slash.json()["error"]["type"] == "not_found_error"
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "type": "not_found_error",
        "message": "The model `nope` does not exist",
    }
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert upstream.status_code == 400 and upstream.json()["error"]["message"] == "fake error 400"
    assert method.status_code == 405 and method.json()["type"] == "error"


async def test_no_backend_is_529_overloaded(start_gateway) -> None:
    gw = await start_gateway(backend={"admission": {"max_concurrency": 1, "max_queue": 0}})
    async with gw.client() as client, trio.open_nursery() as nursery:
        body = {**ASK, "fake": {"prefill": 30}}
        nursery.start_soon(post, client, "/v1/messages", body)
        await wait_until(lambda: gw.gateway.upstreams["fake"].slots.in_flight == 1)
        refused = await post(client, "/v1/messages", ASK)
        nursery.cancel_scope.cancel()
    assert refused.status_code == 529
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert "retry-after" in refused.headers


async def test_mid_stream_failure_is_an_error_event_without_message_stop(
    start_gateway,
) -> None:
    for backend in ({}, NATIVE):
        gw = await start_gateway(backend=backend)
        body = {**ASK, "stream": True, "fake": {"tokens": 6, "fault": "reset_mid_stream"}}
        async with gw.client() as client:
            resp = await post(client, "/v1/messages", body)
        names = kinds(resp.content)
        assert names[-1] == "error" and "message_stop" not in names
        assert "content_block_delta" in names
        assert events_of(resp.content)[-1][1]["error"]["type"] == "api_error"


async def test_upstream_end_without_message_stop_is_a_failure(start_gateway) -> None:
    for backend in ({}, NATIVE):
        gw = await start_gateway(backend=backend)
        body = {**ASK, "stream": True, "fake": {"tokens": 2, "fault": "no_done"}}
        async with gw.client() as client:
            resp = await post(client, "/v1/messages", body)
        names = kinds(resp.content)
        assert names[-1] == "error" and "message_stop" not in names


async def test_count_tokens_native_and_refused_without_a_tokenizer(start_gateway) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    native = await start_gateway(backend=NATIVE)
    async with native.client() as client:
        counted = await post(
            client, "/v1/messages/count_tokens", {**body, "fake": {"input_tokens": 42}}
        )
    assert counted.status_code == 200 and counted.json() == {"input_tokens": 42}
    plain = await start_gateway()
    async with plain.client() as client:
        refused = await post(client, "/v1/messages/count_tokens", body)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "cannot count tokens" in refused.json()["error"]["message"]


async def test_models_in_anthropic_shape_when_asked(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        anthropic = await client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
        openai = await client.get("/v1/models")
        one = await client.get("/v1/models/m", headers={"anthropic-version": "2023-06-01"})
        missing = await client.get("/v1/models/nope", headers={"anthropic-version": "2023-06-01"})
    assert anthropic.json() == {
        "data": [
            {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
            for n in ("m", "m-alias")
        ],
        "has_more": False,
        "first_id": "m",
        "last_id": "m-alias",
    }
    assert openai.json()["object"] == "list"
    assert one.json()["type"] == "model"
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    "first,second",
    [("native", "native"), ("native", "translated"), ("translated", "native")],
)
async def test_failover_before_content_is_invisible(
    nursery: trio.Nursery, first: str, second: str
) -> None:
    """The first target starts its answer (``message_start``, or chat's role chunk) and
    then resets: the client gets the second target's answer as if it were the only one —
    one ``message_start``, every event once."""
    fakes = await start_fakes(nursery, ["a", "b"])
    backends = {
        name: {"type": "openai", "url": fakes[name].url, **(NATIVE if kind == "native" else {})}
        for name, kind in zip(("a", "b"), (first, second), strict=True)
    }
    url = await serve_route(nursery, backends, {"max_attempts": 2})
    script = {
        "tokens": 2,
        "fault_on_port": {str(fakes["a"].port): "reset_mid_stream"},
        "reset_at": 1,
    }
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await post(
            client, "/v1/messages", {**ASK, "model": "pool", "stream": True, "fake": script}
        )
    assert resp.status_code == 200
    assert fakes["a"].requests[-1].sent  # the first target did start its answer
    names = kinds(resp.content.replace(PING, b""))
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert len(fakes["b"].requests) == 1  # and the second answered


async def test_count_tokens_takes_no_backend_slot(start_gateway) -> None:
    """A count generates nothing: it is answered while the backend's only slot is taken
    and its queue is full, where a Messages request gets 529."""
    gw = await start_gateway(
        backend={**NATIVE, "admission": {"max_concurrency": 1, "max_queue": 0}}
    )
    count = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    async with gw.client() as client, trio.open_nursery() as nursery:
        nursery.start_soon(post, client, "/v1/messages", {**ASK, "fake": {"prefill": 30}})
        await wait_until(lambda: gw.gateway.upstreams["fake"].slots.in_flight == 1)
        counted = await post(client, "/v1/messages/count_tokens", count)
        refused = await post(client, "/v1/messages", ASK)
        nursery.cancel_scope.cancel()
    assert counted.status_code == 200 and counted.json() == {"input_tokens": 12}
    assert refused.status_code == 529


async def test_metrics_and_access_log(start_gateway, caplog: pytest.LogCaptureFixture) -> None:
    """Requests counted under endpoint ``messages``, pings under heartbeats, tokens from the
    answer's usage (native: message_start + message_delta; translated: chat's usage)."""
    from .test_observability import delta, scrape

    caplog.set_level(logging.INFO, logger="gateway.access")
    for backend in (NATIVE, {}):
        gw = await start_gateway(backend=backend, keepalive={"interval": 0.2})
        async with gw.client() as client:
            before = await scrape(client)
            body = {**ASK, "stream": True, "fake": {"tokens": 4, "prefill": 0.5}}
            resp = await post(client, "/v1/messages", body)
            await gw.gateway.inflight.wait_empty()
            after = await scrape(client)
        pings = resp.content.count(PING)
        assert pings >= 2
        assert delta(before, after, "trio_gateway_heartbeats_total", route="chat") == pings
        labels = {"route": "chat", "backend": "fake", "endpoint": "messages", "status": "200"}
        assert (
            delta(before, after, "trio_gateway_requests_total", **labels, outcome="completed") == 1
        )
        tokens = {"route": "chat", "backend": "fake"}
        assert delta(before, after, "trio_gateway_tokens_total", **tokens, kind="prompt") == 5
        assert delta(before, after, "trio_gateway_tokens_total", **tokens, kind="completion") == 4
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    relayed = [line for line in lines if line.get("endpoint") == "messages"]
    assert [(line["status"], line["outcome"]) for line in relayed] == [(200, "completed")] * 2
    assert [line["completion_tokens"] for line in relayed] == [4, 4]
    assert all(line["heartbeats"] >= 2 for line in relayed)
