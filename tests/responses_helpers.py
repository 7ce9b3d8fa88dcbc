"""What the OpenAI Responses ↔ Chat Completions translation tests share: request and
history builders, chat answers and chunks, and the checks of a translated stream against
the Responses grammar and the ``openai`` SDK's own models and accumulator."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gateway.abc import JSONObject
from gateway.dialects.responses_answer import chat_to_response
from gateway.dialects.responses_request import (
    responses_to_chat,
    validate_responses,
)
from gateway.dialects.responses_stream import ChatToResponsesStream
from gateway.errors import InvalidRequest

CODEX = Path(__file__).parent / "fixtures" / "codex_request.json"


PNG_URL = "data:image/png;base64,iVBORw0KGgo="


ITEM_ID = {p: re.compile(rf"{p}_[0-9a-f]{{48}}") for p in ("msg", "fc", "fco", "rs", "ctc", "ctco")}


CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def request(**fields: Any) -> JSONObject:
    doc: JSONObject = {"model": "gpt-x", "input": "hi"}
    doc.update(fields)
    return doc


def chat(history: Iterable[Any] = (), **fields: Any) -> dict[str, Any]:
    """The chat body for ``request(**fields)``, which must pass validation first."""
    doc = request(**fields)
    validate_responses(doc)
    before = copy.deepcopy(doc)
    earlier = copy.deepcopy(list(history))
    out = responses_to_chat(doc, earlier)
    assert doc == before, "translation must not change the body it reads"
    assert earlier == list(history), "nor the history"
    return out


def messages(*items: Any, **fields: Any) -> list[Any]:
    out = chat(input=list(items), **fields)["messages"]
    assert isinstance(out, list)
    return out


def refused(*, history: Iterable[Any] = (), **fields: Any) -> InvalidRequest:
    doc = request(**fields)
    validate_responses(doc)
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat(doc, list(history))
    return caught.value


def user(*parts: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def text(value: str, kind: str = "input_text") -> dict[str, Any]:
    return {"type": kind, "text": value}


def said(value: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [text(value, "output_text")]}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def output(call_id: str, value: Any) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": value}


def chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


REASONING = {"type": "reasoning", "summary": [], "content": None, "encrypted_content": "gAAA"}


PATCH = '*** Begin Patch\n*** Add File: a.txt\n+héllo "x"\n*** End Patch\n'


def answer(
    message: dict[str, Any], finish_reason: str | None = "stop", usage: Any = None
) -> JSONObject:
    doc: JSONObject = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        doc["usage"] = usage
    return doc


def respond(whole: JSONObject, req: JSONObject | None = None, **fields: Any) -> dict[str, Any]:
    out = chat_to_response(
        whole,
        response_id="resp_1",
        model="public",
        request=req or request(),
        created_at=1700000000,
        **fields,
    )
    sdk_response(out)
    return out


def sdk_response(doc: JSONObject) -> Any:
    """``doc`` validated with the SDK's ``Response`` model (skipped without the SDK)."""
    import openai.types.responses as responses

    return responses.Response.model_validate(doc)


Event = tuple[str, dict[str, Any]]


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **fields: Any) -> JSONObject:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice], **fields}


def usage_chunk(prompt: int, completion: int, **details: Any) -> JSONObject:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **details,
    }
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_delta(index: int, arguments: str | None = None, **fields: Any) -> JSONObject:
    function: dict[str, Any] = {}
    if "name" in fields:
        function["name"] = fields.pop("name")
    if arguments is not None:
        function["arguments"] = arguments
    return chunk({"tool_calls": [{"index": index, **fields, "function": function}]})


def parse(raw: bytes) -> Event:
    text = raw.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1, text
    head, data = text[:-2].split("\n")
    assert head.startswith("event: ") and data.startswith("data: ")
    doc = json.loads(data[len("data: ") :])
    assert doc["type"] == head[len("event: ") :]
    assert data == "data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return doc["type"], doc


def new_stream(req: JSONObject | None = None, **fields: Any) -> ChatToResponsesStream:
    return ChatToResponsesStream(
        response_id="resp_1",
        model="public",
        request=req or request(stream=True),
        created_at=1700000000,
        **fields,
    )


def run_stream(
    chunks: list[JSONObject], req: JSONObject | None = None, **fields: Any
) -> tuple[list[bytes], ChatToResponsesStream]:
    stream = new_stream(req, **fields)
    raw = stream.start()
    for doc in chunks:
        raw += stream.feed(doc)
    raw += stream.finish()
    return raw, stream


def check(raw: list[bytes], final: JSONObject) -> list[Event]:
    """The events of ``raw``, checked against the Responses grammar: sequence numbers from 0
    up by one, an opening of ``response.created`` and ``response.in_progress`` whose response
    is in progress and empty, items added and done one at a time with matching ids and
    indexes, deltas that add up to each ``.done``, and a terminal event whose response is
    ``final`` and whose output holds the items as they were done."""
    events = [parse(event) for event in raw]
    assert [doc["sequence_number"] for _, doc in events] == list(range(len(events)))
    assert [name for name, _ in events[:2]] == ["response.created", "response.in_progress"]
    for _, doc in events[:2]:
        assert doc["response"]["status"] == "in_progress" and doc["response"]["output"] == []
        assert doc["response"]["id"] == final["id"]
    item: dict[str, Any] | None = None
    part = False
    pieces: list[str] = []
    done: list[Any] = []
    for name, doc in events[2:-1]:
        if name == "keepalive":
            assert set(doc) == {"type", "sequence_number"}
            continue
        if name == "response.output_item.added":
            assert item is None and doc["output_index"] == len(done)
            item, pieces = doc["item"], []
            continue
        assert item is not None, name
        if name != "response.output_item.done":
            assert (doc["item_id"], doc["output_index"]) == (item["id"], len(done)), name
        if name == "response.content_part.added":
            assert (
                not part and item["type"] in ("message", "reasoning") and doc["content_index"] == 0
            )
            part = True
        elif name in ("response.output_text.delta", "response.reasoning_text.delta"):
            assert part and (name == "response.output_text.delta") == (item["type"] == "message")
            pieces.append(doc["delta"])
        elif name in ("response.output_text.done", "response.reasoning_text.done"):
            assert part and doc["text"] == "".join(pieces)
        elif name == "response.content_part.done":
            assert part and doc["part"]["text"] == "".join(pieces)
            part = False
        elif name == "response.function_call_arguments.delta":
            assert item["type"] == "function_call"
            pieces.append(doc["delta"])
        elif name == "response.function_call_arguments.done":
            assert doc["arguments"] == "".join(pieces)
        elif name == "response.custom_tool_call_input.delta":
            assert item["type"] == "custom_tool_call"
            pieces.append(doc["delta"])
        elif name == "response.custom_tool_call_input.done":
            assert doc["input"] == "".join(pieces)
        elif name == "response.output_item.done":
            assert not part and doc["output_index"] == len(done)
            assert (doc["item"]["id"], doc["item"]["type"]) == (item["id"], item["type"])
            done.append(doc["item"])
            item = None
        else:
            raise AssertionError(f"unexpected event {name}")
    name, last = events[-1]
    assert last["response"] == final
    if name == "response.failed":
        assert last["response"]["output"][: len(done)] == done
    else:
        assert item is None and name in ("response.completed", "response.incomplete")
        assert last["response"]["output"] == done
    return events


def sdk_accumulated(raw: list[bytes], req: JSONObject) -> Any:
    """``raw`` validated event by event with the SDK's ``ResponseStreamEvent`` and
    accumulated by the SDK's ``ResponseStreamState``; its completed response (or ``None``)."""
    import openai.types.responses as responses
    import pydantic
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState

    adapter = pydantic.TypeAdapter(responses.ResponseStreamEvent)
    state: Any = ResponseStreamState(input_tools=req.get("tools") or [], text_format=omit)
    for event in raw:
        _, doc = parse(event)
        if doc["type"] == "keepalive":  # no SDK model; the SDK's stream skips what it does not know
            continue
        state.handle_event(adapter.validate_python(doc))
    return state._completed_response


def same_as_sdk(ours: JSONObject, theirs: Any) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: plain(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")
            }
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    assert plain(theirs.to_dict()) == sdk_response(ours).to_dict()


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


# Two tools, one of each kind chat can carry.
TOOLS = [
    {"type": "function", "name": "f", "parameters": {"type": "object"}},
    {"type": "custom", "name": "p"},
]
