"""Teams: API keys, per-team model access, limits and usage accounting.

Modules: :mod:`.keys` (making, hashing and recognising keys; pure), :mod:`.limits`
(sliding windows, decisions and ``x-ratelimit-*`` headers; pure), :mod:`.state` and
:mod:`.redis_state` (where windows live), :mod:`.resp` (a small trio Redis client),
:mod:`.usage` (SQLite accounting), :mod:`.settings` (the config tables) and
:mod:`.service` (the whole, as the HTTP layer uses it).
"""

from .service import Identity, TeamAdmission, Teams, open_teams

__all__ = ["Identity", "TeamAdmission", "Teams", "open_teams"]
