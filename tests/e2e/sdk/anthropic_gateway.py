"""The official ``anthropic`` Python SDK's client and what the Anthropic SDK test modules
(``test_anthropic_sdk_errors``, ``test_anthropic_sdk_answers``,
``test_anthropic_sdk_keepalive``, and the Node SDK's and the fake's tests) share: the
backend modes (the fake upstream speaking Messages itself, passthrough, or chat only,
translation), the request they send, the events of a stream, and what reads the raw bytes
of an answer."""

from __future__ import annotations

import json
from typing import Any

import anthropic

from gateway.sse import SSEFramer

from .clients import _AsyncTapTransport

NATIVE = {"native_endpoints": ["chat/completions", "messages", "messages/count_tokens"]}
MODES = {"passthrough": NATIVE, "translated": {}}
ASK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hi"}],
}
STREAM_EVENTS = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def client(url: str, *, tap: bytearray | None = None, **options: Any) -> anthropic.AsyncAnthropic:
    """The SDK at ``url`` (the server root: the SDK appends ``/v1/messages``), retries off so
    an error is the first failure as it happened; with ``tap``, the raw response bytes are
    also copied there."""
    options.setdefault("api_key", "sk-test")
    options.setdefault("timeout", 10.0)
    if tap is not None:
        options["http_client"] = anthropic.DefaultAsyncHttpxClient(
            transport=_AsyncTapTransport(tap)
        )
    return anthropic.AsyncAnthropic(base_url=url, max_retries=0, **options)


def events_of(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every event with data in ``raw``, pings included."""
    return [(e.event, json.loads(e.data)) for e in SSEFramer().feed(raw) if e.data is not None]
