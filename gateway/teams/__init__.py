"""Teams: API keys, per-team model access, limits and usage accounting.

Modules: :mod:`.keys` (making, hashing and recognising keys; pure), :mod:`.limits`
(sliding windows, decisions and ``x-ratelimit-*`` headers; pure), :mod:`.state` and
:mod:`.redis_state` (where windows live), :mod:`.resp` (a small trio Redis client),
:mod:`.usage` (SQLite accounting), :mod:`.settings` (the config tables) and
:mod:`.service` (the whole, as the HTTP layer uses it).

The names below come from :mod:`.service` on first use, not when this package is imported:
the sans-I/O config reads :mod:`.settings` through this package and must not load trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Identity, TeamAdmission, Teams, auth_enabled, open_teams

__all__ = ["Identity", "TeamAdmission", "Teams", "auth_enabled", "open_teams"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
