"""``/v1/responses`` on a served gateway, in front of the fake upstream speaking Responses
itself (passthrough) or chat only (translation): streams and their numbering, heartbeats in
both modes, stored responses and ``previous_response_id``, errors and failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.sse import SSEFramer
from gateway.teams.keys import hash_key
from gateway.testing.fake_openai import FakeOpenAI, responses_events
from tests.conftest import serve_config

from .teams_gateway import ALPHA, BETA, bearer, raw_config
from .test_failover_limits import start_fakes
from .test_messages import serve_route

NATIVE = {"native_endpoints": ["chat/completions", "responses", "responses/input_tokens"]}
ASK: dict[str, Any] = {"model": "m", "input": "Hi"}
MODES = {"native": NATIVE, "translated": {}}


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEFramer().feed(raw) if e.data is not None]


def comments_of(raw: bytes) -> int:
    return sum(1 for e in SSEFramer().feed(raw) if e.data is None and e.comments)


@pytest.mark.parametrize("mode", MODES)
async def test_stream_is_numbered_stored_and_retrievable(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode], keepalive={"interval": 0.2})
    body = {**ASK, "stream": True, "fake": {"tokens": 3, "prefill": 0.5}}
    async with gw.client() as client:
        resp = await client.post("/v1/responses", json=body)
        events = events_of(resp.content)
        assert resp.status_code == 200 and comments_of(resp.content) >= 2
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] == "response.completed"
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == "tok0 tok1 tok2 "
        final = events[-1]["response"]
        stored = await client.get(f"/v1/responses/{final['id']}")
        items = await client.get(f"/v1/responses/{final['id']}/input_items")
        deleted = await client.delete(f"/v1/responses/{final['id']}")
        gone = await client.get(f"/v1/responses/{final['id']}")
    upstream = fake.requests[-1]
    if mode == "native":
        assert upstream.path == "/v1/responses"
        assert resp.content.replace(b": keepalive\n\n", b"") == upstream.sent
        assert upstream.sent == b"".join(responses_events(3, model="upstream-m", id=final["id"]))
    else:
        assert upstream.path == "/v1/chat/completions"
        assert upstream.body["messages"] == [{"role": "user", "content": "Hi"}]
        assert final["model"] == "m" and final["id"].startswith("resp_")
    assert stored.status_code == 200 and stored.json() == final
    assert items.json()["object"] == "list"
    assert [i["content"] for i in items.json()["data"]] == [[{"type": "input_text", "text": "Hi"}]]
    assert deleted.json() == {"id": final["id"], "object": "response", "deleted": True}
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("mode", MODES)
async def test_previous_response_id_sends_the_whole_conversation(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    gw = await start_gateway(backend=MODES[mode])
    async with gw.client() as client:
        first = (await client.post("/v1/responses", json={**ASK, "fake": {"tokens": 2}})).json()
        second = await client.post(
            "/v1/responses",
            json={"model": "m", "input": "And?", "previous_response_id": first["id"]},
        )
        third = await client.post(
            "/v1/responses",
            json={"model": "m", "input": "More", "previous_response_id": second.json()["id"]},
        )
        unknown = await client.post(
            "/v1/responses", json={**ASK, "previous_response_id": "resp_nope"}
        )
        unstored = (await client.post("/v1/responses", json={**ASK, "store": False})).json()
        missing = await client.get(f"/v1/responses/{unstored['id']}")
    assert second.status_code == third.status_code == 200
    upstream = fake.requests[-2].body  # the third turn (the last is the unstored one)
    if mode == "native":
        said = [
            part["text"]
            for item in upstream["input"]
            if item.get("type", "message") == "message"
            for part in item["content"]
        ]
        assert "previous_response_id" not in upstream
    else:
        said = [m["content"] for m in upstream["messages"]]
    assert said == ["Hi", "tok0 tok1 ", "And?", "tok0 tok1 tok2 ", "More"]
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "previous_response_id"
    assert unknown.json()["error"]["code"] == "previous_response_not_found"
    assert missing.status_code == 404


async def test_keepalive_events_only_after_created_and_numbered(start_gateway) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2, "responses": "event"})
    body = {**ASK, "stream": True, "fake": {"tokens": 4, "prefill": 0.5, "gap_at": 3, "gap": 0.6}}
    async with gw.client() as client:
        resp = await client.post("/v1/responses", json=body)
    events = events_of(resp.content)
    kinds = [e["type"] for e in events]
    assert comments_of(resp.content) >= 2  # the prefill: nothing of the response is out yet
    assert kinds.index("keepalive") > kinds.index("response.created")
    assert kinds.count("keepalive") >= 2
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def _sse(doc: dict[str, Any]) -> str:
    return f"event: {doc['type']}\ndata: {json.dumps(doc)}\n\n"


@pytest.mark.parametrize("mode", MODES)
async def test_a_failure_before_any_output_is_a_created_then_failed_response(
    start_gateway, mode: str
) -> None:
    """The headers are out (committed early) and the upstream fails before the response's
    first output: the client gets response.created — the SDKs' stream helpers take nothing
    before it — and then response.failed, with the upstream's own error code."""
    gw = await start_gateway(backend=MODES[mode], keepalive={"interval": 0.2})
    if mode == "native":
        opened = {"id": "resp_up", "object": "response", "status": "in_progress", "output": []}
        chunks = [
            _sse({"type": "response.created", "response": opened, "sequence_number": 0}),
            _sse({"type": "response.in_progress", "response": opened, "sequence_number": 1}),
            _sse(
                {
                    "type": "response.failed",
                    "response": {
                        **opened,
                        "status": "failed",
                        "error": {"code": "context_length_exceeded", "message": "too long"},
                    },
                    "sequence_number": 2,
                }
            ),
        ]
    else:
        chunks = ['data: {"error": {"message": "too long"}}\n\n']
    body = {**ASK, "stream": True, "fake": {"prefill": 0.5, "chunks": chunks}}
    async with gw.client() as client:
        resp = await client.post("/v1/responses", json=body)
    events = events_of(resp.content)
    assert resp.status_code == 200 and comments_of(resp.content) >= 1  # committed early
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.failed"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    failed = events[-1]["response"]
    assert failed["id"] == events[0]["response"]["id"] and failed["status"] == "failed"
    code = "context_length_exceeded" if mode == "native" else "server_error"
    assert failed["error"]["code"] == code and "too long" in failed["error"]["message"]


async def test_a_failure_before_any_upstream_answer_is_a_created_then_failed_response(
    start_gateway,
) -> None:
    """No attempt got an answer (the upstream's 503 came after the headers were committed):
    a response of the gateway's, for the model asked, is created and failed."""
    gw = await start_gateway(keepalive={"interval": 0.2})
    body = {**ASK, "stream": True, "fake": {"headers_delay": 0.5, "status": 503}}
    async with gw.client() as client:
        resp = await client.post("/v1/responses", json=body)
    events = events_of(resp.content)
    assert resp.status_code == 200
    assert [e["type"] for e in events] == ["response.created", "response.failed"]
    assert [e["sequence_number"] for e in events] == [0, 1]
    created, failed = events[0]["response"], events[1]["response"]
    assert created["model"] == failed["model"] == "m" and created["id"] == failed["id"]
    assert created["id"].startswith("resp_")
    assert failed["error"]["code"] == "fake_error"  # the upstream's own code, kept


@pytest.mark.parametrize("fault", ["reset_mid_stream", "no_done"])
@pytest.mark.parametrize("mode", MODES)
async def test_mid_stream_failure_is_response_failed(start_gateway, mode: str, fault: str) -> None:
    """A reset, or an upstream that ends before its terminal event (no response.completed,
    or no [DONE]), ends the client's stream with response.failed."""
    gw = await start_gateway(backend=MODES[mode])
    body = {**ASK, "stream": True, "fake": {"tokens": 8, "fault": fault}}
    async with gw.client() as client:
        resp = await client.post("/v1/responses", json=body)
    events = events_of(resp.content)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_refusals(start_gateway) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        background = await client.post("/v1/responses", json={**ASK, "background": True})
        hosted = await client.post("/v1/responses", json={**ASK, "tools": [{"type": "web_search"}]})
        counted = await client.post("/v1/responses/input_tokens", json=ASK)
    assert background.status_code == 400 and background.json()["error"]["param"] == "background"
    assert hosted.status_code == 400 and "web_search" in hosted.json()["error"]["message"]
    assert counted.status_code == 400 and "cannot count" in counted.json()["error"]["message"]


async def test_input_tokens_native(start_gateway) -> None:
    gw = await start_gateway(backend=NATIVE)
    async with gw.client() as client:
        counted = await client.post(
            "/v1/responses/input_tokens", json={**ASK, "fake": {"input_tokens": 7}}
        )
    assert counted.json() == {"object": "response.input_tokens", "input_tokens": 7}


async def test_whole_answers(start_gateway) -> None:
    for backend in (NATIVE, {}):
        gw = await start_gateway(backend=backend)
        async with gw.client() as client:
            resp = await client.post("/v1/responses", json={**ASK, "fake": {"tokens": 2}})
        answer = resp.json()
        assert answer["object"] == "response" and answer["status"] == "completed"
        assert answer["output"][0]["content"][0]["text"] == "tok0 tok1 "
        assert answer["usage"]["output_tokens"] == 2


async def serve_failover_pair(
    nursery: trio.Nursery, tmp_path: Path, first: str, second: str
) -> tuple[dict[str, FakeOpenAI], str, dict[str, Any]]:
    """Fakes ``a`` and ``b`` in modes ``first`` and ``second`` (keys of MODES), a gateway
    (its url) with route ``pool`` over them, two attempts, and the fake script of two
    tokens under which ``a`` resets after its first event, so that ``b`` answers."""
    fakes = await start_fakes(nursery, ["a", "b"])
    backends = {
        name: {"type": "openai", "url": fakes[name].url, **MODES[kind]}
        for name, kind in zip(("a", "b"), (first, second), strict=True)
    }
    url = await serve_route(
        nursery, backends, {"max_attempts": 2}, responses={"database": str(tmp_path / "r.db")}
    )
    script = {
        "tokens": 2,
        "fault_on_port": {str(fakes["a"].port): "reset_mid_stream"},
        "reset_at": 1,
    }
    return fakes, url, script


@pytest.mark.parametrize(
    "first,second",
    [("native", "native"), ("native", "translated"), ("translated", "native")],
)
async def test_failover_before_output_is_invisible(
    nursery: trio.Nursery, tmp_path: Path, first: str, second: str
) -> None:
    """The first target starts its answer (``response.created``, or chat's role chunk) and
    then resets: the client sees one response, numbered from 0, from the second."""
    fakes, url, script = await serve_failover_pair(nursery, tmp_path, first, second)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.post(
            "/v1/responses", json={**ASK, "model": "pool", "stream": True, "fake": script}
        )
    assert fakes["a"].requests[-1].sent and len(fakes["b"].requests) == 1
    events = events_of(resp.content)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_stored_responses_are_per_team(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Another team's response id reads as unknown: 404 on GET, input_items and DELETE,
    400 as a previous_response_id; its own team reads and continues it."""
    teams = {
        "alpha": {"keys": [hash_key(ALPHA)]},
        "beta": {"keys": [hash_key(BETA)]},
    }
    raw = raw_config(fake.url, tmp_path, teams)
    config = build_config({**raw, "responses": {"database": str(tmp_path / "r.db")}}, environ={})
    url = (await serve_config(nursery, config)).url
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        made = await client.post("/v1/responses", json=ASK, headers=bearer(ALPHA))
        rid = made.json()["id"]
        theirs = [
            await client.get(f"/v1/responses/{rid}", headers=bearer(BETA)),
            await client.get(f"/v1/responses/{rid}/input_items", headers=bearer(BETA)),
            await client.delete(f"/v1/responses/{rid}", headers=bearer(BETA)),
        ]
        continued = await client.post(
            "/v1/responses", json={**ASK, "previous_response_id": rid}, headers=bearer(BETA)
        )
        own = await client.get(f"/v1/responses/{rid}", headers=bearer(ALPHA))
        keyless = await client.get(f"/v1/responses/{rid}")
    assert made.status_code == 200
    assert [r.status_code for r in theirs] == [404, 404, 404]
    assert continued.status_code == 400
    assert own.status_code == 200 and own.json()["id"] == rid
    assert keyless.status_code == 401


@pytest.mark.parametrize("mode", MODES)
async def test_metrics_count_responses_and_their_tokens(start_gateway, mode: str) -> None:
    from .test_observability import delta, scrape

    gw = await start_gateway(backend=MODES[mode], keepalive={"interval": 0.2})
    async with gw.client() as client:
        before = await scrape(client)
        body = {**ASK, "stream": True, "fake": {"tokens": 4, "prefill": 0.5}}
        resp = await client.post("/v1/responses", json=body)
        await gw.gateway.inflight.wait_empty()
        after = await scrape(client)
    ok = {"route": "chat", "backend": "fake", "endpoint": "responses", "status": "200"}
    assert delta(before, after, "trio_gateway_requests_total", **ok, outcome="completed") == 1
    beats = comments_of(resp.content)
    assert beats >= 2
    assert delta(before, after, "trio_gateway_heartbeats_total", route="chat") == beats
    tokens = {"route": "chat", "backend": "fake"}
    assert delta(before, after, "trio_gateway_tokens_total", **tokens, kind="prompt") == 5
    assert delta(before, after, "trio_gateway_tokens_total", **tokens, kind="completion") == 4
