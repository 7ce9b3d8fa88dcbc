"""The README's serve command, run as it is written, answers chat requests from the model the
shipped ``gateway.toml`` serves in-process (gemma 3 270M through ``llamacpp-python``)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from .sse_helpers import event_json

ROOT = Path(__file__).resolve().parents[2]
_SERVING = re.compile(rb"serving on (http://[^\s]+)")


@pytest.mark.llamacpp  # ./dev serve installs and loads the real model
async def test_the_readme_serve_command_answers_chat_requests() -> None:
    # `./dev serve` as in the README; `--bind` (which it passes on) only avoids a port clash.
    process = await trio.lowlevel.open_process(
        [str(ROOT / "dev"), "serve", "--bind", "127.0.0.1:0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    output = bytearray()
    serving = trio.Event()

    async def read_stderr() -> None:
        async for chunk in stderr:
            output.extend(chunk)
            if not serving.is_set() and _SERVING.search(output):
                serving.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stderr)
            with trio.fail_after(600):  # a fresh clone installs the `local` extra first
                await serving.wait()
            match = _SERVING.search(output)
            assert match is not None
            async with httpx.AsyncClient(base_url=match[1].decode(), timeout=120) as client:
                message = {"role": "user", "content": "Hi"}
                answer = await client.post(
                    "/v1/chat/completions",
                    json={"model": "gemma", "messages": [message], "max_tokens": 8},
                )
                async with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={"model": "gemma", "stream": True, "messages": [message], "max_tokens": 8},
                ) as response:
                    streamed = (await response.aread()).split(b"\n\n")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()

    log = output.decode(errors="replace")
    assert answer.status_code == 200, log
    reply = answer.json()["choices"][0]
    assert reply["message"]["role"] == "assistant"
    assert reply["message"]["content"]
    assert answer.json()["usage"]["completion_tokens"] == 8
    assert streamed[-2:] == [b"data: [DONE]", b""]
    chunks = [chunk for event in streamed if (chunk := event_json(event)) is not None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "backend gemma: instance 1 of 1 loaded" in log
    assert code == 0, log
