"""The coding agents themselves through the gateway: OpenAI's Codex CLI and Anthropic's
Claude Code, pinned in ``tests/agents/package.json`` and run unmodified, each in a home of
its own, in its non-interactive mode (``codex exec``, ``claude -p``).

Behind the gateway is a backend that speaks only chat (the fake upstream), so Codex's
Responses requests and Claude Code's Messages requests are translated both ways. Each agent
runs one task: the model (the fake, scripted by what it is sent) reasons, then calls the
agent's shell tool, the agent runs the command and sends its output back, and the model's
answer to that is what the agent prints. Teams are on: Codex sends the team key as a bearer token, Claude
Code as one too (``ANTHROPIC_AUTH_TOKEN``) or as ``x-api-key`` (``ANTHROPIC_API_KEY``).
Codex's request goes as it comes, but for OpenAI's hosted web search, which the README says
to turn off: its sub-agent tools are a ``namespace`` tool, which was a 400 before.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import build_config
from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.conftest import serve_config
from tests.e2e.sdk.scripts import chat_tool_answer, chat_tool_calls, tokens_text
from tests.fakes.vllm import FakeVLLM
from tests.npm_lock import npm_installed

AGENTS_DIR = Path(__file__).resolve().parents[1] / "agents"
KEY = new_key()
COMMAND = "echo gateway-$((6*7))"  # its output, gateway-42, is not in the command
LIMIT = 90  # seconds an agent may take for the whole task
INTERVAL = 0.5  # the route's heartbeat interval (SSE comments, pings on a WebSocket)
PREFILL = 2.0  # seconds the model is silent before its tool call


@pytest.fixture(scope="session")
def coding_agents() -> dict[str, list[str]]:
    """The command lines of ``codex`` and ``claude``, with the locked npm packages
    installed (their native binaries come in per-platform packages; npm runs no install
    script of theirs, so ``claude`` is its platform package's binary)."""
    node = npm_installed(AGENTS_DIR, "the coding agent tests", "--ignore-scripts")
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
    cpu = arch.get(platform.machine().lower(), platform.machine())
    modules = AGENTS_DIR / "node_modules"
    return {
        "codex": [node, str(modules / "@openai" / "codex" / "bin" / "codex.js")],
        "claude": [str(modules / "@anthropic-ai" / f"claude-code-linux-{cpu}" / "claude")],
    }


THOUGHT = "Let me run it. "


def answer_with_a_shell_call(tool: str, arguments: dict[str, Any], prefill: float = 0.0) -> Any:
    """The fake's script for each request: a call of ``tool``, reasoned about first, while
    no tool has answered (after ``prefill`` seconds of silence), then text (``tok0 tok1 ``);
    text too for a request without tools (an agent's side requests: titles, summaries)."""

    def script(body: dict[str, Any]) -> dict[str, Any]:
        if tool_results_in(body) or not body.get("tools"):
            return {"tokens": 2}
        calls = [("call_shell_1", tool, json.dumps(arguments))]
        if body.get("stream"):
            return {"chunks": chat_tool_calls(calls, reasoning=THOUGHT), "prefill": prefill}
        return {"body": chat_tool_answer(calls), "prefill": prefill}

    return script


async def serve_for_agents(
    nursery: trio.Nursery,
    upstream: FakeOpenAI | dict[str, Any],
    tmp_path: Path,
    *,
    upstream_model: str | None = None,
) -> str:
    """A gateway with teams on (key :data:`KEY`) whose route takes every model name an
    agent sends, in front of the fake upstream as a chat-only backend (or of ``upstream``,
    a backend table, serving ``upstream_model``); returns its URL."""
    table = upstream if isinstance(upstream, dict) else {"type": "openai", "url": upstream.url}
    model = {"upstream_model": upstream_model} if upstream_model else {}
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"upstream": table},
            "routes": {
                "local": {
                    "model": "local",
                    "match": ["claude-*", "gpt-*"],
                    "backend": "upstream",
                    "keepalive": {"interval": INTERVAL},
                    **model,
                }
            },
            "teams": {"agents": {"keys": [hash_key(KEY)]}},
            "usage": {"database": str(tmp_path / "usage.sqlite")},
            "responses": {"database": str(tmp_path / "responses.sqlite")},
        },
        environ={},
    )
    served = await serve_config(nursery, config)
    return served.url


def codex_config(url: str, *, websocket: bool) -> str:
    """Codex's ``config.toml`` for the gateway at ``url``, as the README gives it."""
    return "\n".join(
        [
            'model = "gpt-local"',
            'model_provider = "gateway"',
            'web_search = "disabled"',
            "",
            "[model_providers.gateway]",
            'name = "trio-gateway"',
            f'base_url = "{url}/v1"',
            'env_key = "GATEWAY_API_KEY"',
            'wire_api = "responses"',
            f"supports_websockets = {str(websocket).lower()}",
            "",
        ]
    )


def clean_env(home: Path, **more: str) -> dict[str, str]:
    """This process's environment without any OpenAI or Anthropic setting, in ``home``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "CODEX_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "work").mkdir(exist_ok=True)
    return {**env, "HOME": str(home), **more}


async def run_agent(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run an agent in ``cwd`` (made beforehand) with nothing on its stdin."""
    with trio.fail_after(LIMIT):
        done = await trio.run_process(
            argv, env=env, cwd=cwd, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
        )
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


TASK = f"Run `{COMMAND}` and tell me what it printed."


async def run_codex(
    coding_agents: dict[str, list[str]],
    tmp_path: Path,
    url: str,
    *,
    websocket: bool = False,
    config: str = "",
) -> tuple[int, str, str]:
    """``codex exec`` on :data:`TASK`, in a home of its own, with :func:`codex_config` for
    the gateway at ``url`` (``config``'s top-level lines first) and the team key."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(config + codex_config(url, websocket=websocket))
    env = clean_env(tmp_path / "home", CODEX_HOME=str(home), GATEWAY_API_KEY=KEY)
    argv = [
        *coding_agents["codex"],
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        TASK,
    ]
    return await run_agent(argv, env, tmp_path / "home" / "work")


async def run_claude(
    coding_agents: dict[str, list[str]],
    tmp_path: Path,
    url: str,
    *,
    key_variable: str = "ANTHROPIC_AUTH_TOKEN",
    task: str = TASK,
    tools: tuple[str, ...] = ("Bash",),
) -> tuple[int, str, str]:
    """``claude -p task`` with JSON output, in a home of its own, at the gateway at ``url``
    with the team key in ``key_variable``, allowed ``tools`` without asking, and nothing
    sent anywhere else (telemetry, error reports, updates)."""
    env = clean_env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=url,
        **{key_variable: KEY},
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    allowed = ["--allowedTools", ",".join(tools)] if tools else []
    argv = [
        *coding_agents["claude"],
        "-p",
        task,
        "--model",
        "claude-sonnet-4-5",
        *allowed,
        "--output-format",
        "json",
    ]
    return await run_agent(argv, env, tmp_path / "home" / "work")


def tool_results_in(body: dict[str, Any]) -> bool:
    return any(m.get("role") == "tool" for m in body.get("messages", []))


def tool_results(fake: FakeOpenAI) -> list[str]:
    """The contents of the tool messages the upstream was sent, in order."""
    return [
        str(m.get("content"))
        for r in fake.requests
        for m in r.body.get("messages", [])
        if m.get("role") == "tool"
    ]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_codex_runs_a_tool_turn_through_a_chat_backend(
    nursery: trio.Nursery,
    fake: FakeOpenAI,
    tmp_path: Path,
    coding_agents: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    transport: str,
) -> None:
    """``codex exec`` over HTTP (SSE), and over the Responses WebSocket its provider
    setting ``supports_websockets`` turns on: through a silent prefill (heartbeats: SSE
    comments, or pings Codex answers), the model calls ``exec_command``, Codex runs it and
    sends the output back, and prints the model's answer."""
    caplog.set_level("INFO", logger="gateway.access")
    fake.script_for = answer_with_a_shell_call("exec_command", {"cmd": COMMAND}, PREFILL)
    url = await serve_for_agents(nursery, fake, tmp_path)
    code, out, err = await run_codex(
        coding_agents, tmp_path, url, websocket=transport == "websocket"
    )

    assert code == 0, f"codex exited {code}\n{out}\n{err}"
    assert out.strip().endswith(tokens_text(2).strip()), out
    first = fake.requests[0].body
    names = [tool["function"]["name"] for tool in first["tools"]]
    assert "exec_command" in names
    assert "multi_agent_v1__spawn_agent" in names  # its namespace tool, translated
    assert first["stream"] is True and first["messages"][0]["role"] == "system"
    results = tool_results(fake)
    assert results and "gateway-42" in results[0], results
    lines = access_lines(caplog)
    turns = [line for line in lines if line.get("endpoint") == "responses" and line.get("stream")]
    assert max((t["heartbeats"] for t in turns), default=0) >= 2, turns  # through the prefill
    sockets = [line for line in lines if line.get("status") == 101]
    if transport == "http":
        assert sockets == []
    else:
        await wait_until(
            lambda: any(x.get("status") == 101 for x in access_lines(caplog)), within=5
        )
        sockets = [line for line in access_lines(caplog) if line.get("status") == 101]
        assert sum(socket["turns"] for socket in sockets) >= 2, sockets
        assert {turn["connection"] for turn in turns} <= {s["connection"] for s in sockets}


@pytest.mark.parametrize("key_variable", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
async def test_claude_code_runs_a_tool_turn_through_a_chat_backend(
    nursery: trio.Nursery,
    fake: FakeOpenAI,
    tmp_path: Path,
    coding_agents: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    key_variable: str,
) -> None:
    """``claude -p``, the team key in the variable the README names (sent as a bearer
    token) or in ``ANTHROPIC_API_KEY`` (sent as ``x-api-key``): through a silent prefill
    (heartbeats: Anthropic's ``event: ping``), the model calls ``Bash``, Claude Code runs
    it and sends the output back as a tool result, and prints the model's answer."""
    caplog.set_level("INFO", logger="gateway.access")
    bash = {"command": COMMAND, "description": "Print the answer"}
    fake.script_for = answer_with_a_shell_call("Bash", bash, PREFILL)
    url = await serve_for_agents(nursery, fake, tmp_path)
    code, out, err = await run_claude(coding_agents, tmp_path, url, key_variable=key_variable)

    assert code == 0, f"claude exited {code}\n{out}\n{err}"
    result = json.loads(out)
    assert result["is_error"] is False, result
    assert result["result"] == tokens_text(2), result
    assert result["num_turns"] >= 2, result
    first = next(r.body for r in fake.requests if r.body.get("tools"))
    assert "Bash" in [tool["function"]["name"] for tool in first["tools"]]
    results = tool_results(fake)
    assert results and "gateway-42" in results[0], results
    # The model's reasoning reached Claude Code as a thinking block, and came back with the
    # call it led to, as that assistant turn's reasoning_content.
    answered = next(r.body["messages"] for r in fake.requests if tool_results_in(r.body))
    (caller,) = [m for m in answered if m["role"] == "assistant" and m.get("tool_calls")]
    assert caller["reasoning_content"] == THOUGHT
    turns = [line for line in access_lines(caplog) if line.get("endpoint") == "messages"]
    assert max((t["heartbeats"] for t in turns), default=0) >= 2, turns  # through the prefill


# llama-server's refusal of a prompt over its context (b11434's body, tests/test_context_window.py).
OVERFLOW: dict[str, Any] = {
    "status": 400,
    "message": "request (6010 tokens) exceeds the available context size (4096 tokens), "
    "try increasing it",
    "type": "exceed_context_size_error",
    "code": 400,
    "error_fields": {"n_prompt_tokens": 6010, "n_ctx": 4096},
}


def overflow_on_the_tool_turn(tool: str, arguments: dict[str, Any]) -> Any:
    """:func:`answer_with_a_shell_call`'s script, but the first request carrying the tool's
    output is refused as over the model's context."""
    shell = answer_with_a_shell_call(tool, arguments)
    refused: list[dict[str, Any]] = []

    def script(body: dict[str, Any]) -> dict[str, Any]:
        if tool_results_in(body) and not refused:
            refused.append(body)
            return OVERFLOW
        return dict(shell(body))

    return script


def size(body: dict[str, Any]) -> int:
    return len(json.dumps(body.get("messages", [])))


async def test_claude_code_compacts_when_told_the_prompt_is_too_long(
    nursery: trio.Nursery,
    fake: FakeOpenAI,
    tmp_path: Path,
    coding_agents: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backend refuses the turn carrying the tool's output as over its context: Claude
    Code, told ``prompt is too long: 6010 tokens > 4096 maximum``, compacts the conversation
    — its summary request cut by the difference, which only the two numbers give it
    (llama-server's own words made it send more, not less) — and carries the task through."""
    caplog.set_level("INFO", logger="gateway.access")
    bash = {"command": COMMAND, "description": "Print the answer"}
    fake.script_for = overflow_on_the_tool_turn("Bash", bash)
    url = await serve_for_agents(nursery, fake, tmp_path)
    code, out, err = await run_claude(coding_agents, tmp_path, url)

    assert code == 0, f"claude exited {code}\n{out}\n{err}"
    result = json.loads(out)
    assert (result["is_error"], result["result"]) == (False, tokens_text(2)), json.dumps(result)
    statuses = [line["status"] for line in access_lines(caplog) if line["endpoint"] == "messages"]
    assert statuses.count(400) == 1, statuses
    bodies = [r.body for r in fake.requests]
    refused = next(i for i, body in enumerate(bodies) if tool_results_in(body))
    assert len(bodies) > refused + 1, "nothing sent after the refusal"
    assert size(bodies[refused + 1]) < size(bodies[refused]), [size(b) for b in bodies]


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_codex_says_it_ran_out_of_context(
    nursery: trio.Nursery,
    fake: FakeOpenAI,
    tmp_path: Path,
    coding_agents: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    transport: str,
) -> None:
    """The same refusal, to Codex over HTTP and over the Responses WebSocket: OpenAI's
    ``context_length_exceeded``, which Codex tells its user in its own words (llama-server's
    got its JSON printed as it was)."""
    caplog.set_level("INFO", logger="gateway.access")
    fake.script_for = overflow_on_the_tool_turn("exec_command", {"cmd": COMMAND})
    url = await serve_for_agents(nursery, fake, tmp_path)
    code, out, err = await run_codex(
        coding_agents, tmp_path, url, websocket=transport == "websocket"
    )

    assert code != 0, out
    assert "Codex ran out of room in the model's context window" in out + err, f"{out}\n{err}"
    assert "exceed_context_size_error" not in out + err
    assert tool_results(fake), "the refused turn is the one with the command's output"
    turns = [line for line in access_lines(caplog) if line.get("endpoint") == "responses"]
    assert [t["status"] for t in turns if t["status"] != 200] == [400], turns
    if transport == "websocket":  # the turns went over the socket
        await wait_until(lambda: any(x["status"] == 101 for x in access_lines(caplog)), within=5)


async def test_claude_code_fits_its_answer_into_a_vllm_models_context(
    nursery: trio.Nursery,
    tmp_path: Path,
    coding_agents: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Claude Code asks room for a 32,000-token answer whatever the model, and vLLM refuses
    a request whose prompt and ``max_tokens`` together exceed the model's context (here a
    32k one, as many local models are served): told so in Anthropic's words with the three
    numbers, Claude Code asks again with a ``max_tokens`` that fits, and finishes. (Told in
    vLLM's words it took the refusal for a prompt too long, and failed.)"""
    caplog.set_level("INFO", logger="gateway.access")
    vllm = FakeVLLM(max_model_len=32_768, tokens=2)
    await nursery.start(vllm.serve)
    # The fake is vLLM's OpenAI server: Messages reach it as chat.
    table = {"type": "vllm", "url": vllm.url, "native_endpoints": ["chat/completions"]}
    url = await serve_for_agents(nursery, table, tmp_path, upstream_model="fake-model")
    code, out, err = await run_claude(coding_agents, tmp_path, url, task="Say hello.", tools=())

    assert code == 0, f"claude exited {code}\n{out}\n{err}"
    result = json.loads(out)
    assert (result["is_error"], result["terminal_reason"]) == (False, "completed"), result
    assert result["result"] == "Hello,", result  # the fake vLLM's two tokens
    asked = [r.body["max_tokens"] for r in vllm.generation_requests() if r.body.get("tools")]
    refused = [r for r in vllm.generation_requests() if r.status == 400]
    assert asked[0] == 32_000 and refused, asked
    prompt = json.loads(refused[0].sent)["error"]["message"]
    assert "is too large: 32000" in prompt, prompt
    assert asked[-1] < 32_768 - 1000 and asked[-1] < asked[0], asked
    statuses = [line["status"] for line in access_lines(caplog) if line["endpoint"] == "messages"]
    assert statuses.count(400) == len(refused) and statuses[-1] == 200, statuses


async def test_codex_compacts_before_the_context_window_it_is_given(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path, coding_agents: dict[str, list[str]]
) -> None:
    """With the backend's window in its config (``model_context_window``, as the README
    says), Codex compacts before the model runs out, on the prompt size the gateway reports
    it: the chat backend's ``prompt_tokens`` (19,000 of 20,000) as the Responses usage of the
    turn that called the tool. Its compaction request is an ordinary ``/v1/responses`` turn,
    and the task goes on from the summary."""
    asked: list[str] = []

    def script(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(str(body["messages"][-1]["content"]))
        if len(asked) > 1 or not body.get("tools"):
            return {"tokens": 2}
        calls = [("call_shell_1", "exec_command", json.dumps({"cmd": COMMAND}))]
        usage = {"prompt_tokens": 19_000, "completion_tokens": 10, "total_tokens": 19_010}
        return {"chunks": chat_tool_calls(calls, usage=usage)}

    fake.script_for = script
    url = await serve_for_agents(nursery, fake, tmp_path)
    code, out, err = await run_codex(
        coding_agents, tmp_path, url, config="model_context_window = 20000\n"
    )

    assert code == 0, f"codex exited {code}\n{out}\n{err}"
    assert len(asked) >= 3, asked
    # The turn after the tool call is the compaction request, not the tool's output.
    assert "CONTEXT CHECKPOINT COMPACTION" in asked[1], asked
    assert "gateway-42" not in asked[1]
    assert out.strip().endswith(tokens_text(2).strip()), out
