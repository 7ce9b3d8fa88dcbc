"""What a stored response is, the store's interface, and what every store shares: the
record's encoding, its size cap, and the bookkeeping of writes that did not happen.

A record is encoded once, as compact UTF-8 JSON of the whole :class:`StoredResponse` plus
the wall-clock time it expires at; the cap (``[responses] max_bytes``) is measured on those
bytes. Encoding and decoding run in a worker thread: a record may be megabytes of JSON.

Errors::

    ResponsesDatabaseError     start-up only: the SQLite file cannot be used (one line that
                               names the path); never sent to a client
    GatewayError
    └── ResponseStoreUnavailable   503: the store did not answer a read or a delete

A write that fails is never an error to the client whose response it was: see
:meth:`ResponseStore.put`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Protocol

import trio

from ..abc import JSONObject
from ..dialects.base import utf8_json
from ..errors import GatewayError

__all__ = [
    "ResponseStore",
    "ResponseStoreUnavailable",
    "ResponsesDatabaseError",
    "StoredResponse",
]

log = logging.getLogger("gateway.responses")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response. ``team`` is ``""`` with auth off."""

    id: str  # "resp_…"
    team: str
    created_at: int  # Unix seconds
    input_items: list[JSONObject]  # this turn's input items, as `input_items` lists them
    history: list[JSONObject]  # the items of the turns before it: a chain is one read
    response: JSONObject  # the whole response object (output, usage, status, ...)


class ResponseStore(Protocol):
    """Where responses are kept, per team. Async (trio); safe to call from many tasks."""

    @property
    def failed_puts(self) -> int:
        """Responses not stored because the store could not be written (a running total)."""
        ...

    @property
    def oversized_puts(self) -> int:
        """Responses not stored because they were over ``max_bytes`` (a running total)."""
        ...

    async def put(self, stored: StoredResponse) -> bool:
        """Keep ``stored`` for the configured TTL (replacing a record with its team and id).
        Returns whether it was stored. Never raises for the store's own trouble: a record
        over ``max_bytes`` or a store that cannot be written is logged, counted, and not
        stored, and the request it came from still succeeds (a later ``get`` finds
        nothing). Cancelled, a record may or may not have been stored."""
        ...

    async def get(self, team: str, response_id: str) -> StoredResponse | None:
        """The record, or ``None`` when ``team`` has none by that id: another team's id,
        an expired one and a deleted one all look like one that never was. Raises
        :class:`ResponseStoreUnavailable`."""
        ...

    async def delete(self, team: str, response_id: str) -> bool:
        """Forget the record; whether ``team`` had one (unexpired) to forget. Raises
        :class:`ResponseStoreUnavailable`."""
        ...


class ResponseStoreUnavailable(GatewayError):
    """The store of responses did not answer (its database or Redis is out): a stored
    response can be neither read nor deleted right now. Not a 404: it may well exist."""

    status = 503
    code = "response_store_unavailable"


class ResponsesDatabaseError(Exception):
    """The responses database cannot be used; the message is one line that names the path."""


def encode(stored: StoredResponse, expires_at: float) -> bytes:
    """The record as the stores keep it. Blocking (a big record takes a while)."""
    doc = {
        "id": stored.id,
        "team": stored.team,
        "created_at": stored.created_at,
        "expires_at": expires_at,
        "input_items": stored.input_items,
        "history": stored.history,
        "response": stored.response,
    }
    return utf8_json(doc)


def decode(data: bytes) -> tuple[StoredResponse, float]:
    """A record and the time it expires at. Raises :class:`ValueError` (also for JSON that
    is not a record). Blocking."""
    doc = json.loads(data)
    try:
        stored = StoredResponse(
            id=doc["id"],
            team=doc["team"],
            created_at=doc["created_at"],
            input_items=doc["input_items"],
            history=doc["history"],
            response=doc["response"],
        )
        expires_at = float(doc["expires_at"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a stored response: {error!r}") from None
    return stored, expires_at


class StoreHealth:
    """Counts the records that were not stored, and logs a failing store once when writes
    start failing and once when they work again (not once per record); a failed read or
    delete at most every 10 s."""

    def __init__(self, where: str, max_bytes: int) -> None:
        self.where = where
        self.max_bytes = max_bytes
        self.failed_puts = 0
        self.oversized_puts = 0
        self._failing_since: float | None = None
        self._failed_before = 0
        self._last_read_error = -math.inf

    def fits(self, stored: StoredResponse, data: bytes) -> bool:
        if len(data) <= self.max_bytes:
            return True
        self.oversized_puts += 1
        log.warning(
            "response %s of team %r not stored: %d bytes of JSON, over responses.max_bytes "
            "(%d); a later request cannot retrieve it or continue from it",
            stored.id,
            stored.team,
            len(data),
            self.max_bytes,
        )
        return False

    def failed(self, error: Exception) -> None:
        self.failed_puts += 1
        if self._failing_since is None:
            self._failing_since = trio.current_time()
            self._failed_before = self.failed_puts - 1
            log.error(
                "responses cannot be stored in %s until it can be written again: %s",
                self.where,
                error,
            )

    def stored(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "responses stored in %s again after %.1f s; %d response(s) not stored",
                self.where,
                trio.current_time() - self._failing_since,
                self.failed_puts - self._failed_before,
            )
            self._failing_since = None

    def unavailable(self, error: Exception) -> ResponseStoreUnavailable:
        """The error for a read or delete that failed with ``error``."""
        now = trio.current_time()
        if now - self._last_read_error >= 10:
            self._last_read_error = now
            log.error("stored responses cannot be read from %s: %s", self.where, error)
        return ResponseStoreUnavailable("Stored responses are unavailable right now.")
