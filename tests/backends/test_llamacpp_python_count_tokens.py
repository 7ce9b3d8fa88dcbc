"""``llamacpp-python`` token counts: :meth:`count_tokens` equals the ``usage.prompt_tokens``
the same backend reports when it generates from the same chat, for every way
llama-cpp-python builds a prompt (a named chat format that leaves the BOS token to the
tokenizer, a Jinja template that writes it itself, a handler that prompts with text); it
refuses what generation refuses, and never waits behind a generation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
import trio

from backends.llamacpp_python import LlamaCppPythonBackend, LlamaCppPythonSettings
from gateway.abc import (
    CannotCountTokens,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamRequest,
)

from .llamacpp_python_helpers import LocalGateway, StartLocal
from .sse_helpers import event_json, sse_events

# Chat formats registered with llama-cpp-python for these tests only (see `formats`).
JINJA = "trio-gateway-test-jinja"
TEXT_PROMPT = "trio-gateway-test-text-prompt"
NO_SYSTEM = "trio-gateway-test-no-system"
NEEDS_CONTEXT = "trio-gateway-test-needs-context"

# Gemma's turns, written by the template itself, BOS token included.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}" + GEMMA_TEMPLATE
)

CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Name three colours."}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a joke about rice."},
    ],
    [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
    ],
    [{"role": "user", "content": "Ünïcödé — 日本語 🙂\n\ttabs  and  spaces  "}],
    # Special-token text in a message is parsed as the special token, in both paths.
    [{"role": "user", "content": "say <start_of_turn> and <end_of_turn> <eos>"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": " ".join(f"word{i}" for i in range(120))}],
]


def _chat(messages: list[dict[str, Any]], **extra: Any) -> UpstreamRequest:
    return UpstreamRequest(
        endpoint="chat/completions",
        body={"model": "gemma", "messages": messages, "max_tokens": 1, **extra},
        stream=False,
        request_id="count",
    )


def _text_prompt_handler(
    *,
    llama: Any,
    messages: list[dict[str, str]],
    max_tokens: int | None = None,
    model: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A chat handler that prompts with text, as llama-cpp-python's functionary ones do:
    create_completion tokenizes it (and adds the BOS token where the vocabulary does)."""
    prompt = "".join(f"<start_of_turn>{m['role']}\n{m['content']}<end_of_turn>\n" for m in messages)
    done = llama.create_completion(
        prompt=prompt + "<start_of_turn>model\n", max_tokens=max_tokens, model=model, temperature=0
    )
    choice = done["choices"][0]
    return {
        "id": "chat" + done["id"],
        "object": "chat.completion",
        "created": done["created"],
        "model": done["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice["text"]},
                "finish_reason": choice["finish_reason"],
            }
        ],
        "usage": done["usage"],
    }


def _needs_context_handler(*, llama: Any, **_: Any) -> Any:
    llama.reset()  # a handler that works on the model itself (as llava's do)
    raise AssertionError("unreachable while counting")


@pytest.fixture(scope="module")
def formats() -> Iterator[None]:
    from llama_cpp.llama_chat_format import (
        Jinja2ChatFormatter,
        LlamaChatCompletionHandlerRegistry,
    )

    registry = LlamaChatCompletionHandlerRegistry()
    handlers = {
        JINJA: Jinja2ChatFormatter(GEMMA_TEMPLATE, eos_token="<eos>", bos_token="<bos>"),
        NO_SYSTEM: Jinja2ChatFormatter(NO_SYSTEM_TEMPLATE, eos_token="<eos>", bos_token="<bos>"),
    }
    for name, formatter in handlers.items():
        registry.register_chat_completion_handler(name, formatter.to_chat_handler())
    registry.register_chat_completion_handler(TEXT_PROMPT, _text_prompt_handler)
    registry.register_chat_completion_handler(NEEDS_CONTEXT, _needs_context_handler)
    yield
    for name in (JINJA, NO_SYSTEM, TEXT_PROMPT, NEEDS_CONTEXT):
        registry.unregister_chat_handler(name)


async def _reported(gw: LocalGateway, messages: list[dict[str, Any]], stream: bool) -> int:
    """``usage.prompt_tokens`` of a real one-token chat completion through the gateway."""
    body = {"model": "gemma-late", "messages": messages, "max_tokens": 1, "temperature": 0}
    async with gw.client() as client:
        if not stream:
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return int(response.json()["usage"]["prompt_tokens"])
        body.update(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = [event_json(e) async for e in sse_events(response)]
    usage = [c["usage"] for c in chunks if c is not None and c.get("usage")]
    return int(usage[-1]["prompt_tokens"])


@pytest.mark.parametrize("chat_format", ["gemma", JINJA, TEXT_PROMPT])
async def test_the_count_is_the_prompt_tokens_generation_reports(
    start_local: StartLocal, formats: None, chat_format: str
) -> None:
    gw = await start_local(backend={"chat_format": chat_format})
    chats = CHATS if chat_format != TEXT_PROMPT else CHATS[:3]
    counted = [await gw.backend.count_tokens(_chat(messages)) for messages in chats]
    reported = [await _reported(gw, messages, stream=False) for messages in chats]
    assert counted == reported
    if chat_format != TEXT_PROMPT:  # (that handler streams nothing)
        streamed = [await _reported(gw, messages, stream=True) for messages in chats[:2]]
        assert counted[:2] == streamed
    assert len(set(counted)) == len(counted)  # every chat counted for itself


async def test_a_chat_generation_refuses_is_refused(start_local: StartLocal, formats: None) -> None:
    gw = await start_local(backend={"chat_format": NO_SYSTEM})
    backend = gw.backend
    with pytest.raises(InvalidRequest, match="System role not supported"):
        await backend.count_tokens(_chat(CHATS[1]))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequest, match="tools are not supported") as refused:
        await backend.count_tokens(_chat(CHATS[0], tools=[tool]))
    assert refused.value.param == "tools"
    tool_result = [*CHATS[0], {"role": "tool", "tool_call_id": "1", "content": "42"}]
    with pytest.raises(InvalidRequest, match="role must be one of"):
        await backend.count_tokens(_chat(tool_result))
    with pytest.raises(InvalidRequest, match="messages must be a non-empty array"):
        await backend.count_tokens(_chat([]))
    assert await backend.count_tokens(_chat(CHATS[0])) > 0  # the instance still counts
    assert backend.engines[0].tokens_generated == 0  # and counting generated nothing


async def test_a_handler_that_needs_the_model_itself_cannot_count(
    start_local: StartLocal, formats: None
) -> None:
    gw = await start_local(backend={"chat_format": NEEDS_CONTEXT})
    with pytest.raises(CannotCountTokens, match=r"needs the model's reset") as refused:
        await gw.backend.count_tokens(_chat(CHATS[0]))
    assert refused.value.status == 400


async def test_an_embedding_backend_counts_nothing(start_local: StartLocal) -> None:
    gw = await start_local(backend={"embedding": True, "pooling": "mean"})
    with pytest.raises(InvalidRequest, match="serves embeddings only"):
        await gw.backend.count_tokens(_chat(CHATS[0]))


async def test_a_stopped_backend_cannot_count() -> None:
    backend = LlamaCppPythonBackend(
        "local", LlamaCppPythonSettings(type="llamacpp-python", model="unused.gguf")
    )
    with pytest.raises(UpstreamConnectError, match="not running"):
        await backend.count_tokens(_chat(CHATS[0]))


async def test_a_count_does_not_wait_for_a_generation(start_local: StartLocal) -> None:
    """One instance, busy with a long generation: the count is answered while that very
    generation goes on."""
    gw = await start_local()
    engine = gw.backend.engines[0]
    body = {
        "model": "gemma",
        "messages": CHATS[0],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    async with (
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        # The count is made with the events' reader still open: closed, it would leave the
        # HTTP client's own readers to the garbage collector, whose finalizing one closes
        # the connection — and the gateway then stops the generation, whenever that is.
        async with aclosing(sse_events(response)) as events:
            async for event in events:
                if (chunk := event_json(event)) is not None and chunk["choices"][0]["delta"].get(
                    "content"
                ):
                    break
            job = engine.current
            assert job is not None
            with trio.fail_after(10):
                count = await gw.backend.count_tokens(_chat(CHATS[2]))
            assert engine.current is job and job.finished_at is None  # still generating
    assert count == await _reported(gw, CHATS[2], stream=False)


async def test_messages_count_tokens_through_the_gateway(start_local: StartLocal) -> None:
    """Anthropic's count_tokens, translated to chat by the gateway, counted by the model:
    the same number as the translated Messages request's input tokens."""
    gw = await start_local()
    body = {
        "model": "gemma-late",
        "system": "Answer in one word.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Sky colour?"}]}],
    }
    headers = {"anthropic-version": "2023-06-01"}
    async with gw.client() as client:
        counted = await client.post("/v1/messages/count_tokens", json=body, headers=headers)
        answer = await client.post("/v1/messages", json={**body, "max_tokens": 1}, headers=headers)
    assert counted.status_code == 200, counted.text
    assert answer.status_code == 200, answer.text
    assert counted.json() == {"input_tokens": answer.json()["usage"]["input_tokens"]}


async def test_the_gemma_format_gets_the_system_prompt_in_the_first_user_turn(
    start_local: StartLocal,
) -> None:
    """llama-cpp-python's "gemma" format drops system messages; the gateway puts their
    text at the head of the first user turn, as Gemma's own template does: a system prompt
    (or a developer message) reaches the model, and the count says so."""
    gw = await start_local(backend={"chat_format": "gemma"})
    user = {"role": "user", "content": "Sky colour?"}
    told = [{"role": "system", "content": "Answer in one word, in French."}, user]
    folded = [{"role": "user", "content": "Answer in one word, in French.\n\nSky colour?"}]
    with trio.fail_after(30):
        plain = await gw.backend.count_tokens(_chat([user]))
        with_system = await gw.backend.count_tokens(_chat(told))
        as_one_turn = await gw.backend.count_tokens(_chat(folded))
    assert with_system == as_one_turn > plain


def test_fold_system_keeps_the_turns() -> None:
    from backends.llamacpp_python._protocol import fold_system

    assert fold_system(
        [
            {"role": "system", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": "c"},
            {"role": "user", "content": "d"},
        ]
    ) == [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a\n\nc\n\nd"}]
    assert fold_system([{"role": "system", "content": "a"}]) == [{"role": "user", "content": "a"}]
    assert fold_system([{"role": "user", "content": "d"}]) == [{"role": "user", "content": "d"}]
