"""Anthropic Messages on the real in-process llama-cpp-python model, which speaks chat only:
the gateway translates the request to chat and the answer back, and what a client gets is
Anthropic's grammar under the route's public model name, carrying exactly the text, stop
and token counts llama-cpp-python produces for the translated chat called directly —
read raw, and through the official ``anthropic`` SDK."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anthropic
import trio

from backends.llamacpp_python._protocol import fold_system

from .llamacpp_python_helpers import LocalGateway, StartLocal
from .sse_helpers import sse_events

if TYPE_CHECKING:  # the fast lane collects this module without llama-cpp-python
    import llama_cpp

PING = b'event: ping\ndata: {"type": "ping"}'
SYSTEM = [{"type": "text", "text": "Answer briefly."}]
MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}
]
# The same turn as the chat the translation makes of it (what llama-cpp-python is given).
CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name three colours."},
]
MAX_TOKENS = 8
# cache_prompt (not an Anthropic field: passed on to the chat backend as it is) off: every
# request starts from an empty cache, so each is the same computation as the direct call.
ASK: dict[str, Any] = {
    "model": "gemma",
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
    "system": SYSTEM,
    "messages": MESSAGES,
    "cache_prompt": False,
}
STOP_REASON = {"length": "max_tokens", "stop": "end_turn"}


async def _direct(reference: llama_cpp.Llama, **options: Any) -> Any:
    """llama-cpp-python's own chat answer to :data:`CHAT`, from an empty cache — its system
    prompt in the first user turn, as the gateway gives it to the "gemma" chat format."""

    def call() -> Any:
        reference.reset()
        messages = fold_system(CHAT)
        return reference.create_chat_completion(messages=messages, temperature=0, **options)

    return await trio.to_thread.run_sync(call)


def _parse(event: bytes) -> tuple[str, dict[str, Any]]:
    name, data = event.split(b"\n", 1)
    assert name.startswith(b"event: ") and data.startswith(b"data: "), event
    parsed: dict[str, Any] = json.loads(data[len(b"data: ") :])
    assert parsed["type"] == name[len(b"event: ") :].decode(), event
    return parsed["type"], parsed


async def _stream(gw: LocalGateway, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events of a streamed answer, read raw; the route's pings left out."""
    async with (
        gw.client() as client,
        client.stream("POST", "/v1/messages", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in sse_events(response)]
    return [_parse(e) for e in events if e != PING]


def _sdk(gw: LocalGateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0)


async def test_stream_is_anthropic_grammar_around_llama_cpp_pythons_answer(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    expected = await _direct(reference, max_tokens=MAX_TOKENS)
    events = await _stream(gw, ASK)

    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"], names
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
    assert set(names[2:-3]) == {"content_block_delta"} and len(names) > 5, names

    message = events[0][1]["message"]
    assert message["id"].startswith("msg_")
    assert (message["type"], message["role"], message["content"]) == ("message", "assistant", [])
    assert message["model"] == "gemma"  # the route's public name
    assert message["stop_reason"] is None
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data for _, data in events[2:-3]]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas), deltas
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}

    choice, usage = expected["choices"][0], expected["usage"]
    assert "".join(d["delta"]["text"] for d in deltas) == choice["message"]["content"]
    end = events[-2][1]
    assert end["delta"]["stop_reason"] == STOP_REASON[choice["finish_reason"]] == "max_tokens"
    assert end["delta"]["stop_sequence"] is None
    assert end["usage"]["output_tokens"] == usage["completion_tokens"] == MAX_TOKENS
    # The prompt's count comes with the chat's last chunk: message_delta carries it (its
    # counts are totals that replace message_start's, as the SDKs read them).
    assert end["usage"]["input_tokens"] == usage["prompt_tokens"] > 0


async def test_answer_is_a_message_with_llama_cpp_pythons_text_and_counts(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    expected = await _direct(reference, max_tokens=MAX_TOKENS)
    async with gw.client() as client:
        response = await client.post("/v1/messages", json=ASK)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["id"].startswith("msg_")
    assert (answer["type"], answer["role"], answer["model"]) == ("message", "assistant", "gemma")
    choice, usage = expected["choices"][0], expected["usage"]
    assert answer["content"] == [{"type": "text", "text": choice["message"]["content"]}]
    assert answer["stop_reason"] == STOP_REASON[choice["finish_reason"]] == "max_tokens"
    assert answer["stop_sequence"] is None
    assert answer["usage"]["input_tokens"] == usage["prompt_tokens"] > 0
    assert answer["usage"]["output_tokens"] == usage["completion_tokens"] == MAX_TOKENS


async def test_anthropic_sdk_reads_the_translated_answers(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """The official SDK: the ``messages.stream()`` helper's text stream and final message,
    ``create(stream=True)``'s typed events, and ``create()`` — one answer, three ways."""
    gw = await start_local()
    expected = await _direct(reference, max_tokens=MAX_TOKENS)
    text = expected["choices"][0]["message"]["content"]
    args: dict[str, Any] = {
        "model": "gemma",
        "max_tokens": MAX_TOKENS,
        "system": SYSTEM,
        "messages": MESSAGES,
        # This SDK's methods take no sampling parameters: they go in the body as they are.
        "extra_body": {"temperature": 0, "cache_prompt": False},
    }
    async with _sdk(gw) as client:
        async with client.messages.stream(**args) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
        events = [event async for event in await client.messages.create(stream=True, **args)]
        created = await client.messages.create(**args)

    assert "".join(pieces) == text
    for message in (final, created):
        assert message.model == "gemma"
        assert message.id.startswith("msg_")
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == text  # type: ignore[union-attr]
        assert message.stop_reason == "max_tokens" and message.stop_sequence is None
        assert message.usage.output_tokens == MAX_TOKENS
        assert message.usage.input_tokens == expected["usage"]["prompt_tokens"]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


async def test_end_of_generation_is_end_turn(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """The model's end-of-generation token ends the message with ``end_turn``: an answer
    with no text is a message with no content block, streamed and not."""
    gw = await start_local()
    bias = {str(reference.token_eos()): 100}  # sampled first: an empty answer
    expected = await _direct(reference, max_tokens=MAX_TOKENS, logit_bias=bias)
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert expected["choices"][0]["message"]["content"] == ""
    body = {**ASK, "logit_bias": bias}  # not an Anthropic field: passed on to the backend
    async with gw.client() as client:
        answer = (await client.post("/v1/messages", json=body)).json()
    events = await _stream(gw, body)
    assert answer["content"] == []
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)
    assert answer["usage"]["input_tokens"] == expected["usage"]["prompt_tokens"]
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    end = events[1][1]
    assert (end["delta"]["stop_reason"], end["delta"]["stop_sequence"]) == ("end_turn", None)


async def _stop_sequence_case(reference: llama_cpp.Llama) -> tuple[str, str]:
    """A stop sequence the model writes (its second word, as it writes it) and the text
    llama-cpp-python answers with it: the text before it."""
    full = (await _direct(reference, max_tokens=MAX_TOKENS))["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 2, full
    stop = " " + words[1]
    expected = await _direct(reference, max_tokens=MAX_TOKENS, stop=[stop, "never-seen"])
    assert expected["choices"][0]["finish_reason"] == "stop"
    text = expected["choices"][0]["message"]["content"]
    assert stop not in text and full.startswith(text)
    return stop, text


async def test_a_stop_sequence_ends_the_text_where_llama_cpp_python_does(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    stop, text = await _stop_sequence_case(reference)
    body = {**ASK, "stop_sequences": ["never-seen", stop]}
    async with gw.client() as client:
        answer = (await client.post("/v1/messages", json=body)).json()
    events = await _stream(gw, body)
    assert answer["content"] == [{"type": "text", "text": text}]
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert streamed == text


async def test_a_stop_sequence_is_reported_as_stop_sequence(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    stop, _ = await _stop_sequence_case(reference)
    body = {**ASK, "stop_sequences": ["never-seen", stop]}
    async with gw.client() as client:
        answer = (await client.post("/v1/messages", json=body)).json()
    events = await _stream(gw, body)
    [end] = [d for n, d in events if n == "message_delta"]
    reported = [
        (answer["stop_reason"], answer["stop_sequence"]),
        (end["delta"]["stop_reason"], end["delta"]["stop_sequence"]),
    ]
    assert reported == [("stop_sequence", stop)] * 2
