"""The Responses dialect's passthrough pipe, sans I/O: what it holds back, where it ends,
how keepalive events are numbered into the stream and how a failure after the commit reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.dialects.base import Fed, Tokens
from gateway.dialects.responses import RESPONSES, ResponsesPassthrough
from gateway.errors import UpstreamConnectError, UpstreamStatusError
from gateway.sse import SSEFramer


def event(doc: dict[str, Any]) -> bytes:
    return f"event: {doc['type']}\ndata: {json.dumps(doc)}\n\n".encode()


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
DONE = {
    **RESPONSE,
    "status": "completed",
    "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
}
ITEM = {
    "type": "message",
    "id": "msg_1",
    "role": "assistant",
    "content": [],
    "status": "in_progress",
}
STREAM = [
    event({"type": "response.created", "response": RESPONSE, "sequence_number": 0}),
    event({"type": "response.in_progress", "response": RESPONSE, "sequence_number": 1}),
    event(
        {
            "type": "response.output_item.added",
            "item": ITEM,
            "output_index": 0,
            "sequence_number": 2,
        }
    ),
    event(
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
            "sequence_number": 3,
        }
    ),
    event({"type": "response.completed", "response": DONE, "sequence_number": 4}),
]


def numbers(raw: bytes) -> list[int]:
    return [
        json.loads(line[6:])["sequence_number"]
        for line in raw.split(b"\n")
        if line.startswith(b"data: ")
    ]


def test_passthrough_holds_the_opening_and_ends_at_completed() -> None:
    pipe = ResponsesPassthrough().stream()
    fed = [pipe.feed(piece) for piece in STREAM]
    assert fed[0] == fed[1] == Fed()
    assert fed[2] == Fed(b"".join(STREAM[:3]), data=True)
    assert b"".join(f.out for f in fed) == b"".join(STREAM)
    assert fed[-1].end and pipe.result == DONE
    assert pipe.tokens == Tokens(prompt=7, completion=2)


def test_comment_mode_never_makes_its_own_heartbeat() -> None:
    pipe = ResponsesPassthrough(keepalive_events=False).stream()
    pipe.feed(b"".join(STREAM[:3]))
    assert pipe.heartbeat() is None


def test_keepalive_events_come_after_created_and_renumber_what_follows() -> None:
    pipe = ResponsesPassthrough(keepalive_events=True).stream()
    pipe.feed(STREAM[0])
    assert pipe.heartbeat() is None  # response.created is not out: a comment, not an event
    out = pipe.feed(b"".join(STREAM[1:3])).out
    beats = [pipe.heartbeat(), pipe.heartbeat()]
    rest = pipe.feed(b"".join(STREAM[3:])).out
    assert all(b is not None and b'"type":"keepalive"' in b for b in beats)
    sent = out + b"".join(b for b in beats if b) + rest
    assert numbers(sent) == [0, 1, 2, 3, 4, 5, 6]  # strictly increasing, upstream's moved up


def test_failure_after_the_commit_is_response_failed() -> None:
    pipe = ResponsesPassthrough().stream()
    assert pipe.error_event(UpstreamConnectError("gone")) is None  # nothing out yet
    pipe.feed(b"".join(STREAM[:4]))
    failed = pipe.error_event(UpstreamConnectError("upstream went away"))
    assert failed is not None
    doc = json.loads(failed.split(b"data: ")[1])
    assert doc["type"] == "response.failed" and doc["sequence_number"] == 4
    assert doc["response"]["status"] == "failed"
    assert doc["response"]["error"] == {
        "code": "server_error",
        "message": "upstream went away",
    }


def test_upstream_failure_before_output_fails_the_attempt() -> None:
    failed = {**RESPONSE, "status": "failed", "error": {"code": "x", "message": "boom"}}
    pipe = ResponsesPassthrough().stream()
    with pytest.raises(UpstreamStatusError, match="boom"):
        pipe.feed(
            STREAM[0] + event({"type": "response.failed", "response": failed, "sequence_number": 1})
        )
    with pytest.raises(UpstreamStatusError, match="nope"):
        ResponsesPassthrough().stream().feed(
            event({"type": "error", "code": "c", "message": "nope", "sequence_number": 0})
        )


def test_dialect_fallback_error_event_and_whole_answers() -> None:
    # Nothing of the response out nor known: one of the gateway's, created and failed.
    created, failed = [
        json.loads(e.data or "")
        for e in SSEFramer().feed(RESPONSES.error_event(UpstreamConnectError("x"), "m"))
    ]
    assert (created["type"], created["sequence_number"]) == ("response.created", 0)
    assert (failed["type"], failed["sequence_number"]) == ("response.failed", 1)
    assert created["response"]["status"] == "in_progress" and created["response"]["model"] == "m"
    assert failed["response"] == {
        **created["response"],
        "status": "failed",
        "error": {"code": "server_error", "message": "x"},
    }
    shape, tokens = ResponsesPassthrough(), Tokens()
    body = json.dumps(DONE).encode()
    assert shape.whole(body, tokens) == body and shape.result == DONE
    assert tokens == Tokens(prompt=7, completion=2)


def test_no_keepalive_events_into_a_stream_that_numbers_nothing() -> None:
    """llama-server's events carry no sequence_number: a keepalive event could not take a
    place among them, so comments keep such a stream alive."""
    unnumbered = [
        event(
            {
                k: v
                for k, v in json.loads(piece.split(b"data: ")[1]).items()
                if k != "sequence_number"
            }
        )
        for piece in STREAM
    ]
    pipe = ResponsesPassthrough(keepalive_events=True).stream()
    pipe.feed(b"".join(unnumbered[:3]))
    assert pipe.heartbeat() is None


def test_output_events_are_relayed_by_name_unread() -> None:
    """The passthrough reads only the events it acts on (opening, end, errors): an output
    event goes on by its ``event:`` name, and a failure after it follows its number."""
    pipe = ResponsesPassthrough().stream()
    odd = b"event: response.output_text.delta\ndata: {not json, relayed as sent}\n\n"
    delta = json.loads(STREAM[3].split(b"data: ")[1])
    fed = pipe.feed(b"".join(STREAM[:4]) + odd + event({**delta, "sequence_number": 5}))
    assert odd in fed.out
    failed = pipe.error_event(UpstreamConnectError("gone"))
    assert failed is not None and json.loads(failed.split(b"data: ")[1])["sequence_number"] == 6


def chat_data(doc: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(doc)}\n\n".encode()


def test_a_failure_in_the_same_piece_as_content_keeps_that_contents_events() -> None:
    # One upstream read: the role, two deltas, an error object. The deltas' events go out
    # before the failure, so the numbers the client sees run on without a gap and the
    # failed response lists only items the client heard of.
    from gateway.dialects.responses import ResponsesFromChat
    from gateway.errors import UpstreamProtocolError

    pipe = ResponsesFromChat(response_id="resp_1", model="m", request={}, created_at=0).stream()
    delta = {"choices": [{"index": 0, "delta": {"content": "a"}}]}
    piece = b"".join(
        [
            chat_data({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            chat_data(delta),
            chat_data({"choices": [{"index": 0, "delta": {"content": "b"}}]}),
            chat_data({"error": {"message": "boom"}}),
        ]
    )
    fed = pipe.feed(piece)
    assert isinstance(fed.failure, UpstreamProtocolError) and "boom" in fed.failure.message
    assert fed.data and not fed.end
    kinds = [json.loads(line[6:])["type"] for line in fed.out.split(b"\n") if line[:6] == b"data: "]
    assert kinds[-2:] == ["response.output_text.delta", "response.output_text.delta"]
    failed = pipe.error_event(fed.failure)
    assert failed is not None and b"response.failed" in failed
    seen = numbers(fed.out + failed)
    assert seen == list(range(len(seen)))  # 0, 1, ... : it jumped from 1 to 6
    [output] = json.loads(failed.split(b"data: ", 1)[1])["response"]["output"]
    assert output["content"][0]["text"] == "ab"  # what the client was sent
