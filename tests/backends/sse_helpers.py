"""Reading SSE responses in tests: raw events as they arrive, and their JSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def sse_events(response: httpx.Response) -> AsyncIterator[bytes]:
    """The raw events of an SSE response (comments included), as they arrive."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield event


def event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON of a ``data:`` event, or None for a comment or ``[DONE]``."""
    if not event.startswith(b"data: {"):
        return None
    payload: dict[str, Any] = json.loads(event[len(b"data: ") :])
    return payload
