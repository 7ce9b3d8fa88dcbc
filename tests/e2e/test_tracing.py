"""Traces over OTLP/HTTP, checked at a real collector: a loopback HTTP server that decodes
what the exporter sends (:mod:`tests.fakes.otlp_collector`), in front of a served gateway
and real fake upstreams. Spans are exported from the SDK's own thread; a test flushes it
(``Tracing.flush``) once the requests are over, and reads what the collector decoded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import build_config
from gateway.service import Gateway
from gateway.sse import SSEFramer
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.serving import unused_port
from gateway.testing.ws_client import WSClient
from gateway.tracing import Tracing
from tests.conftest import serve_config
from tests.fakes.otlp_collector import CLIENT, SERVER, CollectedSpan, OTLPCollector

from .test_failover_limits import start_fakes
from .test_observability import scrape

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
DROPPED = "trio_gateway_trace_spans_dropped_total"


def tracing_table(endpoint: str | None, **more: Any) -> dict[str, Any]:
    """A ``[tracing]`` table that exports at once and gives up quickly."""
    table = {
        "service_name": "gw-test",
        "schedule_delay": 0.01,
        "export_timeout": 0.5,
        "shutdown_timeout": 1.0,
        **more,
    }
    return {**table, "otlp_endpoint": endpoint} if endpoint is not None else table


ServeTraced = Callable[..., Awaitable[tuple[str, Gateway]]]


@pytest.fixture
def serve_traced(nursery: trio.Nursery, tmp_path: Path) -> ServeTraced:
    """Serve a gateway on port 0 with route ``m`` over ``upstreams`` (in priority order)
    and ``tracing`` as its ``[tracing]`` table; stored responses go to the test's own
    directory."""

    async def start(
        upstreams: dict[str, str],
        tracing: dict[str, Any],
        *,
        route: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
    ) -> tuple[str, Gateway]:
        config = build_config(
            {
                "server": {"bind": "127.0.0.1:0"},
                "backends": {
                    name: {"type": "openai", "url": url} for name, url in upstreams.items()
                },
                "routes": {
                    "m": {
                        "targets": [{"backend": name, "model": "upstream-m"} for name in upstreams],
                        "keepalive": {"interval": 0},
                        **(route or {}),
                    }
                },
                "responses": {"database": str(tmp_path / "responses.sqlite")},
                "tracing": tracing,
            },
            environ=environ or {},
        )

        served = await serve_config(nursery, config)
        return served.url, served.gateway

    return start


@pytest.fixture
async def collector(nursery: trio.Nursery) -> OTLPCollector:
    found = OTLPCollector()
    await nursery.start(found.serve)
    return found


def tracing_of(gateway: Gateway) -> Tracing:
    assert gateway.tracing is not None
    return gateway.tracing


async def settle(gateway: Gateway) -> None:
    """Every request has ended (its spans too), and the exporter has sent them all."""
    with trio.fail_after(10):
        await gateway.inflight.wait_empty()
        await tracing_of(gateway).flush()


def only(spans: list[CollectedSpan]) -> CollectedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_a_stream_continues_the_clients_trace_with_genai_attributes(
    serve_traced: ServeTraced, fake: FakeOpenAI, collector: OTLPCollector
) -> None:
    url, gw = await serve_traced(
        {"fake": fake.url},
        tracing_table(collector.url),
        route={"keepalive": {"interval": 0.05}},
    )
    heard = 0
    async with httpx.AsyncClient(base_url=url) as client:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "fake": {"prefill": 0.2, "tokens": 3}},
            headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
        ) as resp:
            body = await resp.aread()
    heard = sum(1 for event in SSEFramer().feed(body) if event.data is None and event.comments)
    await settle(gw)

    server = only(collector.of_kind(SERVER))
    attempt = only(collector.of_kind(CLIENT))
    # The client's trace goes on: its span is the parent, and the client is answered with
    # the gateway's own span.
    assert server.trace_id == CLIENT_TRACE
    assert server.parent_span_id == CLIENT_SPAN
    assert server.trace_state == "vendor=abc"
    assert resp.headers["traceparent"] == server.traceparent()
    assert server.name == "chat m"
    assert server.resource["service.name"] == "gw-test"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.response.model"] == "upstream-m"  # as the upstream's answer says
    assert attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["trio_gateway.dialect"] == "chat"
    assert attrs["trio_gateway.route"] == "m"
    assert attrs["trio_gateway.stream"] is True
    assert attrs["trio_gateway.outcome"] == "completed"
    assert attrs["trio_gateway.attempts"] == ["fake=ok"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/v1/chat/completions"
    assert heard >= 1
    assert attrs["trio_gateway.heartbeats"] == heard
    assert attrs["trio_gateway.queue_seconds"] == 0.0
    assert "error.type" not in attrs
    first_token_at, first_token = server.events["trio_gateway.first_token"]
    assert first_token["gen_ai.server.time_to_first_token"] >= 0.2  # after the prefill
    assert server.start_ns < server.events["trio_gateway.first_byte"][0] <= first_token_at
    assert first_token_at <= server.end_ns
    # The gateway asked for the usage it reports; the client, who did not, never sees it.
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in body

    # One attempt under it, whose context the upstream got.
    assert attempt.trace_id == CLIENT_TRACE
    assert attempt.parent_span_id == server.span_id
    assert attempt.name == "chat upstream-m"
    assert attempt.attributes["trio_gateway.backend"] == "fake"
    assert attempt.attributes["trio_gateway.attempt"] == 1
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == fake.port
    assert attempt.attributes["http.response.status_code"] == 200
    assert "error.type" not in attempt.attributes
    assert server.start_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns
    upstream = fake.requests[0].headers
    assert upstream["traceparent"] == attempt.traceparent()
    assert upstream["tracestate"] == "vendor=abc"


async def test_a_tracestate_past_512_characters_is_dropped_not_logged(
    serve_traced: ServeTraced,
    fake: FakeOpenAI,
    collector: OTLPCollector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """W3C lets a vendor drop a tracestate longer than 512 characters; the SDK would log an
    invalid one whole, so a client could put 30 KiB into the log with each request."""
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(collector.url))
    huge = "x=" + "a" * 30_000
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": TRACEPARENT, "tracestate": huge},
        )
    assert resp.status_code == 200
    await settle(gw)
    assert "tracestate" not in fake.requests[0].headers
    assert only(collector.of_kind(SERVER)).trace_id == TRACEPARENT[3:35]  # the trace goes on
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


async def test_without_a_traceparent_the_trace_id_is_the_request_id(
    serve_traced: ServeTraced, fake: FakeOpenAI, collector: OTLPCollector
) -> None:
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(collector.url))
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": "garbage", "x-request-id": "a" * 32},
        )
    assert resp.status_code == 200
    await settle(gw)
    server = only(collector.of_kind(SERVER))
    attempt = only(collector.of_kind(CLIENT))
    assert server.parent_span_id == ""  # a root
    assert server.trace_id == "a" * 32
    assert resp.headers["traceparent"] == server.traceparent()
    assert server.attributes["trio_gateway.request_id"] == "a" * 32
    assert server.attributes["trio_gateway.stream"] is False
    assert "trio_gateway.first_token" not in server.events  # a whole answer: no token event
    assert fake.requests[0].headers["traceparent"] == attempt.traceparent()


async def test_a_failover_gives_an_attempt_span_per_upstream_the_first_with_its_error(
    nursery: trio.Nursery, serve_traced: ServeTraced, collector: OTLPCollector
) -> None:
    fakes = await start_fakes(nursery, ["a", "b"])
    url, gw = await serve_traced(
        {name: f.url for name, f in fakes.items()}, tracing_table(collector.url)
    )
    script = {"status_on_port": {str(fakes["a"].port): 503}}
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "fake": script},
            headers={"traceparent": TRACEPARENT},
        )
    assert resp.status_code == 200
    await settle(gw)

    server = only(collector.of_kind(SERVER))
    first, second = sorted(
        collector.of_kind(CLIENT), key=lambda s: s.attributes["trio_gateway.attempt"]
    )
    assert server.attributes["trio_gateway.attempts"] == ["a=503:fake_error", "b=ok"]
    assert server.attributes["trio_gateway.backend"] == "b"
    assert {first.parent_span_id, second.parent_span_id} == {server.span_id}
    assert first.attributes["trio_gateway.backend"] == "a"
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.attributes["trio_gateway.failover.reason"] == "503:fake_error"
    assert first.status_code == 2  # STATUS_CODE_ERROR
    assert first.end_ns <= second.start_ns
    assert second.attributes["trio_gateway.backend"] == "b"
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    assert "trio_gateway.failover.reason" not in second.attributes
    # Each upstream got its own attempt's context.
    assert fakes["a"].requests[0].headers["traceparent"] == first.traceparent()
    assert fakes["b"].requests[0].headers["traceparent"] == second.traceparent()


@pytest.mark.parametrize(
    ("path", "body", "name", "dialect", "provider", "attempt_name"),
    [
        ("/v1/completions", {"model": "m", "prompt": "hi"}, "text_completion m", "chat", "openai",
         "text_completion upstream-m"),
        ("/v1/embeddings", {"model": "m", "input": "hi"}, "embeddings m", "chat", "openai",
         "embeddings upstream-m"),
        ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]},
         "chat m", "messages", "anthropic", "chat upstream-m"),
        ("/v1/responses", {"model": "m", "input": "hi"}, "chat m", "responses", "openai",
         "chat upstream-m"),
    ],
)  # fmt: skip
async def test_every_endpoint_names_its_genai_operation(
    serve_traced: ServeTraced,
    fake: FakeOpenAI,
    collector: OTLPCollector,
    path: str,
    body: dict[str, Any],
    name: str,
    dialect: str,
    provider: str,
    attempt_name: str,
) -> None:
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(collector.url))
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post(path, json=body)
    assert resp.status_code == 200, resp.text
    await settle(gw)
    server = only(collector.of_kind(SERVER))
    attempt = only(collector.of_kind(CLIENT))
    assert (server.name, attempt.name) == (name, attempt_name)
    assert server.attributes["trio_gateway.dialect"] == dialect
    assert server.attributes["gen_ai.provider.name"] == provider
    assert attempt.attributes["gen_ai.provider.name"] == "openai"  # (translated to chat)
    assert server.attributes["gen_ai.response.model"] == "upstream-m"
    assert server.attributes["gen_ai.usage.input_tokens"] == 5
    assert attempt.parent_span_id == server.span_id


async def test_each_websocket_turn_is_a_server_span_in_the_clients_trace(
    serve_traced: ServeTraced, fake: FakeOpenAI, collector: OTLPCollector
) -> None:
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(collector.url))
    ws = await WSClient.connect(url, headers=[("traceparent", TRACEPARENT)])
    for n in (1, 2):
        await ws.send_json(
            {"type": "response.create", "model": "m", "input": "Hi", "fake": {"tokens": n}}
        )
        events = await ws.events_until_end()
        assert events[-1]["type"] == "response.completed"
    await ws.close()
    await settle(gw)
    turns = sorted(collector.of_kind(SERVER), key=lambda s: s.start_ns)
    attempts = collector.of_kind(CLIENT)
    assert len(turns) == 2 and len(attempts) == 2
    connections = {turn.attributes["trio_gateway.connection"] for turn in turns}
    assert len(connections) == 1 and "" not in connections
    for turn in turns:
        assert (turn.trace_id, turn.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
        assert turn.name == "chat m"
        assert "http.request.method" not in turn.attributes
    assert [t.attributes["gen_ai.usage.output_tokens"] for t in turns] == [1, 2]
    assert {a.parent_span_id for a in attempts} == {t.span_id for t in turns}
    assert {r.headers["traceparent"] for r in fake.requests} == {a.traceparent() for a in attempts}


async def requests_all_answered(url: str, count: int) -> None:
    """``count`` requests at once, streamed and not; each must be answered in full."""
    answered: list[int] = []

    async def one(client: httpx.AsyncClient, stream: bool) -> None:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": stream},
            headers={"traceparent": TRACEPARENT},
        )
        assert resp.status_code == 200
        assert resp.content.endswith(b"data: [DONE]\n\n") if stream else resp.json()["choices"]
        answered.append(resp.status_code)

    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=url) as client, trio.open_nursery() as requests:
            for i in range(count):
                requests.start_soon(one, client, i % 2 == 0)
    assert len(answered) == count


async def test_a_collector_that_is_down_fails_no_request_and_its_spans_are_counted(
    serve_traced: ServeTraced, fake: FakeOpenAI
) -> None:
    down = f"http://127.0.0.1:{unused_port()}"
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(down))
    async with httpx.AsyncClient(base_url=url) as client:
        before = await scrape(client)
        await requests_all_answered(url, 10)
        await settle(gw)
        after = await scrape(client)
    reason = frozenset({("reason", "export_failed")})
    full = frozenset({("reason", "queue_full")})
    assert before[(DROPPED, reason)] == 0
    assert after[(DROPPED, reason)] == 20  # a server and an attempt span per request
    assert after[(DROPPED, full)] == 0


async def test_a_collector_that_never_answers_fails_no_request_and_drops_are_counted(
    nursery: trio.Nursery, serve_traced: ServeTraced, fake: FakeOpenAI
) -> None:
    stuck = OTLPCollector(stuck=True)
    await nursery.start(stuck.serve)
    # While one export hangs (a second), at most four spans wait: the rest are dropped.
    table = tracing_table(stuck.url, export_timeout=1.0, max_queue_size=4, max_export_batch_size=4)
    url, gw = await serve_traced({"fake": fake.url}, table)
    await requests_all_answered(url, 10)
    await settle(gw)
    async with httpx.AsyncClient(base_url=url) as client:
        after = await scrape(client)
    failed = after[(DROPPED, frozenset({("reason", "export_failed")}))]
    full = after[(DROPPED, frozenset({("reason", "queue_full")}))]
    assert stuck.exports  # it was asked, and never answered
    assert full > 0
    assert failed > 0
    assert failed + full == 20  # every span is accounted for


async def test_the_standard_variables_and_header_references_configure_the_export(
    serve_traced: ServeTraced, fake: FakeOpenAI, collector: OTLPCollector
) -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "from-env",
        "COLLECTOR_TOKEN": "Bearer s3cret",
    }
    table = tracing_table(None, headers={"authorization": {"env": "COLLECTOR_TOKEN"}})
    del table["service_name"]
    url, gw = await serve_traced({"fake": fake.url}, table, environ=environ)
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await settle(gw)
    assert {s.resource["service.name"] for s in collector.spans} == {"from-env"}
    assert collector.exports[0]["authorization"] == "Bearer s3cret"
    assert collector.exports[0]["content-type"] == "application/x-protobuf"


async def test_with_tracing_off_there_is_no_tracer_and_the_traceparent_goes_on(
    serve_traced: ServeTraced, fake: FakeOpenAI
) -> None:
    url, gw = await serve_traced({"fake": fake.url}, {})
    assert gw.tracing is None
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"traceparent": TRACEPARENT},
        )
        assert DROPPED not in {name for name, _ in await scrape(client)}
    assert resp.headers["traceparent"] == TRACEPARENT
    assert fake.requests[0].headers["traceparent"] == TRACEPARENT
    assert "stream_options" not in fake.requests[0].body  # no usage asked for


async def test_unsampled_traces_record_nothing_and_still_carry_context_upstream(
    serve_traced: ServeTraced, fake: FakeOpenAI, collector: OTLPCollector
) -> None:
    url, gw = await serve_traced({"fake": fake.url}, tracing_table(collector.url, sample_ratio=0))
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    async with httpx.AsyncClient(base_url=url) as client:
        declined = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": unsampled}
        )
        new = await client.post("/v1/chat/completions", json=CHAT)  # ratio 0: not sampled
        asked = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": TRACEPARENT}
        )
    assert {r.status_code for r in (declined, new, asked)} == {200}
    await settle(gw)
    # The client's sampled flag is followed either way; only the sampled trace is sent.
    assert {s.trace_id for s in collector.spans} == {CLIENT_TRACE}
    assert len(collector.spans) == 2
    sent = fake.requests[0].headers["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00")
    assert sent != unsampled and declined.headers["traceparent"] not in (sent, unsampled)
    assert fake.requests[1].headers["traceparent"].endswith("-00")
