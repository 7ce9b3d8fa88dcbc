"""Chat chunk streams to Responses streams (:mod:`gateway.dialects.responses_stream`):
event by event against the Responses grammar and sequence numbers, and through the
``openai`` SDK's stream accumulator and ``client.responses.stream()``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.errors import UpstreamProtocolError
from tests.anthropic_helpers import INTERLEAVED
from tests.responses_helpers import (
    CALL_ID,
    ITEM_ID,
    PATCH,
    answer,
    check,
    chunk,
    names,
    new_stream,
    request,
    respond,
    run_stream,
    same_as_sdk,
    sdk_accumulated,
    sdk_response,
    tool_delta,
    usage_chunk,
)


def test_a_text_stream() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage_chunk(7, 2),
    ]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2][1]["item"]
    assert ITEM_ID["msg"].fullmatch(added["id"])
    assert added == {
        "id": added["id"],
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    assert events[3][1]["part"] == {"type": "output_text", "annotations": [], "text": ""}
    assert events[4][1] == {
        "type": "response.output_text.delta",
        "item_id": added["id"],
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 4,
    }
    final = stream.response
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 9
    assert final["output"] == [
        {
            "id": added["id"],
            "type": "message",
            "status": "completed",
            "content": [{"type": "output_text", "annotations": [], "text": "Hello"}],
            "role": "assistant",
        }
    ]
    whole = respond(
        answer({"content": "Hello"}, usage={"prompt_tokens": 7, "completion_tokens": 2}),
        request(stream=True),
    )
    assert final | {"output": []} == whole | {"output": []}
    same_as_sdk(final, sdk_accumulated(raw, request(stream=True)))


def test_reasoning_then_text() -> None:
    chunks = [
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
    ]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events)[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[3][1]["part"] == {"type": "reasoning_text", "text": ""}
    reasoning, message = stream.response["output"]
    assert ITEM_ID["rs"].fullmatch(reasoning["id"])
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert message["content"][0]["text"] == "42"
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


def test_text_then_calls_with_arguments_in_pieces() -> None:
    req = request(
        stream=True,
        tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
    )
    chunks = [
        chunk({"content": "Checking."}),
        tool_delta(0, "", id="call_a", type="function", name="weather"),
        tool_delta(0, '{"city":'),
        tool_delta(0, ' "Zürich"}'),
        tool_delta(1, '{"city":"Bern"}', id="call_b", type="function", name="weather"),
        chunk({}, "tool_calls"),
        usage_chunk(20, 10),
    ]
    raw, stream = run_stream(chunks, req)
    events = check(raw, stream.response)
    deltas = [
        doc["delta"] for name, doc in events if name == "response.function_call_arguments.delta"
    ]
    assert deltas == ['{"city":', ' "Zürich"}', '{"city":"Bern"}']
    _, first, second = stream.response["output"]
    assert (first["call_id"], first["arguments"], first["status"]) == (
        "call_a",
        '{"city": "Zürich"}',
        "completed",
    )
    assert (second["call_id"], second["arguments"]) == ("call_b", '{"city":"Bern"}')
    assert ITEM_ID["fc"].fullmatch(first["id"]) and first["id"] != second["id"]
    same_as_sdk(stream.response, sdk_accumulated(raw, req))


def test_a_custom_tool_streams_its_unwrapped_input() -> None:
    req = request(stream=True, tools=[{"type": "custom", "name": "apply_patch"}])
    arguments = json.dumps({"input": PATCH + "é😀"}, ensure_ascii=True)
    chunks = [tool_delta(0, "", id="call_p", name="apply_patch")]
    chunks += [tool_delta(0, arguments[i : i + 3]) for i in range(0, len(arguments), 3)]
    raw, stream = run_stream([*chunks, chunk({}, "tool_calls")], req)
    events = check(raw, stream.response)
    item = dict(stream.response["output"][0])
    assert ITEM_ID["ctc"].fullmatch(item.pop("id"))
    assert item == {
        "type": "custom_tool_call",
        "status": "completed",
        "input": PATCH + "é😀",
        "call_id": "call_p",
        "name": "apply_patch",
    }
    deltas = [
        doc["delta"] for name, doc in events if name == "response.custom_tool_call_input.delta"
    ]
    assert len(deltas) > 10 and all(deltas)
    same_as_sdk(stream.response, sdk_accumulated(raw, req))


HARD = 'a\\u00e9\\ud83d\\ude00 \\"q\\" \\\\ \\n\\t\\ud83d\\ude80 end'


@pytest.mark.parametrize("cut", range(len('{"input": "') + len(HARD) + 2))
def test_a_custom_input_split_at_every_point(cut: int) -> None:
    arguments = '{"input": "' + HARD + '"}'
    expected = json.loads(arguments)["input"]
    stream = new_stream(request(stream=True, tools=[{"type": "custom", "name": "p"}]))
    raw = stream.start()
    raw += stream.feed(tool_delta(0, arguments[:cut], id="c", name="p"))
    raw += stream.feed(tool_delta(0, arguments[cut:]))
    raw += stream.finish()
    check(raw, stream.response)
    assert stream.response["output"][0]["input"] == expected


def test_a_custom_call_of_another_shape_comes_whole_at_its_end() -> None:
    req = request(stream=True, tools=[{"type": "custom", "name": "p"}])
    raw, stream = run_stream(
        [tool_delta(0, '{"patch":', id="c", name="p"), tool_delta(0, ' "x"}')], req
    )
    events = check(raw, stream.response)
    assert [doc["delta"] for name, doc in events if name.endswith("input.delta")] == ["x"]
    assert stream.response["output"][0]["input"] == "x"


def test_a_call_without_id_gets_one_and_a_late_name_waits() -> None:
    chunks = [tool_delta(0, '{"a":'), tool_delta(0, "1}", name="f"), tool_delta(0, "")]
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    (item,) = stream.response["output"]
    assert CALL_ID.fullmatch(item["call_id"]) and item["arguments"] == '{"a":1}'
    assert [doc["delta"] for name, doc in events if name.endswith("arguments.delta")] == [
        '{"a":',
        "1}",
    ]


def test_calls_without_an_index_are_told_apart_by_id() -> None:
    chunks = [
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
    ]
    raw, stream = run_stream(chunks)
    check(raw, stream.response)
    assert [(i["call_id"], i["arguments"]) for i in stream.response["output"]] == [
        ("c1", "{}"),
        ("c2", "{}"),
    ]


def test_parallel_calls_that_all_say_index_0_are_told_apart_by_id() -> None:
    # As Ollama and SGLang stream parallel calls: every one at index 0, each its own id; a
    # call's later pieces repeat its id, or carry none.
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "g"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
    ]
    raw, stream = run_stream(chunks)
    check(raw, stream.response)
    assert [(i["call_id"], i["name"], i["arguments"]) for i in stream.response["output"]] == [
        ("c1", "f", "{}"),
        ("c2", "g", '{"a":1}'),
    ]


def test_one_chunk_with_two_calls_and_the_legacy_function_call() -> None:
    two = chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}},
                {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}},
            ]
        }
    )
    raw, stream = run_stream([two])
    check(raw, stream.response)
    assert [i["name"] for i in stream.response["output"]] == ["f", "g"]
    raw, stream = run_stream([chunk({"function_call": {"name": "old", "arguments": "{}"}})])
    check(raw, stream.response)
    assert stream.response["output"][0]["name"] == "old"


def test_interleaved_parallel_calls_are_the_upstreams_fault_said_plainly() -> None:
    # Index 0, 1, 0: items go out one after another, so the answer fails saying why.
    with pytest.raises(UpstreamProtocolError, match="interleaved parallel tool calls: call 0"):
        run_stream([chunk(delta) for delta in INTERLEAVED])


def test_a_call_that_never_gets_a_name_is_the_upstreams_fault() -> None:
    stream = new_stream()
    stream.start()
    stream.feed(tool_delta(0, "{}", id="c"))
    with pytest.raises(UpstreamProtocolError, match="without a name"):
        stream.finish()


@pytest.mark.parametrize("chunks", [[], [chunk({"role": "assistant"}), chunk({}, "stop")]])
def test_an_empty_answer_has_no_output(chunks: list[JSONObject]) -> None:
    raw, stream = run_stream(chunks)
    events = check(raw, stream.response)
    assert names(events) == ["response.created", "response.in_progress", "response.completed"]
    assert stream.response["output"] == [] and stream.response["usage"] is None
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


@pytest.mark.parametrize(
    "finish_reason,reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete(finish_reason: str, reason: str) -> None:
    raw, stream = run_stream(
        [
            chunk({"reasoning_content": "r"}),
            chunk({"content": "cut"}),
            chunk({}, finish_reason),
            usage_chunk(5, 16),
        ],
        request(stream=True, max_output_tokens=16),
    )
    events = check(raw, stream.response)
    assert names(events)[-1] == "response.incomplete"
    final = stream.response
    assert (final["status"], final["incomplete_details"], final["max_output_tokens"]) == (
        "incomplete",
        {"reason": reason},
        16,
    )
    assert final["output"][1]["status"] == "incomplete"
    sdk_accumulated(raw, request(stream=True))
    sdk_response(final)


def test_cached_and_reasoning_tokens_in_the_stream() -> None:
    details = {
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    _, stream = run_stream([chunk({"content": "x"}, "stop"), usage_chunk(10, 2, **details)])
    assert stream.response["usage"]["input_tokens_details"]["cached_tokens"] == 4
    assert stream.response["usage"]["output_tokens_details"]["reasoning_tokens"] == 1


def test_other_choices_are_ignored() -> None:
    other = {
        "id": "x",
        "choices": [{"index": 1, "delta": {"content": "no"}, "finish_reason": "length"}],
    }
    _, stream = run_stream([chunk({"content": "yes"}), other, chunk({}, "stop")])
    assert sdk_response(stream.response).output_text == "yes"
    assert stream.response["status"] == "completed"


@pytest.mark.parametrize(
    "error,message", [({"message": "boom", "code": 500}, "boom"), ("plain", "plain")]
)
def test_an_error_chunk_is_the_upstreams_failure(error: Any, message: str) -> None:
    stream = new_stream()
    stream.start()
    with pytest.raises(UpstreamProtocolError, match=message):
        stream.feed({"error": error})


def test_keepalive_events_are_numbered_into_the_stream() -> None:
    stream = new_stream()
    with pytest.raises(RuntimeError):
        stream.keepalive()
    raw = stream.start()
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "a"}))
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "b"}, "stop"))
    raw += stream.finish()
    events = check(raw, stream.response)
    assert names(events)[2] == "keepalive" and events[2][1] == {
        "type": "keepalive",
        "sequence_number": 2,
    }
    with pytest.raises(RuntimeError):
        stream.keepalive()
    same_as_sdk(stream.response, sdk_accumulated(raw, request(stream=True)))


def test_failed_ends_the_stream_with_what_was_done() -> None:
    stream = new_stream()
    raw = stream.start()
    raw += stream.feed(chunk({"content": "partial"}))
    raw += stream.feed(tool_delta(0, "{", id="c", name="f"))
    raw += stream.failed("server_error", "upstream reset the connection")
    events = check(raw, stream.response)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "upstream reset the connection"}
    message, call_item = failed["output"]
    assert message["status"] == "completed" and message["content"][0]["text"] == "partial"
    assert (call_item["status"], call_item["arguments"]) == ("incomplete", "{")
    assert stream.response is failed or stream.response == failed
    sdk_accumulated(raw, request(stream=True))
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "more"}))
    with pytest.raises(RuntimeError):
        stream.failed("server_error", "again")


def test_calls_out_of_order_are_bugs() -> None:
    stream = new_stream()
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "x"}))
    with pytest.raises(RuntimeError):
        stream.finish()
    stream.start()
    with pytest.raises(RuntimeError):
        stream.start()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "x"}))
    with pytest.raises(RuntimeError):
        stream.finish()


def test_text_is_utf8_and_a_lone_surrogate_is_escaped() -> None:
    stream = new_stream()
    stream.start()
    *_, delta = stream.feed(chunk({"content": "é"}))
    assert b'"delta":"\xc3\xa9"' in delta
    (lone,) = stream.feed(chunk({"content": "\ud83d"}))
    assert b'"delta":"\\ud83d"' in lone


def test_the_sdks_stream_helper_reads_a_translated_stream() -> None:
    """``client.responses.stream()`` of the ``openai`` SDK, its bytes served by an in-memory
    transport: keepalive events between the others, a function call and text, and
    ``get_final_response()`` equal to the translator's final response."""
    import httpx
    import openai

    tools = [
        {
            "type": "function",
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        }
    ]
    req = request(stream=True, tools=tools)
    stream = new_stream(req)
    raw = stream.start()
    raw.append(stream.keepalive())
    raw += stream.feed(chunk({"content": "Looking."}))
    raw.append(stream.keepalive())
    raw += stream.feed(tool_delta(0, '{"city":"Bern"}', id="call_1", name="weather"))
    raw += stream.feed(chunk({}, "tool_calls"))
    raw += stream.feed(usage_chunk(3, 4))
    raw += stream.finish()
    check(raw, stream.response)

    def serve(_: Any) -> Any:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(raw)
        )

    with httpx.Client(transport=httpx.MockTransport(serve)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", http_client=http)
        with client.responses.stream(model="gpt-x", input="hi", tools=tools) as events:
            kinds = [event.type for event in events]
            final = events.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    same_as_sdk(stream.response, final)
    assert final.output_text == "Looking."
    assert final.output[1].parsed_arguments == {"city": "Bern"}
