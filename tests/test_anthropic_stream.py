"""Chat chunk streams to Anthropic Messages streams
(:mod:`gateway.dialects.anthropic_answer`), event by event against Anthropic's grammar, and
parsed and accumulated by the ``anthropic`` SDK's own code."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.anthropic_answer import ChatToMessagesStream
from gateway.dialects.anthropic_request import (
    messages_to_chat,
)
from gateway.dialects.base import Tokens
from gateway.dialects.messages import MessagesFromChat
from gateway.errors import UpstreamProtocolError
from tests.anthropic_helpers import (
    INTERLEAVED,
    ROLE,
    TOOL_ID,
    chunk,
    completion,
    names,
    parse,
    run_stream,
    sdk_final_message,
    to_message,
    tool_delta,
    usage_chunk,
)


def test_a_text_stream() -> None:
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    assert stream.feed(ROLE) == []
    first = [parse(e) for e in stream.feed(chunk({"content": "Hel"}))]
    assert first == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
    ]
    assert [parse(e) for e in stream.feed(chunk({"content": "lo"}))] == [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        )
    ]
    assert stream.feed(chunk({}, "stop")) == []
    assert stream.feed(usage_chunk(9, 2)) == []
    assert (stream.input_tokens, stream.output_tokens) == (9, 2)
    assert [parse(e) for e in stream.finish()] == [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 9, "output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_reasoning_then_text() -> None:
    events = run_stream(
        [
            ROLE,
            chunk({"reasoning_content": "Let me"}),
            chunk({"reasoning_content": " think."}),
            chunk({"content": "Done", "reasoning_content": None}),
            chunk({}, "stop"),
        ]
    )
    assert names(events) == [
        "message_start",
        "start 0 thinking",
        "delta 0 thinking_delta",
        "delta 0 thinking_delta",
        "stop 0",
        "start 1 text",
        "delta 1 text_delta",
        "stop 1",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e[1]["delta"]["thinking"] for e in events[2:4]] == ["Let me", " think."]


TWO_TOOLS = [
    ROLE,
    chunk({"content": "Checking both."}),
    tool_delta(0, "", id="call_a", type="function", name="weather"),
    tool_delta(0, '{"ci'),
    tool_delta(0, 'ty": "Zür'),
    tool_delta(0, 'ich"}'),
    tool_delta(1, '{"tz":', id="call_b", type="function", name="time"),
    tool_delta(1, ' "CET"}'),
    chunk({}, "tool_calls"),
    usage_chunk(30, 20),
]


def test_text_then_two_tool_calls_with_arguments_in_pieces() -> None:
    events = run_stream(TWO_TOOLS)
    assert names(events) == [
        "message_start",
        "start 0 text",
        "delta 0 text_delta",
        "stop 0",
        "start 1 tool_use",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "stop 1",
        "start 2 tool_use",
        "delta 2 input_json_delta",
        "delta 2 input_json_delta",
        "stop 2",
        "message_delta",
        "message_stop",
    ]
    starts = [doc["content_block"] for name, doc in events if name == "content_block_start"]
    assert starts[1:] == [
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {}},
    ]
    pieces: dict[int, list[str]] = {1: [], 2: []}
    for name, doc in events:
        if name == "content_block_delta" and doc["delta"]["type"] == "input_json_delta":
            pieces[doc["index"]].append(doc["delta"]["partial_json"])
    assert pieces == {1: ['{"ci', 'ty": "Zür', 'ich"}'], 2: ['{"tz":', ' "CET"}']}
    assert json.loads("".join(pieces[1])) == {"city": "Zürich"}
    assert json.loads("".join(pieces[2])) == {"tz": "CET"}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 30, "output_tokens": 20},
    }


def test_a_tool_call_without_id_gets_one_and_late_names_wait() -> None:
    """No id: one is made. Arguments before the name: held until the block can start."""
    events = run_stream(
        [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert names(events) == [
        "message_start",
        "start 0 tool_use",
        "delta 0 input_json_delta",
        "delta 0 input_json_delta",
        "stop 0",
        "message_delta",
        "message_stop",
    ]
    block = events[1][1]["content_block"]
    assert TOOL_ID.fullmatch(block["id"]) and block["name"] == "f"
    assert [e[1]["delta"]["partial_json"] for e in events[2:4]] == ['{"a"', ":1}"]


def test_tool_calls_without_an_index_are_told_apart_by_id() -> None:
    events = run_stream(
        [
            chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}),
            chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
        ]
    )
    assert names(events)[1:8] == [
        "start 0 tool_use",
        "delta 0 input_json_delta",
        "stop 0",
        "start 1 tool_use",
        "delta 1 input_json_delta",
        "delta 1 input_json_delta",
        "stop 1",
    ]


# Two tool calls, one argument piece each, as two blocks.


TWO_TOOL_BLOCKS = [
    "start 0 tool_use",
    "delta 0 input_json_delta",
    "stop 0",
    "start 1 tool_use",
    "delta 1 input_json_delta",
    "stop 1",
]


def test_parallel_tool_calls_that_all_say_index_0_are_told_apart_by_id() -> None:
    # As Ollama and SGLang stream parallel calls: every one at index 0, each its own id; a
    # call's later pieces repeat its id, or carry none.
    events = run_stream(
        [
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{}"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "g"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
        ]
    )
    starts = [e[1]["content_block"] for e in events if e[0] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("c1", "f"), ("c2", "g")]
    assert names(events)[1:7] == TWO_TOOL_BLOCKS


# Parallel calls whose pieces take turns (index 0, 1, 0, 1): blocks go out one after


# another, so the answer fails saying why (it said "a tool call without a name").


def test_interleaved_parallel_tool_calls_are_the_upstreams_fault_said_plainly() -> None:
    with pytest.raises(UpstreamProtocolError, match="interleaved parallel tool calls: call 0"):
        run_stream([chunk(delta) for delta in INTERLEAVED])


def test_one_chunk_with_two_tool_calls() -> None:
    events = run_stream(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
                        {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}},
                    ]
                },
                "tool_calls",
            )
        ]
    )
    assert names(events)[1:7] == TWO_TOOL_BLOCKS


def test_a_tool_call_that_never_gets_a_name_is_the_upstreams_fault() -> None:
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    stream.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}))
    with pytest.raises(UpstreamProtocolError, match="without a name"):
        stream.finish()


@pytest.mark.parametrize(
    "chunks",
    [[], [ROLE], [ROLE, chunk({}, "stop"), usage_chunk(4, 0)], [chunk({"content": None}, "stop")]],
)
def test_an_empty_answer_is_a_whole_message(chunks: list[JSONObject]) -> None:
    events = run_stream(chunks)
    assert names(events) == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_a_length_stop() -> None:
    events = run_stream([ROLE, chunk({"content": "trunc"}), chunk({}, "length"), usage_chunk(5, 1)])
    assert names(events)[-3:] == ["stop 0", "message_delta", "message_stop"]
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 1}


def test_cached_prompt_tokens_in_the_stream() -> None:
    usage: JSONObject = {
        "prompt_tokens": 50,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 40},
    }
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.feed({"choices": [], "usage": usage})
    assert (stream.input_tokens, stream.output_tokens, stream.cache_read_input_tokens) == (
        10,
        3,
        40,
    )
    events = [parse(e) for e in stream.finish()]
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 0,
        "cache_read_input_tokens": 40,
    }
    assert events[1][1]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_read_input_tokens": 40,
    }


def test_other_choices_are_ignored() -> None:
    other: JSONObject = {"index": 1, "delta": {"content": "nope"}, "finish_reason": None}
    events = run_stream([{"choices": [other]}, chunk({"content": "yes"})])
    assert [doc["delta"]["text"] for name, doc in events if name == "content_block_delta"] == [
        "yes"
    ]


@pytest.mark.parametrize(
    "error,message",
    [
        (
            {"message": "out of memory", "type": "server_error"},
            "upstream failed mid-stream: out of memory",
        ),
        ("boom", "upstream failed mid-stream: boom"),
    ],
)
def test_an_error_chunk_is_the_upstreams_failure(error: Any, message: str) -> None:
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.feed(chunk({"content": "partial"}))
    with pytest.raises(UpstreamProtocolError, match=f"^{re.escape(message)}$"):
        stream.feed({"error": error})


def test_feeding_after_the_end_is_a_bug() -> None:
    stream = ChatToMessagesStream(message_id="m", model="x")
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(ROLE)
    with pytest.raises(RuntimeError):
        stream.finish()


def test_text_is_utf8_and_a_lone_surrogate_is_escaped() -> None:
    raw: list[bytes] = []
    run_stream([chunk({"content": "Zürich 🙂"})], raw=raw)
    assert "Zürich 🙂".encode() in raw[2]
    stream = ChatToMessagesStream(message_id="m", model="x")
    events = stream.feed(chunk({"content": "half \ud83d"}))
    assert events[-1].endswith(b'"text":"half \\ud83d"}}\n\n')
    assert json.loads(events[-1].split(b"data: ")[1])["delta"]["text"] == "half \ud83d"


def test_a_whole_answer_with_a_lone_surrogate_is_escaped() -> None:
    # An answer cut inside a surrogate pair, as an upstream escapes it, cannot be UTF-8.
    answer = (
        b'{"id":"c","object":"chat.completion","model":"up","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"cut \\ud83d"},"finish_reason":"length"}]}'
    )
    body = MessagesFromChat("msg_1", "m").whole(answer, Tokens())
    assert b'"text":"cut \\ud83d"' in body
    assert json.loads(body)["content"] == [{"type": "text", "text": "cut \ud83d"}]


def test_the_sdk_accumulates_a_tool_stream() -> None:
    raw: list[bytes] = []
    run_stream(TWO_TOOLS, raw=raw)
    message = sdk_final_message(raw)
    assert message.id == "msg_1" and message.model == "claude-x"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Checking both."
    assert (message.content[1].id, message.content[1].name) == ("call_a", "weather")
    assert message.content[1].input == {"city": "Zürich"}
    assert message.content[2].input == {"tz": "CET"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 20)


def test_the_sdk_accumulates_thinking_and_a_stop_sequence() -> None:
    raw: list[bytes] = []
    run_stream(
        [
            chunk({"reasoning_content": "so"}),
            chunk({"content": "A"}),
            chunk({"content": "B"}),
            chunk({}, "stop", stop_reason="END"),
            usage_chunk(3, 3),
        ],
        stop_sequences=("END",),
        raw=raw,
    )
    message = sdk_final_message(raw)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "so" and message.content[1].text == "AB"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_the_sdk_reads_an_empty_stream_and_a_whole_message() -> None:
    raw: list[bytes] = []
    run_stream([], raw=raw)
    assert sdk_final_message(raw).content == []
    import anthropic

    whole = to_message(
        completion(
            {
                "role": "assistant",
                "content": "x",
                "reasoning_content": "r",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"k":[1]}'}}],
            },
            "tool_calls",
            stop_reason=None,
        )
    )
    message = anthropic.types.Message.model_validate(whole)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"k": [1]}


def test_fields_that_are_no_anthropic_field_go_on_to_the_backend() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "cache_prompt": True,
        "grammar": "root ::= x",
        "service_tier": "auto",
    }
    chat = messages_to_chat(body)
    assert chat["cache_prompt"] is True and chat["grammar"] == "root ::= x"
    assert "service_tier" not in chat and chat["max_tokens"] == 5


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '{"a": NaN}'])
def test_streamed_tool_arguments_that_are_not_an_object_end_the_stream_as_an_error(
    arguments: str,
) -> None:
    # As for a whole answer: the block never closes as if its input were good (the SDK's
    # messages.stream() raised a plain ValueError after a clean message_stop).
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments}}
    stream = ChatToMessagesStream(message_id="msg_1", model="claude-x")
    stream.feed(ROLE)
    stream.feed(chunk({"tool_calls": [call]}))
    stream.feed(chunk({}, "tool_calls"))
    with pytest.raises(UpstreamProtocolError, match="'f' with arguments that are not a JSON"):
        stream.finish()


def test_content_as_a_list_of_parts_is_text_streamed_and_whole() -> None:
    # Mistral sends content parts; they were dropped, the answer ending clean and empty.
    parts = [{"type": "text", "text": "PA"}, {"type": "text", "text": "RTS"}]
    events = run_stream([ROLE, chunk({"content": parts}), chunk({}, "stop")])
    deltas = [doc["delta"]["text"] for name, doc in events if name == "content_block_delta"]
    assert deltas == ["PARTS"]
    message = to_message(completion({"role": "assistant", "content": parts}))
    assert message["content"] == [{"type": "text", "text": "PARTS"}]


def test_streamed_arguments_sent_as_an_object_are_the_input() -> None:
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    events = run_stream([ROLE, chunk({"tool_calls": [call]}), chunk({}, "tool_calls")])
    deltas = [doc["delta"] for name, doc in events if name == "content_block_delta"]
    assert deltas == [{"type": "input_json_delta", "partial_json": '{"a":1}'}]


def test_token_counts_no_upstream_could_mean_are_not_taken() -> None:
    events = run_stream([ROLE, chunk({"content": "x"}, "stop"), usage_chunk(10**500, 2)])
    [(_, delta)] = [(n, d) for n, d in events if n == "message_delta"]
    assert delta["usage"]["input_tokens"] == 0 and delta["usage"]["output_tokens"] == 2
