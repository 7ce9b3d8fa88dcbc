"""OpenAI Responses on the real in-process llama-cpp-python model, which speaks chat only:
the gateway translates the request to chat and the answer back, and what a client gets is
the Responses grammar (``sequence_number`` from 0, ``response.created`` … ``response.completed``
or ``response.incomplete``) under the route's public model name, carrying exactly the text,
end and token counts llama-cpp-python produces for the translated chat called directly —
read raw, and through the official ``openai`` SDK."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
import trio

from backends.llamacpp_python._protocol import fold_system
from gateway.config import build_config
from gateway.server import serve
from gateway.service import open_gateway

from .llamacpp_python_helpers import N_CTX, N_THREADS, LocalGateway
from .sse_helpers import sse_events

if TYPE_CHECKING:  # the fast lane collects this module without llama-cpp-python
    import llama_cpp

INSTRUCTIONS = "Answer briefly."
INPUT = "Name three colours."
# The same turn as the chat the translation makes of it (what llama-cpp-python is given).
CHAT = [
    {"role": "system", "content": INSTRUCTIONS},
    {"role": "user", "content": INPUT},
]
MAX_OUTPUT = 8
# cache_prompt (no Responses field: passed on to the chat backend as it is) off: every
# request starts from an empty cache, so each is the same computation as the direct call.
ASK: dict[str, Any] = {
    "model": "gemma",
    "instructions": INSTRUCTIONS,
    "input": INPUT,
    "max_output_tokens": MAX_OUTPUT,
    "temperature": 0,
    "cache_prompt": False,
}
OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
async def gw(nursery: trio.Nursery, model_path: Path, tmp_path: Path) -> LocalGateway:
    """A gateway in front of the model on port 0 (route ``gemma``, 0.2 s heartbeats), its
    stored responses in the test's own directory."""
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "responses": {"database": str(tmp_path / "responses.sqlite")},
            "backends": {
                "local": {
                    "type": "llamacpp-python",
                    "model": str(model_path),
                    "n_ctx": N_CTX,
                    "n_threads": N_THREADS,
                    "chat_format": "gemma",
                }
            },
            "routes": {"gemma": {"backend": "local", "keepalive": {"interval": 0.2}}},
        }
    )

    async def run(task_status: trio.TaskStatus[LocalGateway]) -> None:
        async with open_gateway(config) as gateway, trio.open_nursery() as inner:
            binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
            task_status.started(LocalGateway(binds[0], gateway))

    started: LocalGateway = await nursery.start(run)
    return started


async def _direct(
    reference: llama_cpp.Llama, messages: list[dict[str, Any]] = CHAT, **options: Any
) -> Any:
    """llama-cpp-python's own chat answer to ``messages``, from an empty cache — a system
    prompt in the first user turn, as the gateway gives it to the "gemma" chat format."""

    def call() -> Any:
        reference.reset()
        folded = fold_system(messages)
        return reference.create_chat_completion(messages=folded, temperature=0, **options)

    return await trio.to_thread.run_sync(call)


def _parse(event: bytes) -> dict[str, Any]:
    name, data = event.split(b"\n", 1)
    assert name.startswith(b"event: ") and data.startswith(b"data: "), event
    parsed: dict[str, Any] = json.loads(data[len(b"data: ") :])
    assert parsed["type"] == name[len(b"event: ") :].decode(), event
    return parsed


async def _stream(gw: LocalGateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed answer, read raw; the route's SSE comments left out."""
    async with (
        gw.client() as client,
        client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in sse_events(response)]
    return [_parse(e) for e in events if not e.startswith(b":")]


def _check_grammar(events: list[dict[str, Any]], end: str) -> str:
    """The stream's text, once its grammar is checked: numbered from 0, one message item
    with one output_text part, ``end`` last."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    names = [e["type"] for e in events]
    assert names[:4] == OPENING and names[-4:] == [*CLOSING, end], names
    assert set(names[4:-4]) == {"response.output_text.delta"}, names
    response_id = events[0]["response"]["id"]
    assert response_id.startswith("resp_")
    assert all(e["response"]["id"] == response_id for e in events if "response" in e)
    item = events[2]["item"]
    assert item["id"].startswith("msg_") and item["type"] == "message"
    assert item["role"] == "assistant"
    for event in events[2:-1]:
        assert event["output_index"] == 0
        if "item_id" in event:
            assert event["item_id"] == item["id"] and event["content_index"] == 0
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-4]["text"] == text
    assert [part["text"] for part in events[-2]["item"]["content"]] == [text]
    return text


async def test_stream_is_responses_grammar_around_llama_cpp_pythons_answer(
    gw: LocalGateway, reference: llama_cpp.Llama
) -> None:
    """``max_output_tokens`` cuts the answer: the stream ends with ``response.incomplete``
    (``incomplete_details.reason`` ``max_output_tokens``), never ``response.completed``."""
    expected = await _direct(reference, max_tokens=MAX_OUTPUT)
    events = await _stream(gw, ASK)

    text = _check_grammar(events, "response.incomplete")
    choice, usage = expected["choices"][0], expected["usage"]
    assert choice["finish_reason"] == "length"
    assert text == choice["message"]["content"] != ""
    created = events[0]["response"]
    assert (created["status"], created["model"], created["output"]) == ("in_progress", "gemma", [])
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["model"] == "gemma"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["input_tokens"] == usage["prompt_tokens"] > 0
    assert final["usage"]["output_tokens"] == usage["completion_tokens"] == MAX_OUTPUT


async def test_answer_is_a_response_with_llama_cpp_pythons_text_and_counts(
    gw: LocalGateway, reference: llama_cpp.Llama
) -> None:
    expected = await _direct(reference, max_tokens=MAX_OUTPUT)
    async with gw.client() as client:
        response = await client.post("/v1/responses", json=ASK)
        assert response.status_code == 200, response.text
        answer = response.json()
        stored = await client.get(f"/v1/responses/{answer['id']}")
    assert response.headers["content-type"].startswith("application/json")
    assert answer["id"].startswith("resp_")
    assert (answer["object"], answer["model"], answer["status"]) == (
        "response",
        "gemma",
        "incomplete",
    )
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    choice, usage = expected["choices"][0], expected["usage"]
    [message] = answer["output"]
    assert message["id"].startswith("msg_") and message["role"] == "assistant"
    assert [part["text"] for part in message["content"]] == [choice["message"]["content"]]
    assert answer["usage"]["input_tokens"] == usage["prompt_tokens"] > 0
    assert answer["usage"]["output_tokens"] == usage["completion_tokens"] == MAX_OUTPUT
    assert stored.status_code == 200 and stored.json() == answer


async def _stop_case(reference: llama_cpp.Llama) -> tuple[str, str]:
    """A stop sequence the model writes (its second word, as it writes it) and the text
    llama-cpp-python answers with it: the text before it, ended by ``stop``."""
    full = (await _direct(reference, max_tokens=MAX_OUTPUT))["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 2, full
    stop = " " + words[1]
    expected = await _direct(reference, max_tokens=MAX_OUTPUT, stop=[stop])
    assert expected["choices"][0]["finish_reason"] == "stop"
    text = expected["choices"][0]["message"]["content"]
    assert stop not in text and full.startswith(text) and text
    return stop, text


async def test_an_answer_that_ends_is_completed(
    gw: LocalGateway, reference: llama_cpp.Llama
) -> None:
    """An answer the model ends (here at a stop sequence, ``stop`` passed on to the chat
    backend as it is) ends the stream with ``response.completed``."""
    stop, text = await _stop_case(reference)
    events = await _stream(gw, {**ASK, "stop": [stop]})
    assert _check_grammar(events, "response.completed") == text
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["incomplete_details"] is None


def _sdk(gw: LocalGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)


async def test_openai_sdk_reads_the_translated_answers(
    gw: LocalGateway, reference: llama_cpp.Llama
) -> None:
    """The official SDK: the ``responses.stream()`` helper's text deltas and
    ``get_final_response()`` on an answer that ends; ``create(stream=True)``'s typed events
    and ``create()`` on one that ``max_output_tokens`` cuts."""
    stop, text = await _stop_case(reference)
    cut = (await _direct(reference, max_tokens=MAX_OUTPUT))["choices"][0]["message"]["content"]
    args: dict[str, Any] = {
        "model": "gemma",
        "instructions": INSTRUCTIONS,
        "input": INPUT,
        "max_output_tokens": MAX_OUTPUT,
        "temperature": 0,
        "extra_body": {"cache_prompt": False},
    }
    async with _sdk(gw) as client:
        async with client.responses.stream(
            **{**args, "extra_body": {"cache_prompt": False, "stop": [stop]}}
        ) as stream:
            pieces = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        events = [e async for e in await client.responses.create(stream=True, **args)]
        created = await client.responses.create(**args)
        retrieved = await client.responses.retrieve(final.id)

    assert "".join(pieces) == final.output_text == text
    assert (final.model, final.status) == ("gemma", "completed")
    assert final.id.startswith("resp_") and retrieved.output_text == text

    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events][:4] == OPENING
    last = events[-1]
    assert last.type == "response.incomplete"
    for response in (last.response, created):
        assert (response.model, response.status) == ("gemma", "incomplete")
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.output_text == cut
        assert response.usage is not None and response.usage.output_tokens == MAX_OUTPUT


async def test_previous_response_id_reaches_the_model_as_the_whole_conversation(
    gw: LocalGateway, reference: llama_cpp.Llama
) -> None:
    """A second turn naming the first by ``previous_response_id`` is translated into the
    chat of both turns (the first turn's instructions not carried over, as in OpenAI's
    API): it costs the prompt llama-cpp-python counts for that chat called directly."""
    async with gw.client() as client:
        first = (await client.post("/v1/responses", json=ASK)).json()
        second = (
            await client.post(
                "/v1/responses",
                json={
                    **ASK,
                    "instructions": None,
                    "input": "And two more.",
                    "previous_response_id": first["id"],
                },
            )
        ).json()
    said = first["output"][0]["content"][0]["text"]
    expected = await _direct(
        reference,
        [
            {"role": "user", "content": INPUT},
            {"role": "assistant", "content": said},
            {"role": "user", "content": "And two more."},
        ],
        max_tokens=MAX_OUTPUT,
    )
    assert second["usage"]["input_tokens"] == expected["usage"]["prompt_tokens"]
    assert second["output"][0]["content"][0]["text"] == expected["choices"][0]["message"]["content"]
