"""Keepalive policy: how a route keeps its clients' connections from going silent
(:class:`KeepaliveSettings`, ``[routes.X.keepalive]``), and what a backend changes of it for
the requests sent to it (:class:`KeepaliveOverride`, ``[backends.X.keepalive]``).

Settings only — the timing is :mod:`gateway.timers`, the heartbeat task
:mod:`gateway.writer`. The override is a backend setting the gateway owns, like
``timeouts``, so it lives apart from the route's config module, where
:mod:`gateway.abc` can read it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = ["KeepaliveOverride", "KeepaliveSettings"]


def _one_line(value: str) -> str:
    # Printable ASCII only: a client reading lines may also split on U+2028, U+0085, a
    # form feed..., and would take what follows for an event of its own.
    if not all(" " <= c <= "~" for c in value):
        raise ValueError("must be printable ASCII on one line (no CR, LF or other breaks)")
    return value


# One definition of each field's values, for the route's policy and a backend's override.
Interval = Annotated[
    float, Field(ge=0, description="seconds of silence before a heartbeat; 0 = off")
]
Comment = Annotated[
    str, AfterValidator(_one_line), Field(description="text of the SSE comment line")
]
NonStream = Literal["off", "whitespace"]
MessagesForm = Annotated[
    Literal["ping", "comment"],
    Field(description="heartbeat form on /v1/messages: Anthropic's `event: ping`, or a comment"),
]
ResponsesForm = Annotated[
    Literal["comment", "event"],
    Field(
        description="heartbeat form on /v1/responses: SSE comments, or Responses `keepalive` "
        "events (after response.created)"
    ),
]


class KeepaliveSettings(BaseModel):
    """How a route keeps its clients' connections from going silent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: Interval = 15.0
    comment: Comment = "keepalive"
    early_headers: bool = True
    non_stream: NonStream = "off"
    messages: MessagesForm = "ping"
    responses: ResponsesForm = "comment"

    def overridden(self, override: KeepaliveOverride | None) -> KeepaliveSettings:
        """This policy with the fields ``override`` sets replaced (validated already: the
        same field types)."""
        if override is None:
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

    interval: Interval | None = None
    comment: Comment | None = None
    early_headers: bool | None = None
    non_stream: NonStream | None = None
    messages: MessagesForm | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_responses_form(cls, data: object) -> object:
        if isinstance(data, dict) and "responses" in data:
            raise ValueError(
                "`responses` is set per route only ([routes.X.keepalive]): its keepalive "
                "events are numbered into the stream the route plans for every backend"
            )
        return data
