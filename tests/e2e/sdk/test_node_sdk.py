"""The official ``openai`` npm package on Node's fetch, against the gateway.

Each test sends all its calls to one Node process (``tests/node/client.mjs``), which runs
them at once and reports what the application saw.
"""

from __future__ import annotations

from typing import Any

from gateway.testing.fake_openai import FakeOpenAI

from .conftest import RunNode
from .scripts import (
    CHAT,
    COMPLETION,
    IN_STREAM_FAILURES,
    STATUS_ERRORS,
    assembled_tool_calls,
    chunk_docs,
    split_heartbeats,
    status_script,
    tokens_text,
    tool_call_stream,
)


def op(
    id: str, base: str, call: str, params: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"id": id, "baseURL": base + "/v1", "call": call, "params": params or {}, **extra}


def sent_for(fake: FakeOpenAI, id: str) -> bytes:
    """What the fake sent for the request whose script carries ``"id": id``."""
    (request,) = [r for r in fake.requests if (r.body.get("fake") or {}).get("id") == id]
    return request.sent


def assert_ok(result: dict[str, Any]) -> None:
    assert result["ok"], result.get("error")


async def test_chat_completions_models_and_tool_calls(
    start_gateway, fake: FakeOpenAI, run_node: RunNode
) -> None:
    gw = await start_gateway()
    pieces, docs, calls = tool_call_stream()
    ops = [
        op("chat", gw.url, "chat", {**CHAT, "fake": {"tokens": 4, "id": "chat"}}),
        op(
            "chat-stream",
            gw.url,
            "chat",
            {**CHAT, "stream": True, "fake": {"tokens": 7, "pace": 0.01, "id": "chat-stream"}},
        ),
        op("completion", gw.url, "completions", {**COMPLETION, "fake": {"tokens": 5, "id": "c"}}),
        op(
            "completion-stream",
            gw.url,
            "completions",
            {**COMPLETION, "stream": True, "fake": {"tokens": 3, "id": "completion-stream"}},
        ),
        op("models", gw.url, "models"),
        op(
            "tools",
            gw.url,
            "chat",
            {**CHAT, "stream": True, "tools": [], "fake": {"chunks": pieces, "id": "tools"}},
        ),
    ]
    results = await run_node(ops)
    for result in results.values():
        assert_ok(result)

    assert results["chat"]["text"] == tokens_text(4)
    assert results["chat"]["result"]["usage"]["completion_tokens"] == 4
    assert results["completion"]["text"] == tokens_text(5)
    assert results["completion"]["result"]["object"] == "text_completion"
    for name, n in (("chat-stream", 7), ("completion-stream", 3)):
        assert results[name]["chunks"] == chunk_docs(sent_for(fake, name)), name
        assert results[name]["text"] == tokens_text(n), name
    assert [m["id"] for m in results["models"]["result"]] == ["m", "m-alias"]

    assert results["tools"]["chunks"] == docs
    deltas = [c["choices"][0]["delta"] for c in results["tools"]["chunks"]]
    assert assembled_tool_calls(deltas) == calls


async def test_status_errors_raise_the_sdk_error_classes(start_gateway, run_node: RunNode) -> None:
    """Upstream 400/404/429/5xx and the gateway's own 404 raise the SDK's class for the
    status; streams go through a route with early_headers off, so the status is kept."""
    gw = await start_gateway()
    late = await start_gateway(keepalive={"interval": 1, "early_headers": False})
    ops, expected = [], {}
    for status, cls in STATUS_ERRORS.items():
        ops.append(op(f"{status}-unary", gw.url, "chat", {**CHAT, "fake": status_script(status)}))
        ops.append(
            op(
                f"{status}-stream",
                late.url,
                "chat",
                {**CHAT, "stream": True, "fake": status_script(status)},
            )
        )
        body = {
            "message": f"scripted {status}",
            "type": "scripted_error",
            "param": None,
            "code": f"code_{status}",
        }
        expected[f"{status}-unary"] = expected[f"{status}-stream"] = (cls, status, body)
    ops.append(op("unknown-model", gw.url, "chat", {**CHAT, "model": "no-such-model"}))
    expected["unknown-model"] = (
        "NotFoundError",
        404,
        {
            "message": "The model `no-such-model` does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    )

    results = await run_node(ops)
    outcomes = {}
    for name, result in results.items():
        error = result.get("error") or {}
        outcomes[name] = (error.get("class"), error.get("status"), error.get("body"))
    assert outcomes == expected


async def test_in_stream_error_event_raises_api_error(start_gateway, run_node: RunNode) -> None:
    """An upstream failure after headers were committed reaches the application as the
    SDK's APIError with the gateway's message, after the tokens that came; no hang, no
    clean-looking end."""
    gw = await start_gateway()
    ops = [
        op(name, gw.url, "chat", {**CHAT, "stream": True, "fake": script})
        for name, (script, _) in IN_STREAM_FAILURES.items()
    ]
    results = await run_node(ops)
    for name, (_, tokens) in IN_STREAM_FAILURES.items():
        result = results[name]
        error = result.get("error") or {}
        assert (result["ok"], error.get("class"), result["text"]) == (
            False,
            "APIError",
            tokens_text(tokens),
        ), (name, result)
        assert error["body"]["type"] == "upstream_error" or name == "status_429_after_headers"
    assert results["status_429_after_headers"]["error"]["body"]["message"] == "slow down"
    assert "[DONE]" in results["closed_before_done"]["error"]["message"]


async def test_heartbeats_never_reach_application_code(
    start_gateway, fake: FakeOpenAI, run_node: RunNode
) -> None:
    """The bytes fetch received hold many heartbeats (default comment and bare ``:``);
    the SDK's chunks and text are exactly the upstream's."""
    keepalive = await start_gateway(keepalive={"interval": 0.1, "comment": "keepalive"})
    bare = await start_gateway(keepalive={"interval": 0.1, "comment": ""})
    script = {"prefill": 0.6, "tokens": 6, "pace": 0.15}
    ops = [
        op(name, gw.url, "chat", {**CHAT, "stream": True, "fake": {**script, "id": name}}, tap=True)
        for name, gw in (("keepalive", keepalive), ("bare", bare))
    ]
    results = await run_node(ops)
    for name, heartbeat in (("keepalive", b": keepalive\n\n"), ("bare", b":\n\n")):
        result = results[name]
        assert_ok(result)
        sent = sent_for(fake, name)
        upstream, beats = split_heartbeats(result["raw"].encode(), heartbeat)
        assert beats >= 8, (name, result["raw"])
        assert upstream == sent
        assert result["chunks"] == chunk_docs(sent)
        assert result["text"] == tokens_text(6)


async def test_a_backend_that_keeps_real_statuses_gives_the_sdk_the_status_error(
    start_gateway, run_node: RunNode
) -> None:
    """As in the Python SDK's test: a route that commits early, a backend that turns it
    off — the upstream's 429 after a silent half second is RateLimitError there, and an
    APIError after a 200 under the route's own policy."""
    route_policy = await start_gateway(keepalive={"interval": 0.1})
    backend_policy = await start_gateway(
        keepalive={"interval": 0.1}, backend={"keepalive": {"early_headers": False}}
    )
    params = {**CHAT, "stream": True, "fake": {**status_script(429), "headers_delay": 0.5}}
    results = await run_node(
        [
            op("route", route_policy.url, "chat", params),
            op("backend", backend_policy.url, "chat", params),
        ]
    )
    outcomes = {
        name: ((result.get("error") or {}).get("class"), (result.get("error") or {}).get("status"))
        for name, result in results.items()
    }
    assert outcomes == {"route": ("APIError", None), "backend": ("RateLimitError", 429)}
