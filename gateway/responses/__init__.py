"""Stored Responses-API responses, per team, so that ``GET``/``DELETE /v1/responses/{id}``,
``input_items`` and ``previous_response_id`` work on backends that keep nothing.

Modules: :mod:`.store` (the record, the :class:`ResponseStore` interface, the shared
encoding and size cap), :mod:`.sqlite` (the default: one SQLite file) and :mod:`.redis`
(``[state] redis``: shared by every replica). :func:`open_response_store` picks one from
the config.

Isolation: a record is found only by its team and its id; another team's id reads as
absent (404). With auth off every caller is team ``""``, so a response id is the only
secret that guards a response. ``store: false`` is the caller's business: it simply does
not call :meth:`ResponseStore.put`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .redis import RedisResponseStore, open_redis_response_store
from .sqlite import SQLiteResponseStore, check_responses_database, open_sqlite_response_store
from .store import ResponsesDatabaseError, ResponseStore, ResponseStoreUnavailable, StoredResponse

if TYPE_CHECKING:
    from ..config import GatewayConfig

__all__ = [
    "RedisResponseStore",
    "ResponseStore",
    "ResponseStoreUnavailable",
    "ResponsesDatabaseError",
    "SQLiteResponseStore",
    "StoredResponse",
    "check_responses_database",
    "open_response_store",
]

log = logging.getLogger("gateway.responses")


@asynccontextmanager
async def open_response_store(
    config: GatewayConfig, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[ResponseStore]:
    """The store the config names: Redis when ``[state] redis`` is set, else the SQLite
    file of ``[responses] database``. Raises :class:`ResponsesDatabaseError` (one line
    naming the path) if that file cannot be used."""
    settings = config.responses
    if config.state.redis is not None:
        async with open_redis_response_store(
            config.state.redis,
            prefix=config.state.prefix,
            call_timeout=config.state.timeout,
            ttl=settings.ttl,
            max_bytes=settings.max_bytes,
            clock=clock,
        ) as shared:
            log.info("stored responses in redis")
            yield shared
        return
    path = settings.database_path(config.usage)
    async with open_sqlite_response_store(
        path, ttl=settings.ttl, max_bytes=settings.max_bytes, clock=clock
    ) as local:
        log.info("stored responses in %s", path)
        yield local
