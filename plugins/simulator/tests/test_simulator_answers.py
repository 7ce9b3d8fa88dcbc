"""The simulator's answers, sans-I/O: OpenAI's shapes, its limits, its refusals."""

from __future__ import annotations

from typing import Any

import pytest
from trio_gateway_simulator import SimulatorSettings
from trio_gateway_simulator._answers import closing, plan, whole

from gateway.abc import CompletionEncoder, Endpoint, UpstreamStatusError
from gateway.testing.openai_shapes import check_stream, check_unary, parse_sse

SETTINGS = SimulatorSettings(text="alpha beta gamma", max_tokens=5)


def _body(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    if endpoint == "chat/completions":
        return {"messages": [{"role": "user", "content": "one two three"}], **extra}
    return {"prompt": "one two three", **extra}


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_stream_is_what_openai_clients_expect(endpoint: Endpoint) -> None:
    answer = plan(endpoint, _body(endpoint, stream_options={"include_usage": True}), SETTINGS)
    encoder = CompletionEncoder(endpoint, "sim-1", "m", 0)
    pieces = b"".join(encoder.piece(p) for p in answer.pieces())
    raw = encoder.opening() + pieces + closing(encoder, answer)
    checked = check_stream(endpoint, parse_sse(raw), usage=True)
    assert checked.text == "alpha beta gamma alpha beta "
    assert checked.pieces == 5
    assert checked.finish_reason == "stop"
    assert checked.usage == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_whole_answer_is_what_openai_clients_expect(endpoint: Endpoint) -> None:
    answer = plan(endpoint, _body(endpoint, max_tokens=2), SETTINGS)
    checked = check_unary(
        endpoint, whole(CompletionEncoder(endpoint, "sim-1", "m", 0), answer), usage=True
    )
    assert checked.text == "alpha beta "
    assert checked.finish_reason == "length"


def test_usage_only_when_asked() -> None:
    answer = plan("chat/completions", _body("chat/completions"), SETTINGS)
    assert b"usage" not in closing(CompletionEncoder("chat/completions", "i", "m", 0), answer)


@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_a_bad_max_tokens_is_an_upstream_400(value: object) -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        plan("completions", _body("completions", max_tokens=value), SETTINGS)
    assert caught.value.status == 400
    assert caught.value.param == "max_tokens"


def test_embeddings_are_refused_as_an_upstream_would() -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        plan("embeddings", {"input": "x"}, SETTINGS)
    assert caught.value.status == 400
