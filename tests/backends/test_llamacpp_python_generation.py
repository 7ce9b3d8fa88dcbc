"""``llamacpp-python`` output: real generation through the gateway, byte for byte what
``llama_cpp.Llama`` gives when called directly, in OpenAI's shapes; bad input is a 400."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import pytest
import trio

from .llamacpp_python_helpers import (
    N_THREADS,
    LocalGateway,
    StartLocal,
    chunk_text,
)
from .sse_helpers import event_json, sse_events

if TYPE_CHECKING:  # the fast lane collects this module without llama-cpp-python
    import llama_cpp

PROMPT = "The best way to cook rice is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


async def _stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = [event async for event in sse_events(response)]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        chunk = event_json(event)
        if chunk is not None:
            chunks.append(chunk)
    return chunks


async def _direct(reference: llama_cpp.Llama, endpoint: str, body: dict[str, Any]) -> Any:
    """What llama-cpp-python itself answers, from a fresh start (no cached prefix)."""
    options = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt")}

    def call() -> Any:
        reference.reset()
        if endpoint == "chat":
            return reference.create_chat_completion(messages=body["messages"], **options)
        return reference.create_completion(prompt=body["prompt"], **options)

    return await trio.to_thread.run_sync(call)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 1234}])
async def test_completions_match_llama_cpp_called_directly(
    start_local: StartLocal, reference: llama_cpp.Llama, sampling: dict[str, Any]
) -> None:
    gw = await start_local()
    body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 16, "cache_prompt": False, **sampling}
    expected = await _direct(
        reference, "completion", {k: v for k, v in body.items() if k != "cache_prompt"}
    )
    async with gw.client() as client:
        response = await client.post("/v1/completions", json=body)
        streamed = await _stream(client, "/v1/completions", body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "text_completion"
    assert answer["model"] == "gemma"
    assert answer["choices"] == expected["choices"]
    assert answer["usage"] == expected["usage"]
    assert "".join(chunk_text(c) for c in streamed) == expected["choices"][0]["text"]
    assert streamed[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert {c["object"] for c in streamed} == {"text_completion"}


async def test_a_request_without_a_seed_samples_afresh(start_local: StartLocal) -> None:
    """llama-cpp-python samples on from the last request's seed when a request brings none:
    after a seeded request the next unseeded one always gave the same text. Each gets a
    fresh seed of its own (the same text twice in 24 tokens at temperature 1: improbable)."""
    gw = await start_local()
    body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 24, "temperature": 1.0}
    texts = []
    async with gw.client() as client:
        for _ in range(2):
            seeded = await client.post("/v1/completions", json={**body, "seed": 1234})
            unseeded = await client.post("/v1/completions", json=body)
            assert seeded.status_code == unseeded.status_code == 200
            texts.append(unseeded.json()["choices"][0]["text"])
    assert texts[0] != texts[1]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 99}])
async def test_chat_matches_llama_cpp_called_directly(
    start_local: StartLocal, reference: llama_cpp.Llama, sampling: dict[str, Any]
) -> None:
    gw = await start_local()
    body = {
        "model": "gemma",
        "messages": MESSAGES,
        "max_tokens": 16,
        "cache_prompt": False,
        **sampling,
    }
    expected = await _direct(
        reference, "chat", {k: v for k, v in body.items() if k != "cache_prompt"}
    )
    async with gw.client() as client:
        response = await client.post("/v1/chat/completions", json=body)
        streamed = await _stream(client, "/v1/chat/completions", body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"] == expected["choices"]
    assert answer["usage"] == expected["usage"]
    assert streamed[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert {c["object"] for c in streamed} == {"chat.completion.chunk"}
    assert "".join(chunk_text(c) for c in streamed) == expected["choices"][0]["message"]["content"]
    assert streamed[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]


async def test_streamed_usage_equals_the_non_streamed_usage(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """``stream_options.include_usage`` adds OpenAI's last chunk (no choices, usage), with
    the counts llama-cpp-python reports for the same request unstreamed: for a length stop,
    a stop sequence, and an end-of-generation token (which is not counted as text)."""
    gw = await start_local()
    end_of_text = {str(reference.token_eos()): 100}  # sampled first: an empty answer
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": PROMPT, "max_tokens": 8}, "length"),
        ({"prompt": "1, 2, 3, 4,", "max_tokens": 30, "stop": [" 7"]}, "stop"),
        ({"messages": MESSAGES, "max_tokens": 8, "logit_bias": end_of_text}, "stop"),
    ]
    async with gw.client() as client:
        for body, finish in cases:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            body = {"model": "gemma", "temperature": 0, **body}
            plain = (await client.post(path, json=body)).json()
            streamed = await _stream(
                client, path, {**body, "stream_options": {"include_usage": True}}
            )
            assert plain["choices"][0]["finish_reason"] == finish
            assert streamed[-2]["choices"][0]["finish_reason"] == finish
            last = streamed[-1]
            assert last["choices"] == []
            assert last["id"] == streamed[0]["id"]
            assert last["usage"] == plain["usage"], body
            assert all("usage" not in c for c in streamed[:-1])
    assert plain["usage"]["completion_tokens"] == 0  # the biased end token came first


async def test_stop_sequences_and_max_tokens_set_finish_reason(start_local: StartLocal) -> None:
    gw = await start_local(backend={"cache_prompt": True})
    async with gw.client() as client:
        counted = await client.post(
            "/v1/completions",
            json={
                "model": "gemma",
                "prompt": "1, 2, 3, 4,",
                "max_tokens": 30,
                "temperature": 0,
                "stop": " 7",
            },
        )
        capped = await client.post(
            "/v1/completions",
            json={"model": "gemma", "prompt": "1, 2, 3, 4,", "max_tokens": 3, "temperature": 0},
        )
    assert counted.json()["choices"][0]["text"] == " 5, 6,"
    assert counted.json()["choices"][0]["finish_reason"] == "stop"
    assert capped.json()["choices"][0]["finish_reason"] == "length"
    assert capped.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "x", "temperature": 3}, "temperature"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
        ("/v1/completions", {"prompt": "x", "logprobs": 2}, "logprobs"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        # A token id past the vocabulary: llama.cpp's decode fails (it was a 502, counted
        # against the backend: three such requests ejected a model that was fine).
        ("/v1/completions", {"prompt": [2, 999_999_999]}, "prompt"),
        (
            "/v1/completions",
            {"prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        ("/v1/embeddings", {"input": "x"}, None),
    ],
)
async def test_bad_requests_are_openai_400s(
    start_local: StartLocal, path: str, body: dict[str, Any], param: str | None
) -> None:
    gw = await start_local()
    async with gw.client() as client:
        answers = [await client.post(path, json={"model": "gemma-late", **body})]
        if param != "stream_options" and path != "/v1/embeddings":  # (never streamed)
            answers.append(
                await client.post(path, json={"model": "gemma-late", "stream": True, **body})
            )
    for answer in answers:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert error["message"]
    assert gw.backend.engines[0].tokens_generated == 0  # refused before reaching the model


async def test_a_prompt_longer_than_the_context_is_a_400(start_local: StartLocal) -> None:
    """In each dialect's words for it: OpenAI's code and message (completions, chat), and
    Anthropic's, which Claude Code compacts by (``tests/test_context_window.py``)."""
    # llama.cpp rounds 200 up to 256; prompts between the two sizes must not crash.
    gw = await start_local(backend={"n_ctx": 200})
    long = [{"role": "user", "content": "word " * 300}]
    async with gw.client() as client:
        response = await client.post(
            "/v1/completions",
            json={"model": "gemma-late", "prompt": "word " * 300, "max_tokens": 4},
        )
        chat = await client.post(
            "/v1/chat/completions", json={"model": "gemma-late", "messages": long, "max_tokens": 4}
        )
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0) as sdk:
            with pytest.raises(anthropic.BadRequestError) as messages:
                await sdk.messages.create(model="gemma-late", max_tokens=4, messages=long)  # type: ignore[arg-type]
        between = await client.post(
            "/v1/completions",
            json={"model": "gemma-late", "prompt": "word " * 220, "max_tokens": 4},
        )
        after = await client.post(
            "/v1/completions", json={"model": "gemma-late", "prompt": "Hi", "max_tokens": 2}
        )
    for refused in (response, chat):
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == (
            "invalid_request_error",
            "context_length_exceeded",
        )
        assert re.fullmatch(
            r"This model's maximum context length is 256 tokens\. However, your messages "
            r"resulted in 3\d\d tokens\. Please reduce the length of the messages\.",
            error["message"],
        )
    assert messages.value.type == "invalid_request_error"
    assert re.fullmatch(
        r"prompt is too long: 3\d\d tokens > 256 maximum", messages.value.body["error"]["message"]
    )
    assert between.status_code == 200, between.text
    assert after.status_code == 200  # and the instance serves the next one


async def test_embeddings(start_local: StartLocal, model_path: Path) -> None:
    gw = await start_local(backend={"embedding": True, "pooling": "mean"})
    inputs = ["hello world", "the cat sat on the mat"]
    async with gw.client() as client:
        floats = await client.post("/v1/embeddings", json={"model": "gemma", "input": inputs})
        packed = await client.post(
            "/v1/embeddings", json={"model": "gemma", "input": inputs, "encoding_format": "base64"}
        )
        chat = await client.post(
            "/v1/chat/completions", json={"model": "gemma", "messages": MESSAGES}
        )

    def direct() -> Any:
        import llama_cpp

        llama = llama_cpp.Llama(
            str(model_path),
            n_ctx=1024,
            n_threads=N_THREADS,
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )
        try:
            return llama.create_embedding(inputs)
        finally:
            llama.close()

    expected = await trio.to_thread.run_sync(direct)
    assert floats.status_code == 200, floats.text
    answer = floats.json()
    assert answer["object"] == "list"
    assert answer["model"] == "gemma"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert [item["embedding"] for item in answer["data"]] == [
        item["embedding"] for item in expected["data"]
    ]
    assert answer["usage"] == expected["usage"]
    dims = len(expected["data"][0]["embedding"])
    for item, want in zip(packed.json()["data"], expected["data"], strict=True):
        vector = base64.b64decode(item["embedding"])
        assert list(struct.unpack(f"<{dims}f", vector)) == want["embedding"]
    assert chat.status_code == 400
    assert "serves embeddings only" in chat.json()["error"]["message"]


async def test_models_and_health_are_served_beside_the_model(start_local: StartLocal) -> None:
    gw: LocalGateway = await start_local()
    async with gw.client() as client:
        models = (await client.get("/v1/models")).json()
        health = await client.get("/healthz")
    assert {m["id"] for m in models["data"]} == {"gemma", "gemma-late", "gemma-quiet"}
    assert health.status_code == 200
