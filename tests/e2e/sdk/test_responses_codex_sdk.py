"""Codex's requests through the gateway with the official ``openai`` Python SDK
(``AsyncOpenAI``): the request Codex sends (``tests/fixtures/codex_request.json``) on both
kinds of backend, a Codex tool turn (the freeform ``apply_patch`` beside a function) and a
turn of its ``namespace`` tools through a chat-only backend, and the requests that follow
them as the upstream sees them. Codex itself runs in ``tests/e2e/test_coding_agents.py``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .clients import SDK_ASYNCGEN_WARNINGS
from .scripts import chat_tool_answer, chat_tool_calls, tokens_text
from .test_responses_sdk import (
    CODEX,
    INTERVAL,
    MODES,
    PREFILL,
    READ_TIMEOUT,
    client,
    upstream_for,
)

pytestmark = SDK_ASYNCGEN_WARNINGS


def codex_body() -> dict[str, Any]:
    """Codex's request for route ``m``, without ``stream`` (each test says how it asks)."""
    body: dict[str, Any] = json.loads(CODEX.read_text())
    body["model"] = "m"
    del body["stream"]
    return body


@pytest.mark.parametrize("mode", MODES)
async def test_a_codex_request(start_gateway, fake: FakeOpenAI, mode: str) -> None:
    """The request Codex CLI sends (stateless, the whole history in ``input``, encrypted
    reasoning items, function and custom tools, ``include``, ``prompt_cache_key``,
    ``parallel_tool_calls``), streamed as Codex streams it, with a silent prefill."""
    gw = await start_gateway(backend=MODES[mode], keepalive={"interval": INTERVAL})
    body = codex_body()
    sdk = client(gw.url + "/v1", read=READ_TIMEOUT)
    try:
        with trio.fail_after(20):
            events = []
            async with await sdk.responses.create(
                stream=True, **body, extra_body={"fake": {"tokens": 3, "prefill": PREFILL}}
            ) as stream:
                async for event in stream:
                    events.append(event)
    finally:
        await sdk.close()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == tokens_text(3)
    upstream = fake.requests[-1]
    if mode == "native":
        assert upstream.path == "/v1/responses"
        sent = {k: v for k, v in upstream.body.items() if k != "fake"}
        assert sent == {**body, "model": "upstream-m", "stream": True}
    else:
        assert upstream.path == "/v1/chat/completions"
        names = [t["function"]["name"] for t in upstream.body["tools"]]
        assert names == [t["name"] for t in body["tools"]]
        assert upstream.body["parallel_tool_calls"] is True
        assert upstream.body["messages"][0]["role"] in ("system", "developer")
    # store: false kept nothing
    sdk = client(gw.url + "/v1")
    try:
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve(events[-1].response.id)
    finally:
        await sdk.close()


async def test_a_codex_tool_turn_translated(start_gateway, fake: FakeOpenAI) -> None:
    """Codex's request through a chat-only backend whose model calls the freeform
    ``apply_patch`` tool and the ``shell`` function at once: the SDK gets a
    ``custom_tool_call`` with the patch as its raw input and a ``function_call``; Codex's
    next request (stateless: the calls and their outputs appended to ``input``) reaches the
    upstream as the assistant's tool calls and one tool message per call."""
    gw = await start_gateway()
    body = codex_body()
    patch = "*** Begin Patch\n*** Update File: a.py\n@@\n-x = 1\n+x = 2\n*** End Patch\n"
    shell = json.dumps({"command": ["pytest", "-q"], "workdir": "/repo"})
    chunks = chat_tool_calls(
        [("call_p", "apply_patch", json.dumps({"input": patch})), ("call_s", "shell", shell)]
    )
    sdk = client(gw.url + "/v1")
    try:
        with trio.fail_after(20):
            async with await sdk.responses.create(
                stream=True, **body, extra_body={"fake": {"chunks": chunks}}
            ) as stream:
                events = [event async for event in stream]
            done = events[-1].response
            outputs = [o.to_dict(mode="json") for o in done.output]
            follow_up = {
                **body,
                "input": [
                    *body["input"],
                    *outputs,
                    {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"},
                    {"type": "function_call_output", "call_id": "call_s", "output": "1 passed"},
                ],
            }
            async with await sdk.responses.create(
                stream=True, **follow_up, extra_body={"fake": {"tokens": 2, "case": "next"}}
            ) as stream:
                answer = [event async for event in stream][-1].response
    finally:
        await sdk.close()

    assert events[-1].type == "response.completed"
    got = [
        (o.type, o.call_id, o.name, o.input if o.type == "custom_tool_call" else o.arguments)
        for o in done.output
    ]
    assert got == [
        ("custom_tool_call", "call_p", "apply_patch", patch),
        ("function_call", "call_s", "shell", shell),
    ]
    assert answer.output_text == tokens_text(2)
    messages = upstream_for(fake, "next").body["messages"]
    assistant, *tools = messages[-3:]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in assistant["tool_calls"]
    ] == [("call_p", "apply_patch", {"input": patch}), ("call_s", "shell", json.loads(shell))]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in tools] == [
        ("tool", "call_p", "Done!"),
        ("tool", "call_s", "1 passed"),
    ]


async def test_a_namespaced_tool_turn_translated(start_gateway, fake: FakeOpenAI) -> None:
    """Codex 0.171 groups its sub-agent tools in a ``namespace`` tool (``multi_agent_v1``);
    through a chat-only backend each is the chat function ``multi_agent_v1__<name>``. The
    model's call comes back to the SDK as a ``function_call`` naming the tool and its
    ``namespace``, whole and streamed; sent back in the next request, it reaches the
    upstream as the call of the qualified name (it was a 400 before: "the namespace tool
    cannot be translated")."""
    gw = await start_gateway()
    body = codex_body()
    body["tools"].append(
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Tools for spawning and managing sub-agents.",
            "tools": [
                {
                    "type": "function",
                    "name": "spawn_agent",
                    "description": "Spawn a sub-agent for a well-scoped task.",
                    "strict": False,
                    "parameters": {
                        "type": "object",
                        "properties": {"message": {"type": "string"}},
                        "required": ["message"],
                        "additionalProperties": False,
                    },
                },
                {"type": "function", "name": "close_agent", "parameters": {"type": "object"}},
            ],
        }
    )
    spawn = json.dumps({"message": "write the tests"})
    calls = [("call_a", "multi_agent_v1__spawn_agent", spawn)]
    chunks, whole_body = chat_tool_calls(calls), chat_tool_answer(calls)
    sdk = client(gw.url + "/v1")
    try:
        with trio.fail_after(20):
            async with await sdk.responses.create(
                stream=True, **body, extra_body={"fake": {"chunks": chunks}}
            ) as stream:
                events = [event async for event in stream]
            whole = await sdk.responses.create(**body, extra_body={"fake": {"body": whole_body}})
            (call,) = events[-1].response.output
            follow_up = {
                **body,
                "input": [
                    *body["input"],
                    call.to_dict(mode="json"),
                    {"type": "function_call_output", "call_id": "call_a", "output": "agent 7"},
                ],
            }
            answer = await sdk.responses.create(
                **follow_up, extra_body={"fake": {"tokens": 2, "case": "next"}}
            )
    finally:
        await sdk.close()

    first = fake.requests[0].body
    assert [t["function"]["name"] for t in first["tools"]][-2:] == [
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__close_agent",
    ]
    added = [e.item for e in events if e.type == "response.output_item.added"]
    for item in [*added, call]:
        assert (item.type, item.name, item.namespace) == (
            "function_call",
            "spawn_agent",
            "multi_agent_v1",
        )
    assert call.arguments == spawn and call.call_id == "call_a"
    (whole_call,) = whole.output
    assert (whole_call.name, whole_call.namespace, whole_call.arguments) == (
        "spawn_agent",
        "multi_agent_v1",
        spawn,
    )
    assert answer.output_text == tokens_text(2)
    assistant, tool = upstream_for(fake, "next").body["messages"][-2:]
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_a", "multi_agent_v1__spawn_agent")
    ]
    assert (tool["role"], tool["tool_call_id"], tool["content"]) == ("tool", "call_a", "agent 7")
