"""Translation both ways, sans-I/O: OpenAI requests to Ollama's, NDJSON to OpenAI SSE."""

from __future__ import annotations

import json

import pytest
from trio_gateway_ollama._translate import (
    NDJSONDecoder,
    StreamTranslator,
    to_ollama,
    whole_answer,
)

from gateway.abc import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from gateway.testing.openai_shapes import check_stream, check_unary, parse_sse

CHAT_LINES = [
    {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": "Hel"},
        "done": False,
    },
    {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": "lo"},
        "done": False,
    },
    {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 7,
        "eval_count": 2,
    },
]
NDJSON = b"".join(json.dumps(line).encode() + b"\n" for line in CHAT_LINES)


def test_a_chat_request_becomes_api_chat_with_options() -> None:
    native = to_ollama(
        "chat/completions",
        {
            "model": "llama3.2",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_tokens": 5,
            "temperature": 0.2,
            "seed": 7,
            "stop": "\n",
            "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": True},
        },
        stream=True,
        keep_alive="10m",
        num_ctx=2048,
    )
    assert native.path == "api/chat"
    assert native.include_usage
    assert native.body == {
        "model": "llama3.2",
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi there"},
        ],
        "options": {
            "num_predict": 5,
            "temperature": 0.2,
            "seed": 7,
            "stop": ["\n"],
            "num_ctx": 2048,
        },
        "format": "json",
        "keep_alive": "10m",
    }


def test_a_completion_request_becomes_api_generate() -> None:
    native = to_ollama("completions", {"model": "m", "prompt": "Once"}, stream=False)
    assert native.path == "api/generate"
    assert native.body == {"model": "m", "stream": False, "prompt": "Once"}


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat/completions", {"model": "m", "messages": []}, "messages"),
        (
            "chat/completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            "tools",
        ),
        (
            "chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2},
            "n",
        ),
        ("completions", {"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ("embeddings", {"model": "m", "input": "x"}, None),
    ],
)
def test_what_ollama_cannot_do_is_a_400(
    endpoint: str, body: dict[str, object], param: str | None
) -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        to_ollama(endpoint, body, stream=True)  # type: ignore[arg-type]
    assert caught.value.status == 400
    assert caught.value.param == param


@pytest.mark.parametrize("split", range(len(NDJSON) + 1))
def test_ndjson_split_anywhere_gives_the_same_stream(split: int) -> None:
    decoder = NDJSONDecoder()
    translator = StreamTranslator("chat/completions", "chatcmpl-1", "m", 0, include_usage=True)
    out = b""
    for part in (NDJSON[:split], NDJSON[split:]):
        out += b"".join(translator.event(doc) for doc in decoder.feed(part))
    decoder.close()
    answer = check_stream("chat/completions", parse_sse(out), usage=True)
    assert (answer.text, answer.pieces, answer.finish_reason) == ("Hello", 2, "length")
    assert answer.usage == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_a_generate_stream_becomes_text_completion_chunks() -> None:
    translator = StreamTranslator("completions", "cmpl-1", "m", 0, include_usage=False)
    out = b"".join(
        translator.event(doc)
        for doc in [
            {"response": "a", "done": False},
            {"response": "b", "done": False},
            {"response": "", "done": True, "done_reason": "stop", "eval_count": 2},
        ]
    )
    answer = check_stream("completions", parse_sse(out), usage=False)
    assert (answer.text, answer.finish_reason) == ("ab", "stop")


def test_an_error_line_raises_with_ollamas_message() -> None:
    translator = StreamTranslator("chat/completions", "c", "m", 0, include_usage=False)
    translator.event(CHAT_LINES[0])
    with pytest.raises(UpstreamError, match="ollama: out of memory"):
        translator.event({"error": "out of memory"})


def test_a_line_cut_at_the_end_is_a_protocol_error() -> None:
    decoder = NDJSONDecoder()
    decoder.feed(NDJSON[:-5])
    with pytest.raises(UpstreamProtocolError):
        decoder.close()


def test_a_line_that_is_not_json_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        NDJSONDecoder().feed(b"<html>\n")


def test_a_whole_answer() -> None:
    doc = {
        "model": "m",
        "message": {"role": "assistant", "content": "Hi"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 1,
    }
    raw = whole_answer(
        "chat/completions", json.dumps(doc, indent=2).encode(), id="chatcmpl-1", created=0
    )
    answer = check_unary("chat/completions", raw, usage=True)
    assert (answer.text, answer.usage) == (
        "Hi",
        {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    )
