"""The dialects' client-facing shapes and the stream pipes the relay drives, sans I/O:
error bodies and statuses per dialect, heartbeats, rate-limit headers, and what each pipe
writes, holds back and ends on, fed at every split point."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.abc import Backend, BackendSettings, Endpoint, JSONObject, UpstreamRequest
from gateway.config import TargetSettings
from gateway.dialects import CHAT, MESSAGES, dialect_of
from gateway.dialects.base import Fed, StreamPipe, Tokens
from gateway.dialects.chat import ChatPassthrough, first_choices
from gateway.dialects.messages import MessagesFromChat, MessagesPassthrough, reset_seconds
from gateway.errors import (
    AuthenticationError,
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    Overloaded,
    PermissionDenied,
    RateLimited,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.keepalive import KeepaliveSettings
from gateway.plans import Plan, plan_request
from gateway.testing.fake_openai import chat_events


def event(kind: str, doc: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode()


MESSAGE_START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "m",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 20, "output_tokens": 0},
        },
    },
)
NATIVE = [
    MESSAGE_START,
    b'event: ping\ndata: {"type": "ping"}\n\n',
    event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ),
    event("content_block_stop", {"type": "content_block_stop", "index": 0}),
    event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 7},
        },
    ),
    event("message_stop", {"type": "message_stop"}),
]


def feed_all(pipe: StreamPipe, pieces: list[bytes]) -> list[Fed]:
    return [pipe.feed(piece) for piece in pieces]


@pytest.mark.parametrize(
    ("error", "chat_status", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, 400, "invalid_request_error"),
        (BodyTooLarge("big"), 413, 413, "request_too_large"),
        (AuthenticationError("who"), 401, 401, "authentication_error"),
        (PermissionDenied("no"), 403, 403, "permission_error"),
        (ModelNotFound("none"), 404, 404, "not_found_error"),
        (RateLimited("slow", kind="requests", retry_after=2), 429, 429, "rate_limit_error"),
        (Overloaded("full", status=429), 429, 529, "overloaded_error"),
        (Overloaded("full"), 503, 529, "overloaded_error"),
        (NoBackendAvailable("down"), 503, 529, "overloaded_error"),
        (UpstreamConnectError("refused"), 502, 502, "api_error"),
        (UpstreamTimeout("slow"), 504, 504, "timeout_error"),
        (UpstreamStatusError(400, "upstream says no"), 400, 400, "invalid_request_error"),
        (UpstreamStatusError(529, "busy", type="overloaded_error"), 529, 529, "overloaded_error"),
        (UpstreamStatusError(422, "odd"), 422, 422, "invalid_request_error"),
        (GatewayError("bug"), 500, 500, "api_error"),
    ],
)
def test_errors_in_each_dialect(
    error: GatewayError, chat_status: int, status: int, kind: str
) -> None:
    assert CHAT.status(error) == chat_status
    assert json.loads(CHAT.error_json(error))["error"]["message"] == error.message
    assert MESSAGES.status(error) == status
    body = json.loads(MESSAGES.error_json(error))
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert (
        MESSAGES.error_event(error)
        == b"event: error\ndata: " + MESSAGES.error_json(error) + b"\n\n"
    )
    assert CHAT.error_event(error).startswith(b'data: {"error": ')


def test_heartbeats_by_dialect_and_policy() -> None:
    policy = KeepaliveSettings()
    assert CHAT.heartbeat(policy) == b": keepalive\n\n"
    assert MESSAGES.heartbeat(policy) == b'event: ping\ndata: {"type": "ping"}\n\n'
    comment = KeepaliveSettings(messages="comment", comment="")
    assert MESSAGES.heartbeat(comment) == b":\n\n"


def test_dialect_of_endpoints() -> None:
    assert dialect_of("chat/completions") is CHAT
    assert dialect_of("embeddings") is CHAT
    assert dialect_of("messages") is MESSAGES
    assert dialect_of("messages/count_tokens") is MESSAGES


def test_rate_limit_headers_in_anthropic_naming() -> None:
    openai = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1m0.5s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "20ms",
        "Retry-After": "3",
    }
    assert MESSAGES.limit_headers(openai, 1_700_000_000.0) == {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "59",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:14:20Z",
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:20Z",
        "Retry-After": "3",
    }
    assert CHAT.limit_headers(openai, 0) == openai
    assert reset_seconds("3s") == 3 and reset_seconds("2m") == 120 and reset_seconds("x") is None
    assert MESSAGES.id_headers("abc") == [(b"request-id", b"abc")]


def test_native_messages_stream_holds_everything_before_content() -> None:
    pipe = MessagesPassthrough().stream()
    fed = feed_all(pipe, NATIVE)
    # message_start and the upstream's ping wait for the first content event...
    assert fed[0] == Fed() and fed[1] == Fed()
    assert fed[2] == Fed(b"".join(NATIVE[:3]), data=True)
    # ...and then every byte passes unchanged, in order, ending at message_stop.
    assert b"".join(f.out for f in fed) == b"".join(NATIVE)
    assert [f.end for f in fed] == [False] * 6 + [True]
    assert pipe.tokens == Tokens(prompt=25, completion=7, model="m")  # message_start's


def test_native_messages_stream_at_every_split_point() -> None:
    whole = b"".join(NATIVE)
    for cut in range(1, len(whole)):
        pipe = MessagesPassthrough().stream()
        first, second = pipe.feed(whole[:cut]), pipe.feed(whole[cut:])
        assert first.out + second.out == whole
        assert second.end and not first.end


def test_native_messages_stream_stops_at_message_stop() -> None:
    pipe = MessagesPassthrough().stream()
    fed = pipe.feed(b"".join(NATIVE) + b"event: ping\ndata: {}\n\n")
    assert fed.end and fed.out == b"".join(NATIVE)


def test_native_error_event_fails_the_attempt() -> None:
    pipe = MessagesPassthrough().stream()
    error = event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    with pytest.raises(UpstreamStatusError) as caught:
        pipe.feed(MESSAGE_START + error)
    assert (caught.value.status, caught.value.type, caught.value.message) == (
        529,
        "overloaded_error",
        "busy",
    )
    with pytest.raises(UpstreamStatusError):
        MessagesPassthrough().stream().feed(b"event: error\ndata: nonsense\n\n")


def test_native_whole_answer_passes_unchanged_with_usage_noted() -> None:
    body = json.dumps(
        {"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}}
    ).encode()
    tokens = Tokens()
    assert MessagesPassthrough().whole(body, tokens) == body
    assert tokens == Tokens(prompt=3, completion=4)


def test_chat_passthrough_hides_the_usage_chunk_it_asked_for() -> None:
    events = chat_events(2)
    shown, hidden = ChatPassthrough(False).stream(), ChatPassthrough(True).stream()
    assert b"".join(f.out for f in feed_all(shown, events)) == b"".join(events)
    out = b"".join(f.out for f in feed_all(hidden, events))
    assert out == b"".join(e for e in events if b'"choices":[]' not in e)
    assert hidden.tokens == Tokens(prompt=5, completion=2, model="fake")


def test_an_error_chunk_is_never_hidden_as_the_usage_the_gateway_asked_for() -> None:
    # An error object that carries usage, after some content: with the usage chunk hidden,
    # it was dropped too and [DONE] made the broken answer look whole.
    error = b'data: {"error": {"message": "boom"}, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}\n\n'
    events = [*chat_events(1)[:2], error, b"data: [DONE]\n\n"]
    out = b"".join(f.out for f in feed_all(ChatPassthrough(True).stream(), events))
    assert error in out


@pytest.mark.parametrize("done", [b"data: [DONE] \n\n", b"data: [DONE]\r\n\r\n"])
def test_the_end_is_read_as_the_openai_sdks_read_it(done: bytes) -> None:
    # Data that begins with [DONE] ends the stream for the SDKs (Python and Node): the
    # gateway ends there too, passed through or translated, and never reads it as JSON.
    events = [*chat_events(2)[:-1], done]
    passed = feed_all(ChatPassthrough().stream(), events)
    assert passed[-1].end and b"".join(f.out for f in passed) == b"".join(events)
    translated = feed_all(MessagesFromChat("msg_x", "m").stream(), events)
    assert translated[-1].end
    assert b"".join(f.out for f in translated).endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def test_a_falsy_error_field_is_no_error_as_the_sdks_read_it() -> None:
    assert first_choices({"error": None, "choices": [{"index": 0, "delta": {}}]})
    assert first_choices({"error": False, "choices": [{"index": 0, "delta": {}}]})
    with pytest.raises(UpstreamProtocolError, match="boom"):
        first_choices({"error": {"message": "boom"}})


def test_translated_stream_holds_message_start_and_ends_at_done() -> None:
    events = chat_events(3)
    pipe = MessagesFromChat("msg_x", "public-model").stream()
    fed = feed_all(pipe, events)
    assert fed[0].out == b""  # the role chunk: at most a held message_start
    out = b"".join(f.out for f in fed)
    kinds = [line[7:] for line in out.split(b"\n") if line.startswith(b"event: ")]
    assert kinds[0] == b"message_start" and kinds[-2:] == [b"message_delta", b"message_stop"]
    assert fed[-1].end and not any(f.end for f in fed[:-1])
    assert b'"model":"public-model"' in out and b'"id":"msg_x"' in out
    assert pipe.tokens == Tokens(prompt=5, completion=3, model="fake")  # the upstream's


def test_translated_stream_refuses_what_is_not_json() -> None:
    pipe = MessagesFromChat("msg_x", "m").stream()
    fed = pipe.feed(b"data: {not json\n\n")
    assert isinstance(fed.failure, UpstreamProtocolError) and fed.out == b""


class _Backend(Backend):
    def __init__(self, native: list[str] | None = None) -> None:
        settings = {"type": "x"} | ({"native_endpoints": native} if native is not None else {})
        super().__init__("b", BackendSettings(**settings))

    def open_response(self, request: UpstreamRequest) -> Any:
        raise NotImplementedError


MESSAGES_BODY: JSONObject = {
    "model": "m",
    "max_tokens": 9,
    "stream": True,
    "stop_sequences": ["END"],
    "messages": [{"role": "user", "content": "hi"}],
    "cache_prompt": True,
}


def plan_of(endpoint: Endpoint, body: JSONObject, *backends: Backend) -> Plan:
    return plan_request(
        endpoint,
        body,
        backends,
        model="public",
        stream=endpoint == "messages",
        request_id="rid",
        headers={"x-request-id": "rid"},
        client_headers={"anthropic-version": "2023-06-01", "authorization": "Bearer k"},
    )


def test_plan_per_target_passthrough_or_translation() -> None:
    native, chat = _Backend(["messages", "messages/count_tokens"]), _Backend()
    plan = plan_of("messages", MESSAGES_BODY, native, chat)
    target = TargetSettings(backend="b", model="upstream")
    to_native, to_chat = plan.for_target(native, target), plan.for_target(chat, target)
    assert to_native.request.endpoint == "messages" and to_native.open is None
    assert to_native.request.body == {**MESSAGES_BODY, "model": "upstream"}
    # The client's Anthropic headers go only where Messages is spoken; its key never.
    assert to_native.request.headers == {"x-request-id": "rid", "anthropic-version": "2023-06-01"}
    assert isinstance(to_native.shape, MessagesPassthrough) and to_native.admitted
    assert to_chat.request.endpoint == "chat/completions"
    assert to_chat.request.headers == {"x-request-id": "rid"}
    assert to_chat.request.body["model"] == "upstream"
    assert to_chat.request.body["stop"] == ["END"] and to_chat.request.body["cache_prompt"]
    assert isinstance(to_chat.shape, MessagesFromChat) and to_chat.shape.model == "public"
    assert to_chat.shape.stop_sequences == ("END",)


def test_plan_of_an_all_native_route_never_translates() -> None:
    native = _Backend(["messages"])
    body = {**MESSAGES_BODY, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    plan = plan_of("messages", body, native)  # a server tool: translation would refuse it
    assert plan.chat_body is None


def test_plan_of_counts_takes_no_slot() -> None:
    native, chat = _Backend(["messages/count_tokens"]), _Backend()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plan = plan_of("messages/count_tokens", body, native, chat)
    target = TargetSettings(backend="b")
    counted, asked = plan.for_target(chat, target), plan.for_target(native, target)
    assert not counted.admitted and counted.open is not None
    assert counted.request.endpoint == "chat/completions"
    assert not asked.admitted and asked.open is None
    assert asked.request.endpoint == "messages/count_tokens"


def test_chat_plans_pass_through() -> None:
    body: JSONObject = {"model": "m", "messages": []}
    planned = plan_of("chat/completions", body, _Backend()).for_target(
        _Backend(), TargetSettings(backend="b")
    )
    assert planned.request.body is body and isinstance(planned.shape, ChatPassthrough)
