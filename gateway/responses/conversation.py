"""Where a Responses request's earlier turns come from, and where its answer goes.

Over HTTP: ``previous_response_id`` names a response the team stored, and an answer is
stored unless the request says ``store: false``. On a WebSocket the socket also keeps its
last response in memory (:class:`LastResponse`): the next turn may continue it without
the store, ``store: false`` included, as the official API allows on one connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..abc import JSONObject
from ..dialects.responses_request import input_items
from ..errors import InvalidRequest
from .store import ResponseStore, StoredResponse


@dataclass(slots=True)
class LastResponse:
    """A WebSocket's last response: its id, and the conversation up to and including it."""

    id: str = ""
    items: tuple[JSONObject, ...] = ()


class Conversation:
    """One Responses request's view of its team's stored responses (and of its socket's
    last response, on a WebSocket)."""

    __slots__ = ("last", "store", "team")

    def __init__(self, store: ResponseStore, team: str, last: LastResponse | None = None) -> None:
        self.store = store
        self.team = team
        self.last = last

    async def history(self, body: JSONObject) -> list[JSONObject]:
        """The items of the conversation before this request, when it continues an
        earlier response (``previous_response_id``): that response's history, input and
        output. Raises :class:`InvalidRequest` for an id the team has no response by."""
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise InvalidRequest(
                "previous_response_id must be a string", param="previous_response_id"
            )
        if self.last is not None and self.last.id == previous:
            return list(self.last.items)
        stored = await self.store.get(self.team, previous)
        if stored is None:
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        return [*stored.history, *stored.input_items, *_output(stored.response)]

    def keeper(
        self, body: JSONObject, history: list[JSONObject]
    ) -> Callable[[JSONObject], Awaitable[None]] | None:
        """What to do with the whole answer before its end reaches the client: store it
        (unless ``store: false``), and on a socket remember it as the last response."""
        store = body.get("store") is not False
        if not store and self.last is None:
            return None
        inputs = input_items(body)

        async def keep(response: JSONObject) -> None:
            response_id, created = response.get("id"), response.get("created_at")
            if not isinstance(response_id, str):
                return  # nothing to find it by
            if self.last is not None:
                self.last.id = response_id
                self.last.items = (*history, *inputs, *_output(response))
            if store:
                await self.store.put(
                    StoredResponse(
                        id=response_id,
                        team=self.team,
                        created_at=created if isinstance(created, int) else int(time.time()),
                        input_items=inputs,
                        history=history,
                        response=response,
                    )
                )

        return keep


def _output(response: JSONObject) -> list[JSONObject]:
    output = response.get("output")
    return [o for o in output if isinstance(o, dict)] if isinstance(output, list) else []
