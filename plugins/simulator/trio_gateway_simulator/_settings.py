"""The ``[backends.<id>]`` table of a ``simulator`` backend."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.abc import BackendSettings

Fault = Literal["none", "refuse", "status", "error_mid_stream", "stall", "truncate"]


class Gap(BaseModel):
    """A pause of ``seconds`` before token number ``at`` (0-based) of every answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: int = Field(ge=0)
    seconds: float = Field(gt=0)


class SimulatorSettings(BackendSettings):
    """What every answer of this backend looks like, and when its bytes come.

    An answer has ``max_tokens`` tokens (fewer if the request's ``max_tokens`` or
    ``max_completion_tokens`` says so), words taken in turn from ``text``. The timeline:
    ``time_to_headers`` before the response starts (a connect or queue delay), ``prefill``
    before the first token, then ``tokens_per_second``, with ``gaps`` on top.

    ``fault`` breaks answers on purpose: ``refuse`` — the upstream cannot be reached;
    ``status`` — a ``fault_status`` error before any byte; ``error_mid_stream`` — the
    connection is lost after ``fault_after`` tokens; ``stall`` — silence after
    ``fault_after`` tokens, forever; ``truncate`` — the stream ends after ``fault_after``
    tokens without ``[DONE]``.
    """

    type: Literal["simulator"] = "simulator"
    time_to_headers: float = Field(0.0, ge=0, description="seconds before the response starts")
    prefill: float = Field(0.0, ge=0, description="seconds from the response to the first token")
    tokens_per_second: float = Field(50.0, gt=0)
    max_tokens: int = Field(16, ge=1, description="tokens per answer, unless a request asks fewer")
    text: str = Field(
        "The quick brown fox jumps over the lazy dog.",
        min_length=1,
        description="words the answers are made of, in turn",
    )
    gaps: tuple[Gap, ...] = ()
    fault: Fault = "none"
    fault_after: int = Field(2, ge=0, description="tokens sent before a mid-stream fault")
    fault_status: int = Field(503, ge=400, le=599)

    @field_validator("text")
    @classmethod
    def _words(cls, value: str) -> str:
        if not value.split():
            raise ValueError("must hold at least one word")
        return value
