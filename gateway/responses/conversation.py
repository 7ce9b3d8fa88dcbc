"""Where a Responses request's earlier turns come from, and where its answer goes.

Over HTTP: ``previous_response_id`` names a response the team stored, and an answer is
stored unless the request says ``store: false``. On a WebSocket the socket also keeps the
last response of each of its lanes in memory (:class:`SocketResponses`): a later turn may
continue one without the store, ``store: false`` included, as the official API allows on
one connection — the same lane's next turn, or another lane's (a fork).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..abc import JSONObject
from ..dialects.responses_request import input_items
from ..errors import InvalidRequest, PreviousResponseNotFound, shown
from .store import ResponseStore, StoredResponse

MAX_LANES = 16
"""Lanes whose last response a socket keeps; past it, the lane whose last response is the
oldest is forgotten (the official SDKs' WebSocket helpers open 8 lanes by default)."""


class SocketResponses:
    """What a WebSocket remembers: for each lane (a turn's ``stream_id``; ``None`` is the
    default lane) its last response's id and the conversation up to and including it. A
    lane's next response replaces its last; a turn on any lane may continue any lane's
    last response (a fork reads another lane's)."""

    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        self._lanes: dict[str | None, tuple[str, tuple[JSONObject, ...]]] = {}

    def lane(self, stream_id: str | None) -> SocketLane:
        return SocketLane(self, stream_id)

    def find(self, response_id: str) -> tuple[JSONObject, ...] | None:
        """The conversation up to the response ``response_id``, if it is a lane's last."""
        for kept_id, items in self._lanes.values():
            if kept_id == response_id:
                return items
        return None

    def keep(self, stream_id: str | None, response_id: str, items: tuple[JSONObject, ...]) -> None:
        self._lanes.pop(stream_id, None)  # to the end: the most recent
        self._lanes[stream_id] = (response_id, items)
        if len(self._lanes) > MAX_LANES:
            del self._lanes[next(iter(self._lanes))]


@dataclass(frozen=True, slots=True)
class SocketLane:
    """One turn's view of its socket's memory: what it may continue, where its answer goes."""

    responses: SocketResponses
    stream_id: str | None

    def find(self, response_id: str) -> tuple[JSONObject, ...] | None:
        return self.responses.find(response_id)

    def keep(self, response_id: str, items: tuple[JSONObject, ...]) -> None:
        self.responses.keep(self.stream_id, response_id, items)


class Conversation:
    """One Responses request's view of its team's stored responses (and of its socket's
    lanes, on a WebSocket)."""

    __slots__ = ("lane", "store", "team")

    def __init__(self, store: ResponseStore, team: str, lane: SocketLane | None = None) -> None:
        self.store = store
        self.team = team
        self.lane = lane

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
        kept = self.lane.find(previous) if self.lane is not None else None
        if kept is not None:
            return list(kept)
        stored = await self.store.get(self.team, previous)
        if stored is None:
            raise PreviousResponseNotFound(
                f"Previous response with id '{shown(previous)}' not found.",
                param="previous_response_id",
            )
        return [*stored.history, *stored.input_items, *_output(stored.response)]

    def keeper(
        self, body: JSONObject, history: list[JSONObject]
    ) -> Callable[[JSONObject], Awaitable[None]] | None:
        """What to do with the whole answer before its end reaches the client: store it
        (unless ``store: false``), and on a socket remember it as its lane's last."""
        store = body.get("store") is not False
        if not store and self.lane is None:
            return None
        inputs = input_items(body)

        async def keep(response: JSONObject) -> None:
            response_id, created = response.get("id"), response.get("created_at")
            if not isinstance(response_id, str):
                return  # nothing to find it by
            if self.lane is not None:
                self.lane.keep(response_id, (*history, *inputs, *_output(response)))
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
