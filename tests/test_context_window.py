"""A prompt over the model's context window, sans I/O: each backend's own words for it become
one error (:class:`ContextWindowExceeded`, with the prompt's size and the window's when the
backend gave them), and each dialect words that error as its clients act on it — OpenAI's
code ``context_length_exceeded`` (Codex: "ran out of room in the model's context window")
and Anthropic's ``prompt is too long: N tokens > M maximum`` (Claude Code compacts the
conversation by the difference; the pattern below is the one Claude Code 2.1.332 matches).
Other refusals stay what they were."""

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
        (  # vLLM's older words: the prompt and the completion together
            400,
            b'{"object": "error", "message": "This model\'s maximum context length is 512 '
            b"tokens. However, you requested 724 tokens (700 in the messages, 24 in the "
            b'completion). Please reduce the length of the messages or completion.", '
            b'"type": "BadRequestError", "code": 400}',
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
    ids=["llama-server", "vllm", "vllm-requested", "openai", "anthropic", "words-only", "413"],
)
def test_each_backends_words_become_one_error_with_both_sizes(status: int, body: bytes) -> None:
    error = UpstreamStatusError.from_upstream(status, body)
    assert isinstance(error, ContextWindowExceeded)
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert error.code == "context_length_exceeded"
    assert (error.tokens, error.limit) == (724, 512)
    assert error.message == OPENAI_WORDS
    assert error.prompt_too_long == "prompt is too long: 724 tokens > 512 maximum"


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
        assert error.prompt_too_long == f"prompt is too long: {words}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (  # vLLM: max_tokens larger than the window leaves (the prompt fits)
            400,
            b'{"error": {"message": "\'max_tokens\' or \'max_completion_tokens\' is too large: '
            b"5000. This model's maximum context length is 512 tokens and your request has "
            b'24 input tokens (5000 > 512 - 24).", "type": "BadRequestError", "code": 400}}',
        ),
        (400, b'{"error": {"message": "messages: Field required", "type": "BadRequestError"}}'),
        (500, LLAMA_SERVER),  # the server's own failure, whatever it says
    ],
    ids=["max-tokens", "other-400", "500"],
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
    ],
)
def test_a_messages_client_gets_anthropics_words(error: GatewayError, message: str) -> None:
    expected = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert MESSAGES.status(error) == 400
    assert json.loads(MESSAGES.error_json(error)) == expected
    assert MESSAGES.error_event(error) == (
        b"event: error\ndata: " + json.dumps(expected).encode() + b"\n\n"
    )
    assert bool(CLAUDE_CODE_PATTERN.match(message)) == (message[-7:] == "maximum")
