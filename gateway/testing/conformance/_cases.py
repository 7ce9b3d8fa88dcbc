"""What the suite asks of an upstream: the cases, and the author's scripts for them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ...abc import Endpoint, JSONObject, JSONValue

CaseName = Literal[
    "answer",
    "error_status",
    "connect_error",
    "error_mid_stream",
    "stall",
    "gap",
    "hang_before_headers",
    "hang_after_headers",
    "endless",
]
Phase = Literal["awaiting_headers", "prefill", "streaming", "abandoned"]
JSONLike: TypeAlias = (
    "str | int | float | bool | Sequence[JSONLike] | Mapping[str, JSONLike] | None"
)
"""A JSON (or TOML) value as an author writes it: read-only containers, so a
``dict[str, int]`` or a tuple fits where a value is asked for."""
SettingsTable: TypeAlias = Mapping[str, JSONLike]
"""A ``[backends.<id>]`` table as the parsed TOML holds it (``type`` left out where the
suite adds it), or a patch to merge into one."""

BACKEND_ID = "conformance"
ROUTE_MODEL = "conformance"

# Which case puts an exchange in each phase of a cancellation.
CANCEL_CASES: dict[Phase, CaseName] = {
    "awaiting_headers": "hang_before_headers",
    "prefill": "hang_after_headers",
    "streaming": "endless",
    "abandoned": "endless",
}
PATHS: dict[Endpoint, str] = {
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


@dataclass(frozen=True, slots=True)
class Case:
    """What the suite asks the upstream to do for one request."""

    name: CaseName
    endpoint: Endpoint
    stream: bool
    seconds: float = 0.0  # ``gap``: the pause the script must put between data events


@dataclass(frozen=True, slots=True)
class Script:
    """How the author makes a case happen.

    ``body`` is merged into the request body (a model name the fake knows, a field the
    fake reads); ``settings`` is merged into the backend's settings (deeply, for tables);
    ``status`` is the status the client must see for ``error_status``.
    """

    body: Mapping[str, JSONLike] = field(default_factory=dict)
    settings: SettingsTable = field(default_factory=dict)
    status: int | None = None


def base_body(endpoint: Endpoint, stream: bool) -> JSONObject:
    """The request the suite sends before a script's ``body`` is merged in."""
    body: JSONObject = {"model": ROUTE_MODEL, "stream": stream}
    if endpoint == "chat/completions":
        body["messages"] = [{"role": "user", "content": "Count from one to ten."}]
    elif endpoint == "completions":
        body["prompt"] = "Count from one to ten:"
    else:
        body["input"] = "Count from one to ten."
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def merge(base: Mapping[str, JSONLike], extra: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
    """``base`` updated with ``extra``; tables present in both are merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out


def as_json(value: JSONLike) -> JSONValue:
    """``value`` as plain JSON data (dicts and lists), copied all the way down."""
    if isinstance(value, str) or value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {key: as_json(item) for key, item in value.items()}
    return [as_json(item) for item in value]


def error_event(data: str) -> JSONObject | None:
    """The ``error`` object of an OpenAI error event's data (``{"error": {"message": ...}}``),
    or None when ``data`` is something else."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        return error
    return None
