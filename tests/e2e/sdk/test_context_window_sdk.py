"""A prompt over the model's context window, through the official SDKs (Python and Node).

The backend refuses in llama-server's words (its real body: ``tests/test_context_window.py``)
and each client is told in its own dialect's: the openai SDKs' error carries ``code ==
"context_length_exceeded"`` on chat and Responses, and the anthropic SDKs' message is
``prompt is too long: 724 tokens > 512 maximum`` — the forms Codex and Claude Code act on
(``tests/e2e/test_coding_agents.py`` runs them); a prompt that fits with no room for its
``max_tokens`` (vLLM's refusal) reaches the anthropic SDK in Anthropic's words for that.
Whole answers and streams — refused at once (a 400) or after a heartbeat committed the
stream's headers (an error event after the 200; for Responses, a failed response) — in
front of a chat-only backend and one that speaks the client's dialect itself."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
import trio

from .clients import SDK_ASYNCGEN_WARNINGS
from .conftest import RunNode

pytestmark = SDK_ASYNCGEN_WARNINGS

# llama-server b11434's refusal of a 724-token prompt with --ctx-size 512.
OVERFLOW: dict[str, Any] = {
    "status": 400,
    "message": "request (724 tokens) exceeds the available context size (512 tokens), "
    "try increasing it",
    "type": "exceed_context_size_error",
    "code": 400,
    "error_fields": {"n_prompt_tokens": 724, "n_ctx": 512},
}
OPENAI_WORDS = (
    "This model's maximum context length is 512 tokens. However, your messages resulted in "
    "724 tokens. Please reduce the length of the messages."
)
ANTHROPIC_WORDS = "prompt is too long: 724 tokens > 512 maximum"
# vLLM's refusal of a prompt that fits with no room for the max_tokens asked, and the same in
# Anthropic's words (Claude Code asks again with what fits).
NO_ROOM: dict[str, Any] = {
    "status": 400,
    "message": "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's "
    "maximum context length is 32768 tokens and your request has 13169 input tokens "
    "(32000 > 32768 - 13169).",
    "type": "BadRequestError",
    "code": 400,
}
NO_ROOM_WORDS = (
    "input length and `max_tokens` exceed context limit: 13169 + 32000 > 32768, decrease "
    "input length or `max_tokens` and try again"
)
CODE = "context_length_exceeded"
MESSAGES = [{"role": "user", "content": "Hi"}]
NATIVE = {
    "messages": {"native_endpoints": ["chat/completions", "messages"]},
    "responses": {"native_endpoints": ["chat/completions", "responses"]},
}


INTERVAL = 0.2  # the route's heartbeat interval; the first heartbeat commits the headers


def overflow(late: bool, refusal: dict[str, Any] = OVERFLOW) -> dict[str, Any]:
    """The fake's script: ``refusal`` at once, or after the first heartbeat (``late``)."""
    return {**refusal, "headers_delay": 3 * INTERVAL if late else 0}


async def gateway_url(start_gateway: Any, native: str | None = None) -> str:
    """A gateway in front of a chat-only backend, or one speaking ``native``."""
    backend = NATIVE[native] if native else {}
    gw = await start_gateway(keepalive={"interval": INTERVAL}, backend=backend)
    return str(gw.url)


def chat_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("late", [False, True], ids=["at-once", "after-a-heartbeat"])
async def test_chat_tells_the_openai_sdk_its_code(start_gateway: Any, late: bool) -> None:
    url = await gateway_url(start_gateway)
    script = overflow(late)
    async with chat_client(url) as sdk:
        with trio.fail_after(10):
            with pytest.raises(openai.BadRequestError) as whole:
                await sdk.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    extra_body={"fake": script},  # type: ignore[arg-type]
                )
            with pytest.raises(openai.APIError) as streamed:
                stream = await sdk.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    stream=True,
                    extra_body={"fake": script},  # type: ignore[arg-type]
                )
                async for _ in stream:
                    pass
    assert (whole.value.status_code, whole.value.code) == (400, CODE)
    assert whole.value.message.endswith(OPENAI_WORDS)
    # At once: the 400 itself; after a heartbeat: the error event after the 200.
    assert type(streamed.value) is (openai.APIError if late else openai.BadRequestError)
    assert streamed.value.code == CODE and OPENAI_WORDS in streamed.value.message


@pytest.mark.parametrize("native", [None, "responses"], ids=["translated", "native"])
@pytest.mark.parametrize("late", [False, True], ids=["at-once", "after-a-heartbeat"])
async def test_responses_tell_the_openai_sdk_its_code(
    start_gateway: Any, late: bool, native: str | None
) -> None:
    url = await gateway_url(start_gateway, native)
    script = overflow(late)
    failed: list[Any] = []
    async with chat_client(url) as sdk:
        with trio.fail_after(10):
            with pytest.raises(openai.BadRequestError) as whole:
                await sdk.responses.create(model="m", input="Hi", extra_body={"fake": script})
            try:
                stream = await sdk.responses.create(
                    model="m", input="Hi", stream=True, extra_body={"fake": script}
                )
                failed = [event async for event in stream if event.type == "response.failed"]
            except openai.BadRequestError as error:
                failed = [error]
    assert (whole.value.status_code, whole.value.code) == (400, CODE)
    (end,) = failed
    if late:  # the stream was open: a failed response, as the SDK's events read it
        assert end.response.error.code == CODE and end.response.error.message == OPENAI_WORDS
    else:
        assert end.code == CODE


@pytest.mark.parametrize("native", [None, "messages"], ids=["translated", "native"])
@pytest.mark.parametrize("late", [False, True], ids=["at-once", "after-a-heartbeat"])
@pytest.mark.parametrize(
    ("refusal", "words"), [(OVERFLOW, ANTHROPIC_WORDS), (NO_ROOM, NO_ROOM_WORDS)], ids=["", "room"]
)
async def test_messages_tell_the_anthropic_sdk_anthropics_words(
    start_gateway: Any, late: bool, native: str | None, refusal: dict[str, Any], words: str
) -> None:
    url = await gateway_url(start_gateway, native)
    script = overflow(late, refusal)
    ask: dict[str, Any] = {"model": "m", "max_tokens": 32, "messages": MESSAGES}
    sdk = anthropic.AsyncAnthropic(base_url=url, api_key="sk-test", max_retries=0)
    async with sdk:
        with trio.fail_after(10):
            with pytest.raises(anthropic.BadRequestError) as whole:
                await sdk.messages.create(**ask, extra_body={"fake": script})
            with pytest.raises(anthropic.APIStatusError) as streamed:
                async with sdk.messages.stream(**ask, extra_body={"fake": script}) as stream:
                    await stream.get_final_message()
    for error in (whole.value, streamed.value):
        assert error.body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": words},
        }
    assert whole.value.status_code == 400
    assert type(streamed.value) is (anthropic.APIStatusError if late else anthropic.BadRequestError)


async def test_the_node_sdks_read_the_same(
    start_gateway: Any,
    run_node: RunNode,
    run_anthropic_node: RunNode,
    run_responses_node: RunNode,
) -> None:
    """The ``openai`` (chat and Responses) and ``@anthropic-ai/sdk`` npm packages, streamed
    after a heartbeat (the error event; for Responses the failed response) and whole (the
    400)."""
    url = await gateway_url(start_gateway)
    chat = {"model": "m", "messages": MESSAGES, "fake": overflow(True)}
    message = {"model": "m", "max_tokens": 32, "messages": MESSAGES, "fake": overflow(True)}
    openai_ops = [
        {"id": "whole", "baseURL": f"{url}/v1", "call": "chat", "params": chat},
        {
            "id": "stream",
            "baseURL": f"{url}/v1",
            "call": "chat",
            "params": {**chat, "stream": True},
        },
    ]
    anthropic_ops = [
        {"id": "whole", "baseURL": url, "call": "create", "params": message},
        {"id": "stream", "baseURL": url, "call": "stream", "params": message},
    ]
    ask = {"model": "m", "input": "Hi", "fake": overflow(True)}
    responses_ops = [
        {"id": "whole", "baseURL": f"{url}/v1", "call": "create", "params": ask},
        {
            "id": "stream",
            "baseURL": f"{url}/v1",
            "call": "create",
            "params": {**ask, "stream": True},
        },
    ]
    chats = await run_node(openai_ops)
    messages = await run_anthropic_node(anthropic_ops)
    responses = await run_responses_node(responses_ops)
    whole, streamed = responses["whole"], responses["stream"]
    assert (whole["error"]["status"], whole["error"]["body"]["code"]) == (400, CODE), whole
    (failed,) = [e for e in streamed["events"] if e["type"] == "response.failed"]
    assert failed["response"]["error"] == {"code": CODE, "message": OPENAI_WORDS}, streamed
    for result in chats.values():
        assert not result["ok"] and result["error"]["body"]["code"] == CODE, result
    assert chats["whole"]["error"]["status"] == 400
    for result in messages.values():
        assert not result["ok"], result
        assert result["error"]["body"] == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": ANTHROPIC_WORDS},
        }, result
        assert ANTHROPIC_WORDS in result["error"]["message"]
    assert messages["whole"]["error"]["status"] == 400
