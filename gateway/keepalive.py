"""Keepalive policy: how a route keeps its clients' connections from going silent
(:class:`KeepaliveSettings`, ``[routes.X.keepalive]``), and what a backend changes of it for
the requests sent to it (:class:`KeepaliveOverride`, ``[backends.X.keepalive]``).

Settings only — the timing is :mod:`gateway.timers`, the heartbeat task
:mod:`gateway.writer`. The override is a backend setting the gateway owns, like
``timeouts``, so it lives apart from the route's config module, where
:mod:`gateway.abc` can read it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["KeepaliveOverride", "KeepaliveSettings"]


def _one_line(cls: type, value: str | None) -> str | None:
    # Printable ASCII only: a client reading lines may also split on U+2028, U+0085, a
    # form feed..., and would take what follows for an event of its own.
    if value is not None and not all(" " <= c <= "~" for c in value):
        raise ValueError("must be printable ASCII on one line (no CR, LF or other breaks)")
    return value


NonStream = Literal["off", "whitespace"]
MessagesForm = Literal["ping", "comment"]
ResponsesForm = Literal["comment", "event"]


class KeepaliveSettings(BaseModel):
    """How a route keeps its clients' connections from going silent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: float = Field(
        15.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds of silence before a heartbeat; 0 = off",
    )
    comment: str = Field("keepalive", description="text of the SSE comment line")
    early_headers: bool = True
    non_stream: NonStream = "off"
    messages: MessagesForm = Field(
        "ping",
        description="heartbeat form on /v1/messages: Anthropic's `event: ping`, or a comment",
    )
    responses: ResponsesForm = Field(
        "comment",
        description="heartbeat form on /v1/responses: SSE comments, or Responses `keepalive` "
        "events (after response.created)",
    )

    _one_line = field_validator("comment")(_one_line)

    def overridden(self, override: KeepaliveOverride | None) -> KeepaliveSettings:
        """This policy with the fields ``override`` sets replaced (validated already: the
        same field types)."""
        if override is None or not override.model_fields_set:  # (every request asks)
            return self
        changes = override.model_dump(exclude_none=True)
        return self.model_copy(update=changes) if changes else self


class KeepaliveOverride(BaseModel):
    """``[backends.X.keepalive]``: the fields of the route's keepalive a backend changes
    for the requests it is sent first (a failover keeps the policy a request began with:
    its status may be out already). Unset fields are the route's.

    ``responses`` is not here: Responses ``keepalive`` events are numbered into the stream
    the route plans for every target alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="the route's `interval`, replaced"
    )
    comment: str | None = Field(None, description="the route's `comment`, replaced")
    early_headers: bool | None = Field(None, description="the route's `early_headers`, replaced")
    non_stream: NonStream | None = Field(None, description="the route's `non_stream`, replaced")
    messages: MessagesForm | None = Field(None, description="the route's `messages`, replaced")

    _one_line = field_validator("comment")(_one_line)

    @model_validator(mode="before")
    @classmethod
    def _no_responses_form(cls, data: object) -> object:
        if isinstance(data, dict) and "responses" in data:
            raise ValueError(
                "`responses` is set per route only ([routes.X.keepalive]): its keepalive "
                "events are numbered into the stream the route plans for every backend"
            )
        return data
