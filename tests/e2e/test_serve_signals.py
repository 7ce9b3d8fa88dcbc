"""One process (``workers = 1``, no parent) and the signals it gets at awkward moments: a
SIGHUP while its backends start or during the drain, where the default action used to end
it; and a backend that cannot start. The gateway runs as its command runs it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from gateway.testing.fake_openai import FakeOpenAI
from tests.gateway_process import run_gateway_command

from .test_workers_signals import _CONFIG_READ, _config, _logged, _open_gate, long_chat


async def test_a_sighup_while_the_backends_start_is_ignored(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with (
        _open_gate() as gate,
        run_gateway_command(_config(tmp_path, fake, gate, workers=1)) as gateway,
    ):
        await _logged(gateway, _CONFIG_READ)  # the gate's backend is starting
        gateway.process.send_signal(signal.SIGHUP)
        gate.open()
        url = await gateway.url(within=30)
        async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            )
        assert response.status_code == 200
        assert gateway.process.returncode is None


async def test_a_sighup_during_the_drain_is_ignored_and_the_stream_ends_whole(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    config = _config(tmp_path, fake, workers=1, graceful_timeout=20)
    async with run_gateway_command(config) as gateway:
        url = await gateway.url(within=60)
        body = long_chat(tokens=20, pace=0.05)
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            chunks = response.aiter_text()
            first = await chunks.__anext__()
            gateway.process.send_signal(signal.SIGTERM)
            await _logged(gateway, "received SIGTERM, shutting down", within=5)
            gateway.process.send_signal(signal.SIGHUP)
            text = first + "".join([part async for part in chunks])
        with trio.fail_after(15):
            assert await gateway.process.wait() == 0, gateway.log
    assert "data: [DONE]" in text
    assert "reloading" not in gateway.log


async def test_a_backend_that_cannot_start_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[server]\nbind = "127.0.0.1:0"\n'
        '[backends.local]\ntype = "llamacpp"\nmodel = "/nonexistent/model.gguf"\n'
        f'binary = "{tmp_path / "no-llama-server"}"\n'
        '[routes.chat]\nmodel = "m"\nbackend = "local"\n'
    )
    async with run_gateway_command(config) as gateway:
        with trio.fail_after(30):
            assert await gateway.process.wait() == 2
    assert f"config error in {config}:\nbackends.local." in gateway.log
    assert "Traceback" not in gateway.log
