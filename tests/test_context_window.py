"""A request over the model's context window, sans I/O: each backend's own words for it become
one error (:class:`ContextWindowExceeded`, with the prompt's size, the window's and the
answer's room when the backend gave them), and each dialect words that error as its clients
act on it — OpenAI's code ``context_length_exceeded`` (Codex: "ran out of room in the
model's context window"), and Anthropic's ``prompt is too long: N tokens > M maximum``
(Claude Code compacts the conversation by the difference) or ``input length and
`max_tokens` exceed context limit: N + K > M`` (Claude Code asks again with a ``max_tokens``
that fits; both patterns below are the ones Claude Code 2.1.332 matches). Other refusals
stay what they were."""

from __future__ import annotations

import json
import re

import pytest

from gateway.dialects import CHAT, MESSAGES
from gateway.dialects.responses import RESPONSES, RESPONSES_SOCKET
from gateway.errors import (
    ContextWindowExceeded,
    GatewayError,
    UpstreamStatusError,
    context_window_exceeded,
)

CLAUDE_CODE_PATTERN = re.compile(r"^prompt is too long: \d+ tokens > \d+ maximum$")
CLAUDE_CODE_ROOM = re.compile(
    r"input length and `max_tokens` exceed context limit: (\d+) \+ (\d+) > (\d+)"
)
OPENAI_WORDS = (
    "This model's maximum context length is 512 tokens. However, your messages resulted in "
    "724 tokens. Please reduce the length of the messages."
)
# What llama-server b11434 answers (on /v1/chat/completions, /v1/messages and /v1/responses
# alike) to a prompt of 724 tokens with --ctx-size 512, as it sent it.
LLAMA_SERVER = (
    b'{"error":{"code":400,"message":"request (724 tokens) exceeds the available context size '
    b'(512 tokens), try increasing it","type":"exceed_context_size_error",'
    b'"n_prompt_tokens":724,"n_ctx":512}}'
)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, LLAMA_SERVER),
        (  # vLLM (tests/fakes/vllm_protocol.py), the prompt alone over the window
            400,
            b'{"error": {"message": "This model\'s maximum context length is 512 tokens. '
            b"However, your request has 724 input tokens. Please reduce the length of the "
            b'input messages.", "type": "BadRequestError", "param": null, "code": 400}}',
        ),
        (  # OpenAI's own, and any server that copies it
            400,
            json.dumps(
                {
                    "error": {
                        "message": OPENAI_WORDS,
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                }
            ).encode(),
        ),
        (  # a native Anthropic upstream's
            400,
            b'{"type": "error", "error": {"type": "invalid_request_error", '
            b'"message": "prompt is too long: 724 tokens > 512 maximum"}}',
        ),
        (  # llama-server's words without its counts (in an Anthropic body)
            400,
            b'{"type": "error", "error": {"type": "exceed_context_size_error", "message": '
            b'"request (724 tokens) exceeds the available context size (512 tokens), try '
            b'increasing it"}}',
        ),
        (413, LLAMA_SERVER),
    ],
    ids=["llama-server", "vllm", "openai", "anthropic", "words-only", "413"],
)
def test_each_backends_words_become_one_error_with_both_sizes(status: int, body: bytes) -> None:
    error = UpstreamStatusError.from_upstream(status, body)
    assert isinstance(error, ContextWindowExceeded)
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert error.code == "context_length_exceeded"
    assert (error.tokens, error.limit) == (724, 512)
    assert error.message == OPENAI_WORDS
    assert error.anthropic_message == "prompt is too long: 724 tokens > 512 maximum"
    assert error.max_tokens is None


ROOM_WORDS = (
    "This model's maximum context length is 512 tokens. However, you requested 5024 tokens "
    "(24 in the messages, 5000 in the completion). Please reduce the length of the messages "
    "or completion."
)


@pytest.mark.parametrize(
    "body",
    [
        (  # vLLM (tests/fakes/vllm_protocol.py)
            b'{"error": {"message": "\'max_tokens\' or \'max_completion_tokens\' is too large: '
            b"5000. This model's maximum context length is 512 tokens and your request has "
            b'24 input tokens (5000 > 512 - 24).", "type": "BadRequestError", "code": 400}}'
        ),
        (  # OpenAI's older words, which vLLM and llama-cpp-python's server copied
            b'{"object": "error", "message": "This model\'s maximum context length is 512 '
            b"tokens. However, you requested 5024 tokens (24 in the messages, 5000 in the "
            b'completion). Please reduce the length of the messages or completion.", '
            b'"type": "BadRequestError", "code": 400}'
        ),
        (  # Anthropic's
            b'{"type": "error", "error": {"type": "invalid_request_error", "message": "input '
            b"length and `max_tokens` exceed context limit: 24 + 5000 > 512, decrease input "
            b'length or `max_tokens` and try again"}}'
        ),
    ],
    ids=["vllm", "openai-requested", "anthropic"],
)
def test_no_room_for_the_answer_is_told_with_its_max_tokens(body: bytes) -> None:
    """The prompt fits but not with the answer's ``max_tokens`` beside it: Claude Code (its
    32,000 against a 32k vLLM model) asks again with what fits when told in Anthropic's
    words, which carry all three numbers."""
    error = UpstreamStatusError.from_upstream(400, body)
    assert isinstance(error, ContextWindowExceeded)
    assert (error.tokens, error.limit, error.max_tokens) == (24, 512, 5000)
    assert error.code == "context_length_exceeded" and error.message == ROOM_WORDS
    found = CLAUDE_CODE_ROOM.search(error.anthropic_message)
    assert found is not None and found.groups() == ("24", "5000", "512")
    assert error.anthropic_message.endswith(", decrease input length or `max_tokens` and try again")


def test_a_prompt_over_the_window_is_too_long_whatever_room_it_asked() -> None:
    """OpenAI's older words for a prompt that alone is over the window."""
    error = context_window_exceeded(
        "This model's maximum context length is 512 tokens. However, you requested 724 "
        "tokens (700 in the messages, 24 in the completion)."
    )
    assert error is not None and error.anthropic_message == (
        "prompt is too long: 700 tokens > 512 maximum"
    )


def test_llama_cpp_pythons_words() -> None:
    """The ``ValueError`` llama-cpp-python 0.3.36 raises for a prompt over ``n_ctx``."""
    error = context_window_exceeded("Requested tokens (6010) exceed context window of 4096")
    assert error is not None and (error.tokens, error.limit) == (6010, 4096)


def test_sizes_unknown_keep_the_backends_words() -> None:
    """llama-server before it sent its counts, and OpenAI's code with other words."""
    old = UpstreamStatusError.from_upstream(
        400,
        b'{"error":{"code":400,"message":"the request exceeds the available context size, '
        b'try increasing it","type":"exceed_context_size_error"}}',
    )
    coded = UpstreamStatusError.from_upstream(
        400, b'{"error": {"message": "too long", "code": "context_length_exceeded"}}'
    )
    for error, words in [
        (old, "the request exceeds the available context size, try increasing it"),
        (coded, "too long"),
    ]:
        assert isinstance(error, ContextWindowExceeded)
        assert (error.tokens, error.limit, error.message) == (None, None, words)
        assert error.anthropic_message == f"prompt is too long: {words}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": {"message": "messages: Field required", "type": "BadRequestError"}}'),
        (500, LLAMA_SERVER),  # the server's own failure, whatever it says
    ],
    ids=["other-400", "500"],
)
def test_other_refusals_stay_the_upstreams(status: int, body: bytes) -> None:
    error = UpstreamStatusError.from_upstream(status, body)
    assert type(error) is UpstreamStatusError and error.status == status


def test_a_chat_client_gets_openais_error() -> None:
    error = ContextWindowExceeded("x", tokens=724, limit=512)
    assert CHAT.status(error) == 400
    assert json.loads(CHAT.error_json(error)) == {
        "error": {
            "message": OPENAI_WORDS,
            "type": "invalid_request_error",
            "param": None,
            "code": "context_length_exceeded",
        }
    }


def test_a_responses_client_gets_openais_code_whole_streamed_and_on_a_socket() -> None:
    error = ContextWindowExceeded("x", tokens=724, limit=512)
    assert json.loads(RESPONSES.error_json(error))["error"]["code"] == "context_length_exceeded"
    events = [
        json.loads(line[6:])
        for line in RESPONSES.error_event(error).decode().splitlines()
        if line.startswith("data: ")
    ]
    assert [e["type"] for e in events] == ["response.created", "response.failed"]
    assert events[1]["response"]["error"] == {
        "code": "context_length_exceeded",
        "message": OPENAI_WORDS,
    }
    (socket,) = [
        json.loads(line[6:])
        for line in RESPONSES_SOCKET.error_event(error).decode().splitlines()
        if line.startswith("data: ")
    ]
    assert socket["status"] == 400 and socket["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            ContextWindowExceeded("x", tokens=724, limit=512),
            "prompt is too long: 724 tokens > 512 maximum",
        ),
        (ContextWindowExceeded("too long"), "prompt is too long: too long"),
        (
            ContextWindowExceeded("x", tokens=24, limit=512, max_tokens=5000),
            "input length and `max_tokens` exceed context limit: 24 + 5000 > 512, decrease "
            "input length or `max_tokens` and try again",
        ),
    ],
    ids=["prompt", "words", "room"],
)
def test_a_messages_client_gets_anthropics_words(error: GatewayError, message: str) -> None:
    expected = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert MESSAGES.status(error) == 400
    assert json.loads(MESSAGES.error_json(error)) == expected
    assert MESSAGES.error_event(error) == (
        b"event: error\ndata: " + json.dumps(expected).encode() + b"\n\n"
    )
    assert bool(CLAUDE_CODE_PATTERN.match(message)) == message.endswith("maximum")
