"""Responses ``namespace`` tools (:mod:`gateway.dialects.responses_tools`) for a backend that
speaks only chat: each tool of a namespace is a chat function ``<namespace>__<name>``; a call
of one comes back as a ``function_call`` (or ``custom_tool_call``) naming the tool and its
``namespace``, whole and streamed, as the ``openai`` SDK's models read it; a call item with a
``namespace`` in the history is a chat call of the qualified name. Codex 0.171 sends its
sub-agent tools so (``multi_agent_v1``), and was refused before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.dialects.responses_request import validate_responses
from gateway.dialects.responses_tools import chat_tools, qualified, tool_names
from tests.responses_helpers import (
    ITEM_ID,
    answer,
    chat,
    check,
    chunk,
    messages,
    refused,
    request,
    respond,
    run_stream,
    same_as_sdk,
    sdk_accumulated,
    tool_delta,
)

SPAWN = {
    "type": "function",
    "name": "spawn_agent",
    "description": "Spawn a sub-agent.",
    "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
    "strict": False,
}
CLOSE = {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}
NOTE = {"type": "custom", "name": "note", "description": "Free text."}
AGENTS = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [SPAWN, CLOSE, NOTE],
}
SHELL = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
TOOLS = [SHELL, AGENTS]


def functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [tool["function"] for tool in body["tools"]]


def test_a_namespaces_tools_are_chat_functions_of_qualified_names() -> None:
    out = functions(chat(tools=TOOLS))
    assert [f["name"] for f in out] == [
        "exec_command",
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__close_agent",
        "multi_agent_v1__note",
    ]
    spawn, close, note = out[1:]
    assert spawn == {
        "name": "multi_agent_v1__spawn_agent",
        "description": "Tools for spawning and managing sub-agents.\n\nSpawn a sub-agent.",
        "parameters": SPAWN["parameters"],
        "strict": False,
    }
    assert close["description"] == "Tools for spawning and managing sub-agents."
    assert note["parameters"]["required"] == ["input"]  # a custom tool, as outside a namespace
    assert functions(chat(tools=[{**AGENTS, "description": ""}]))[0]["description"] == (
        "Spawn a sub-agent."
    )


def test_tool_choice_and_allowed_tools_still_name_top_level_tools() -> None:
    body = chat(tools=TOOLS, tool_choice={"type": "function", "name": "exec_command"})
    assert body["tool_choice"] == {"type": "function", "function": {"name": "exec_command"}}


def test_two_tools_of_one_chat_name_are_refused() -> None:
    clash = {"type": "function", "name": "multi_agent_v1__close_agent"}
    error = refused(tools=[clash, AGENTS])
    assert error.param == "tools.1.tools.1.name"
    assert "another tool is named 'multi_agent_v1__close_agent'" in error.message


@pytest.mark.parametrize(
    ("namespace", "param", "says"),
    [
        ({"type": "namespace", "tools": [SPAWN]}, "tools.0.name", "field required"),
        ({"type": "namespace", "name": "n"}, "tools.0.tools", "field required"),
        ({"type": "namespace", "name": "n", "tools": {}}, "tools.0.tools", "must be an array"),
        (
            {"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]},
            "tools.0.tools.0.type",
            "a namespace holds function and custom tools only",
        ),
        (
            {"type": "namespace", "name": "n", "tools": [{"type": "function"}]},
            "tools.0.tools.0.name",
            "field required",
        ),
        (
            {"type": "namespace", "name": "n", "description": 1, "tools": []},
            "tools.0.description",
            "must be a string",
        ),
    ],
)
def test_a_malformed_namespace_is_refused_with_its_path(
    namespace: dict[str, Any], param: str, says: str
) -> None:
    from gateway.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as caught:
        validate_responses(request(tools=[namespace]))
    assert caught.value.param == param
    assert says in caught.value.message


def test_a_call_item_with_a_namespace_is_a_call_of_the_qualified_name() -> None:
    out = messages(
        {"type": "message", "role": "user", "content": "go"},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "arguments": '{"task":"t"}',
        },
        {
            "type": "custom_tool_call",
            "call_id": "c2",
            "name": "note",
            "namespace": "multi_agent_v1",
            "input": "hi",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "noted"},
        tools=TOOLS,
    )
    calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in out[1]["tool_calls"]
    ]
    assert calls == [
        ("c1", "multi_agent_v1__spawn_agent", '{"task":"t"}'),
        ("c2", "multi_agent_v1__note", '{"input":"hi"}'),
    ]
    with pytest.raises(Exception, match="namespace: must be a string"):
        validate_responses(
            request(
                input=[
                    {
                        "type": "function_call",
                        "call_id": "c",
                        "name": "f",
                        "namespace": 1,
                        "arguments": "{}",
                    }
                ]
            )
        )


def test_tool_names_read_the_request_back() -> None:
    names = tool_names(request(tools=TOOLS), custom_tools=["extra"])
    assert names.called("multi_agent_v1__spawn_agent") == (
        "function_call",
        "spawn_agent",
        "multi_agent_v1",
    )
    assert names.called("multi_agent_v1__note") == ("custom_tool_call", "note", "multi_agent_v1")
    assert names.called("exec_command") == ("function_call", "exec_command", None)
    assert names.called("extra") == ("custom_tool_call", "extra", None)
    assert names.called("made_up__x") == ("function_call", "made_up__x", None)
    assert qualified(None, "f") == "f" and qualified("ns", "f") == "ns__f"
    assert [t["function"]["name"] for t in chat_tools(TOOLS)][-1] == "multi_agent_v1__note"


def test_a_whole_answer_names_the_tool_and_its_namespace() -> None:
    req = request(tools=TOOLS)
    out = respond(
        answer(
            {
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {
                            "name": "multi_agent_v1__spawn_agent",
                            "arguments": '{"task":"t"}',
                        },
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "multi_agent_v1__note", "arguments": '{"input":"x"}'},
                    },
                    {
                        "id": "call_c",
                        "type": "function",
                        "function": {"name": "exec_command", "arguments": "{}"},
                    },
                ],
            },
            "tool_calls",
        ),
        req,
    )
    items = [dict(item) for item in out["output"]]
    for item in items:
        item.pop("id")
    assert items == [
        {
            "type": "function_call",
            "status": "completed",
            "arguments": '{"task":"t"}',
            "call_id": "call_a",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
        },
        {
            "type": "custom_tool_call",
            "status": "completed",
            "input": "x",
            "call_id": "call_b",
            "name": "note",
            "namespace": "multi_agent_v1",
        },
        {
            "type": "function_call",
            "status": "completed",
            "arguments": "{}",
            "call_id": "call_c",
            "name": "exec_command",
        },
    ]


def test_a_streamed_call_names_the_tool_and_its_namespace_from_its_announcement() -> None:
    req = request(stream=True, tools=TOOLS)
    arguments = json.dumps({"task": "write the tests"})
    chunks = [tool_delta(0, "", id="call_a", name="multi_agent_v1__spawn_agent")]
    chunks += [tool_delta(0, arguments[i : i + 5]) for i in range(0, len(arguments), 5)]
    raw, stream = run_stream([*chunks, chunk({}, "tool_calls")], req)
    events = check(raw, stream.response)
    (added,) = [doc for name, doc in events if name == "response.output_item.added"]
    assert (added["item"]["name"], added["item"]["namespace"]) == ("spawn_agent", "multi_agent_v1")
    item = dict(stream.response["output"][0])
    assert ITEM_ID["fc"].fullmatch(item.pop("id"))
    assert item == {
        "type": "function_call",
        "status": "completed",
        "arguments": arguments,
        "call_id": "call_a",
        "name": "spawn_agent",
        "namespace": "multi_agent_v1",
    }
    theirs = sdk_accumulated(raw, req)
    assert theirs.output[0].namespace == "multi_agent_v1"
    same_as_sdk(stream.response, theirs)
