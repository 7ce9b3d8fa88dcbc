"""``llamacpp-python``'s request parsing, sans I/O: what reaches llama-cpp-python, and what
is refused before it does."""

from __future__ import annotations

from typing import Any

import pytest

from backends.llamacpp_python._protocol import (
    EmbeddingRequest,
    TextRequest,
    Usage,
    parse_request,
    usage_chunk,
)
from gateway.abc import InvalidRequest, sse_data


def test_chat_request_options_and_messages() -> None:
    parsed = parse_request(
        "chat/completions",
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,  # the newer name wins
            "temperature": 0,
            "top_k": 5,
            "seed": -1,
            "stop": "\n",
            "logit_bias": {"42": -100},
            "user": "ignored",
            "n": 1,
            "logprobs": False,
            "response_format": {"type": "text"},
        },
    )
    assert isinstance(parsed, TextRequest)
    assert (parsed.kind, parsed.model, parsed.stream, parsed.include_usage) == (
        "chat",
        "m",
        True,
        True,
    )
    assert parsed.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
    ]
    assert parsed.options == {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_k": 5,
        "seed": 2**32 - 1,  # llama.cpp's seed is a uint32
        "stop": ["\n"],
        "logit_bias": {42: -100.0},
    }


def test_completion_prompt_forms() -> None:
    for prompt, expected in [
        ("hi", "hi"),
        (["hi"], "hi"),
        ([1, 2, 3], [1, 2, 3]),
        ([[4, 5]], [4, 5]),
    ]:
        parsed = parse_request("completions", {"model": "m", "prompt": prompt, "echo": True})
        assert isinstance(parsed, TextRequest)
        assert parsed.prompt == expected
        assert parsed.options == {"echo": True}


def test_embedding_request() -> None:
    parsed = parse_request("embeddings", {"model": "m", "input": "x", "encoding_format": "base64"})
    assert parsed == EmbeddingRequest(model="m", inputs=["x"], base64=True)


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("completions", {"prompt": "x", "temperature": True}, "temperature"),
        ("completions", {"prompt": "x", "temperature": float("nan")}, "temperature"),
        ("completions", {"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ("completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
        ("completions", {"prompt": "x", "stop": ["a"] * 17}, "stop"),
        ("completions", {"prompt": "x", "stop": [""]}, "stop"),
        ("completions", {"prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
        ("completions", {"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias"),
        ("completions", {"prompt": "x", "suffix": "y"}, "suffix"),
        ("completions", {"prompt": "x", "best_of": 3}, "best_of"),
        ("completions", {"prompt": [True]}, "prompt"),
        ("completions", {"prompt": "x", "cache_prompt": "no"}, "cache_prompt"),
        ("chat/completions", {"messages": "hi"}, "messages"),
        ("chat/completions", {"messages": ["hi"]}, "messages[0]"),
        (
            "chat/completions",
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]},
            "messages[0]",
        ),
        ("chat/completions", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            "chat/completions",
            {"messages": [{"role": "user"}], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ("chat/completions", {"messages": [{"role": "user"}], "top_logprobs": 2}, "top_logprobs"),
        ("embeddings", {"input": [1, 2]}, "input"),
        ("embeddings", {"input": ""}, "input"),
        ("embeddings", {"input": "x", "dimensions": 8}, "dimensions"),
        ("embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_refused_with_the_param_named(endpoint: Any, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_request(endpoint, {"model": "m", **body})
    assert error.value.param == param
    assert error.value.status == 400


def test_usage_chunk_follows_openai() -> None:
    first = {"id": "c1", "object": "text_completion", "created": 5, "model": "m", "choices": []}
    chunk = usage_chunk(first, Usage(prompt_tokens=3, completion_tokens=4))
    assert sse_data(chunk) == (
        b'data: {"id":"c1","object":"text_completion","created":5,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    )
