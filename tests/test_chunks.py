"""OpenAI's shapes as bytes (gateway.abc's sse_data, SSE_DONE, json_bytes and
CompletionEncoder): exact bytes, compact ASCII JSON, and answers OpenAI's clients accept."""

from __future__ import annotations

import json
import math

import pytest

from gateway.abc import SSE_DONE, CompletionEncoder, Endpoint, json_bytes, sse_data
from gateway.sse import SSEFramer
from gateway.testing.openai_shapes import check_stream, check_unary, parse_sse


def test_nan_and_infinity_are_refused_not_written_as_invalid_json() -> None:
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            sse_data({"x": value})
        with pytest.raises(ValueError):
            json_bytes({"x": value})


@pytest.mark.parametrize("endpoint", ["embeddings", "responses", ""])
def test_an_encoder_is_only_for_chat_and_text_completions(endpoint: str) -> None:
    with pytest.raises(ValueError, match="no completion chunks"):
        CompletionEncoder(endpoint, "id", "m", 0)


def test_the_done_sentinel_is_exact() -> None:
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert [e.data for e in SSEFramer().feed(SSE_DONE)] == ["[DONE]"]


def test_sse_data_is_one_compact_data_line_and_a_blank_line() -> None:
    assert sse_data({"a": 1, "b": [True, None], "c": {"d": "e"}}) == (
        b'data: {"a":1,"b":[true,null],"c":{"d":"e"}}\n\n'
    )
    assert json_bytes({"a": 1, "b": "c"}) == b'{"a":1,"b":"c"}'


def test_non_ascii_and_line_breaks_are_escaped() -> None:
    # Escaped, the bytes are ASCII whatever the text: no UTF-8 character to split across
    # reads, no line break to end the event early, and a lone surrogate still encodes.
    doc = {"text": "héllo 世界 🦜\n\r\u2028 \ud800"}
    raw = sse_data(doc)
    assert raw == (
        b'data: {"text":"h\\u00e9llo \\u4e16\\u754c \\ud83e\\udd9c\\n\\r\\u2028 \\ud800"}\n\n'
    )
    assert raw.isascii()
    (event,) = SSEFramer().feed(raw)
    assert event.data is not None and json.loads(event.data) == doc


def test_a_chat_stream_is_exact() -> None:
    encoder = CompletionEncoder("chat/completions", "chatcmpl-1", "m", 7)
    head = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",'
    assert encoder.opening() == head + (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"finish_reason":null}]}\n\n'
    )
    assert encoder.piece("Hi") == head + (
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    assert encoder.piece("", "stop") == head + (
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    )
    assert encoder.usage(3, 2) == head + (
        b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    )


def test_a_text_completion_stream_is_exact() -> None:
    encoder = CompletionEncoder("completions", "cmpl-1", "m", 7)
    head = b'data: {"id":"cmpl-1","object":"text_completion","created":7,"model":"m",'
    assert encoder.opening() == b""
    assert encoder.piece("Hi", "length") == head + (
        b'"choices":[{"index":0,"text":"Hi","finish_reason":"length","logprobs":null}]}\n\n'
    )


def test_whole_answers_are_exact() -> None:
    chat = CompletionEncoder("chat/completions", "c", "m", 1)
    assert chat.whole("Hi", "stop", prompt_tokens=1, completion_tokens=2) == (
        b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"finish_reason":"stop","message":{"role":"assistant","content":"Hi"}}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
    )
    text = CompletionEncoder("completions", "c", "m", 1)
    assert text.whole("Hi", "length", prompt_tokens=0, completion_tokens=1) == (
        b'{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
        b'"finish_reason":"length","text":"Hi","logprobs":null}],'
        b'"usage":{"prompt_tokens":0,"completion_tokens":1,"total_tokens":1}}'
    )


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_what_it_encodes_is_what_openai_clients_expect(endpoint: Endpoint) -> None:
    encoder = CompletionEncoder(endpoint, "id-1", "m", 0)
    raw = (
        encoder.opening()
        + encoder.piece("one ")
        + encoder.piece("two")
        + encoder.piece("", "stop")
        + encoder.usage(4, 2)
        + SSE_DONE
    )
    answer = check_stream(endpoint, parse_sse(raw), usage=True)
    assert (answer.text, answer.pieces, answer.finish_reason) == ("one two", 2, "stop")
    whole = encoder.whole("one two", "stop", prompt_tokens=4, completion_tokens=2)
    assert check_unary(endpoint, whole, usage=True).text == "one two"
