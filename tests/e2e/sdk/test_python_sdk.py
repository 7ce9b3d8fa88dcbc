"""The official ``openai`` Python SDK, sync and async clients, against the gateway."""

from __future__ import annotations

from typing import Any

import openai
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .clients import SDK, SDK_ASYNCGEN_WARNINGS, text_of
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

pytestmark = SDK_ASYNCGEN_WARNINGS


def dicts(chunks: list[Any]) -> list[dict[str, Any]]:
    """The SDK's chunk objects as the JSON they were parsed from (fields the server set)."""
    return [c.to_dict(mode="json") for c in chunks if c is not None]


async def test_chat_and_completions_streamed_and_not(
    start_gateway, fake: FakeOpenAI, sdk_kind: str
) -> None:
    gw = await start_gateway()
    sdk = SDK(sdk_kind, gw.url + "/v1")
    try:
        with trio.fail_after(20):
            chat = await sdk.create("chat", **CHAT, extra_body={"fake": {"tokens": 4}})
            completion = await sdk.create(
                "completions", **COMPLETION, extra_body={"fake": {"tokens": 5}}
            )
            chat_chunks: list[Any] = []
            await sdk.stream(
                "chat", chat_chunks, **CHAT, extra_body={"fake": {"tokens": 7, "pace": 0.01}}
            )
            completion_chunks: list[Any] = []
            await sdk.stream(
                "completions", completion_chunks, **COMPLETION, extra_body={"fake": {"tokens": 3}}
            )
    finally:
        await sdk.aclose()

    assert chat.choices[0].message.content == tokens_text(4)
    assert chat.model == "upstream-m" and chat.usage.completion_tokens == 4
    assert completion.choices[0].text == tokens_text(5)
    # Streams: every chunk the upstream sent reaches the application, as sent.
    chat_sent, completion_sent = fake.requests[-2].sent, fake.requests[-1].sent
    assert dicts(chat_chunks) == chunk_docs(chat_sent)
    assert text_of("chat", chat_chunks) == tokens_text(7)
    assert dicts(completion_chunks) == chunk_docs(completion_sent)
    assert text_of("completions", completion_chunks) == tokens_text(3)
    assert fake.requests[-1].body["model"] == "upstream-m"
    assert fake.requests[-1].path == "/v1/completions"


async def test_model_list(start_gateway, sdk_kind: str) -> None:
    gw = await start_gateway()
    sdk = SDK(sdk_kind, gw.url + "/v1")
    try:
        with trio.fail_after(10):
            assert await sdk.models() == ["m", "m-alias"]
    finally:
        await sdk.aclose()


async def test_tool_call_deltas_relayed_intact(start_gateway, sdk_kind: str) -> None:
    gw = await start_gateway()
    pieces, docs, calls = tool_call_stream()
    sdk = SDK(sdk_kind, gw.url + "/v1")
    chunks: list[Any] = []
    try:
        with trio.fail_after(20):
            await sdk.stream(
                "chat", chunks, **CHAT, tools=[], extra_body={"fake": {"chunks": pieces}}
            )
    finally:
        await sdk.aclose()
    assert dicts(chunks) == docs
    deltas = [c.choices[0].delta.to_dict(mode="json") for c in chunks if c is not None]
    assert assembled_tool_calls(deltas) == calls
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_status_errors_raise_the_sdk_error_classes(start_gateway, sdk_kind: str) -> None:
    """Upstream 400/404/429/5xx, and the gateway's own 404 for an unknown model, raise the
    SDK's class for the status: non-stream requests through a default route, streams
    through a route with early_headers off (so the status is still the upstream's). An
    upstream's 401 refuses the gateway's own key: a 502, never the client's
    AuthenticationError (which would send a user after their own, good, key)."""
    gw = await start_gateway()
    late = await start_gateway(keepalive={"interval": 1, "early_headers": False})
    outcomes: dict[str, tuple[str, int | None, str | None, str]] = {}

    async def attempt(
        name: str, base: str, stream: bool, body: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        sdk = SDK(sdk_kind, base + "/v1")
        try:
            if stream:
                await sdk.stream("chat", [], **body, extra_body=extra)
            else:
                await sdk.create("chat", **body, extra_body=extra)
            outcomes[name] = ("no error", None, None, "")
        except openai.APIStatusError as exc:
            outcomes[name] = (type(exc).__name__, exc.status_code, exc.code, exc.message)
        finally:
            await sdk.aclose()

    expected: dict[str, tuple[str, int | None, str | None, str]] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for status, cls in STATUS_ERRORS.items():
                for stream, base in ((False, gw.url), (True, late.url)):
                    name = f"{status}-{'stream' if stream else 'unary'}"
                    expected[name] = (
                        cls,
                        status,
                        f"code_{status}",
                        f"Error code: {status} - scripted {status}",
                    )
                    nursery.start_soon(
                        attempt, name, base, stream, CHAT, {"fake": status_script(status)}
                    )
            nursery.start_soon(
                attempt, "unknown-model", gw.url, False, {**CHAT, "model": "no-such-model"}, {}
            )
            nursery.start_soon(
                attempt, "upstream-401", gw.url, False, CHAT, {"fake": status_script(401)}
            )
    expected["upstream-401"] = (
        "InternalServerError",
        502,
        "upstream_auth_failed",
        "Error code: 502 - the backend refused the gateway's credentials (HTTP 401): its "
        "api_key is wrong or lacks access; tell the gateway's operator",
    )
    expected["unknown-model"] = (
        "NotFoundError",
        404,
        "model_not_found",
        "Error code: 404 - The model `no-such-model` does not exist",
    )
    assert outcomes == expected


async def test_in_stream_error_event_raises_api_error(start_gateway, sdk_kind: str) -> None:
    """With headers committed early, an upstream failure reaches the client as an SSE
    error event; the SDK raises APIError with its message after the tokens that came, and
    neither hangs nor ends the stream as a success."""
    gw = await start_gateway()
    outcomes: dict[str, tuple[str, str, str]] = {}

    async def attempt(name: str, script: dict[str, Any]) -> None:
        sdk = SDK(sdk_kind, gw.url + "/v1")
        chunks: list[Any] = []
        try:
            await sdk.stream("chat", chunks, **CHAT, extra_body={"fake": script})
            outcomes[name] = ("no error", "", text_of("chat", chunks))
        except openai.APIError as exc:
            outcomes[name] = (type(exc).__name__, exc.message, text_of("chat", chunks))
        finally:
            await sdk.aclose()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for name, (script, _) in IN_STREAM_FAILURES.items():
                nursery.start_soon(attempt, name, script)

    for name, (_, tokens) in IN_STREAM_FAILURES.items():
        cls, message, text = outcomes[name]
        assert (cls, text) == ("APIError", tokens_text(tokens)), (name, outcomes[name])
        assert message, name
    assert outcomes["status_429_after_headers"][1] == "slow down"
    assert "[DONE]" in outcomes["closed_before_done"][1]


async def test_heartbeats_never_reach_application_code(
    start_gateway, fake: FakeOpenAI, sdk_kind: str
) -> None:
    """Heartbeats every 0.1 s through a silent prefill and between slow tokens, with the
    default comment and with a bare ``:``: the raw bytes hold them, the application's
    chunks and text are exactly the upstream's."""
    results: dict[str, tuple[bytes, list[Any], bytes]] = {}
    script = {"prefill": 0.6, "tokens": 6, "pace": 0.15}

    async def run(comment: str) -> None:
        gw = await start_gateway(keepalive={"interval": 0.1, "comment": comment})
        raw = bytearray()
        sdk = SDK(sdk_kind, gw.url + "/v1", tap=raw)
        chunks: list[Any] = []
        try:
            await sdk.stream("chat", chunks, **CHAT, extra_body={"fake": {**script, "id": comment}})
        finally:
            await sdk.aclose()
        sent = next(r.sent for r in fake.requests if r.body["fake"].get("id") == comment)
        results[comment] = (bytes(raw), chunks, sent)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for comment in ("keepalive", ""):
                nursery.start_soon(run, comment)

    for comment, heartbeat in (("keepalive", b": keepalive\n\n"), ("", b":\n\n")):
        raw, chunks, sent = results[comment]
        upstream, beats = split_heartbeats(raw, heartbeat)
        assert beats >= 8, (comment, raw)
        assert upstream == sent
        assert dicts(chunks) == chunk_docs(sent)
        assert text_of("chat", chunks) == tokens_text(6)


async def test_error_after_whitespace_keepalive_raises_in_the_sdk(
    start_gateway, fake: FakeOpenAI, sdk_kind: str
) -> None:
    """With ``non_stream = "whitespace"`` the 200 is committed by the first space; an upstream
    error after it can no longer be a status. The SDK must not take that answer for a
    completion (it returned a ChatCompletion with ``choices=None``): the gateway writes the
    error object and then cuts the response short, which the SDK reports as a connection
    error — retried like a 5xx, then raised."""
    gw = await start_gateway(keepalive={"interval": 0.05, "non_stream": "whitespace"})
    script = {"headers_delay": 0.3, "status": 500, "message": "the model fell over"}
    outcomes: list[tuple[str, str]] = []
    tries: list[int] = []
    for retries in (0, 1):
        sdk = SDK(sdk_kind, gw.url + "/v1", max_retries=retries)
        sent = len(fake.requests)
        try:
            with trio.fail_after(20):
                result = await sdk.create("chat", **CHAT, extra_body={"fake": script})
            outcomes.append(("no error", repr(result)))
        except openai.APIError as exc:
            cause = exc.__cause__
            outcomes.append((type(exc).__name__, f"{type(cause).__name__}: {cause}"))
        finally:
            await sdk.aclose()
        tries.append(len(fake.requests) - sent)
    for cls, detail in outcomes:
        assert cls == "APIConnectionError", detail
        assert detail.startswith("RemoteProtocolError"), detail
        assert "incomplete chunked read" in detail, detail
    assert tries == [1, 2]  # max_retries=1: the SDK tried again, as after a 5xx


async def test_a_backend_that_keeps_real_statuses_gives_the_sdk_the_status_error(
    start_gateway, sdk_kind: str
) -> None:
    """A route that commits its 200 early, and a backend whose ``[backends.X.keepalive]``
    turns that off: a stream the upstream refuses after a silent half second raises the
    SDK's class for the status (RateLimitError, 429) — under the route's own policy the
    same refusal comes after a 200, as an error event (a plain APIError)."""
    route_policy = await start_gateway(keepalive={"interval": 0.1})
    backend_policy = await start_gateway(
        keepalive={"interval": 0.1}, backend={"keepalive": {"early_headers": False}}
    )
    script = {**status_script(429), "headers_delay": 0.5}
    raised: dict[str, tuple[str, int | None]] = {}
    for name, gw in (("route", route_policy), ("backend", backend_policy)):
        sdk = SDK(sdk_kind, gw.url + "/v1")
        try:
            with trio.fail_after(20):
                await sdk.stream("chat", [], **CHAT, extra_body={"fake": script})
        except openai.APIError as exc:
            raised[name] = (type(exc).__name__, getattr(exc, "status_code", None))
        finally:
            await sdk.aclose()
    assert raised == {"route": ("APIError", None), "backend": ("RateLimitError", 429)}
