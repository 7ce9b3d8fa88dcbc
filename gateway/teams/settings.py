"""The teams part of ``gateway.toml``: ``[auth]``, ``[teams.<name>]``, ``[state]``, ``[usage]``.

::

    [auth]
    admin_keys = ["sha256:..."]          # for GET /admin/usage and the status page

    [teams.alpha]
    keys = ["sha256:...", { env = "ALPHA_KEY" }]
    models = ["chat", "embed-*"]         # route names or public model names; "*" = all
    limits = { requests_per_minute = 60, tokens_per_minute = 100000, concurrent_streams = 4 }

    [state]
    redis = "redis://127.0.0.1:6379/0"   # share limits between processes; default: per process
    timeout = 2.0                        # seconds per Redis call; then fail open

    [usage]
    database = "gateway-usage.sqlite"

A key written in the file must be a hash (``gateway keys hash`` makes one); an environment
reference may hold the key itself or its hash. With no ``[teams]``, auth is off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from .keys import hash_key, is_hash

__all__ = [
    "TEAM_NAME_RULE",
    "AuthSettings",
    "StateSettings",
    "TeamLimits",
    "TeamSettings",
    "UsageSettings",
    "check_key_entries",
    "check_team_models",
    "is_team_name",
    "team_table",
]

_TEAM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
TEAM_NAME_RULE = "a team name is 1-64 of A-Z a-z 0-9 _ . -"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hashed(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for value in values:
        if not value.strip():
            raise ValueError("a key must not be empty")
        out.append(value if is_hash(value) else hash_key(value))
    return tuple(out)


class TeamLimits(_Settings):
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0, description="prompt + completion")
    concurrent_streams: int | None = Field(None, gt=0)


class TeamSettings(_Settings):
    keys: tuple[str, ...] = Field(min_length=1, description="sha256 hashes of the team's keys")
    models: tuple[str, ...] = Field(("*",), description="route names, model names, or *")
    limits: TeamLimits = TeamLimits()

    @field_validator("keys")
    @classmethod
    def _hash_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _hashed(value)


class AuthSettings(_Settings):
    enabled: bool | None = Field(None, description="default: on when teams are configured")
    admin_keys: tuple[str, ...] = ()

    @field_validator("admin_keys")
    @classmethod
    def _hash_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _hashed(value)


class StateSettings(_Settings):
    redis: str | None = Field(None, description="redis://[:password@]host:port[/db]")
    prefix: str = "trio-gateway"
    stream_lease: float = Field(
        3600.0, gt=0, description="seconds after which a stream a dead process held is freed"
    )
    timeout: float = Field(
        2.0,
        gt=0,
        description="seconds one Redis call may take, the wait for a free connection "
        "included; past it the request is admitted (and a few in a row skip Redis a while)",
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            from .resp import parse_redis_url

            parse_redis_url(value)
        return value


class UsageSettings(_Settings):
    database: str = Field("gateway-usage.sqlite", description="SQLite file for usage records")


def check_key_entries(raw: Mapping[str, Any]) -> None:
    """Before environment references are resolved: keys written in the file are hashes."""
    places: list[tuple[str, Any]] = []
    teams = raw.get("teams")
    if isinstance(teams, Mapping):
        places += [
            (f"teams.{name}.keys", t.get("keys"))
            for name, t in teams.items()
            if isinstance(t, Mapping)
        ]
    auth = raw.get("auth")
    if isinstance(auth, Mapping):
        places.append(("auth.admin_keys", auth.get("admin_keys")))
    for path, keys in places:
        if not isinstance(keys, list):
            continue
        for i, entry in enumerate(keys):
            if isinstance(entry, str) and not is_hash(entry):
                raise ConfigError(
                    f"{path}.{i}: a key in the config must be its hash (sha256:<64 hex>, "
                    'from `gateway keys hash`) or an environment reference { env = "NAME" }'
                )


def is_team_name(name: str) -> bool:
    """Whether ``name`` may name a team (:data:`TEAM_NAME_RULE`)."""
    return _TEAM_NAME.fullmatch(name) is not None


def team_table(name: str) -> str:
    """The TOML table header's key of team ``name`` (a valid one): ``teams.NAME``, its
    name quoted where it has a dot (a bare dot would nest tables)."""
    return f"teams.{name}" if "." not in name else f'teams."{name}"'


def check_team_models(
    teams: Mapping[str, TeamSettings], routes: Iterable[tuple[str, tuple[str, ...]]]
) -> None:
    """Team names are safe to use as identifiers, and every ``models`` entry names a route
    (``routes``: ``(route name, public names)`` pairs)."""
    known = {"*"}
    for name, public in routes:
        known.add(name)
        known.update(public)
    for team, settings in teams.items():
        if not is_team_name(team):
            raise ConfigError(f"teams.{team}: {TEAM_NAME_RULE}")
        for i, model in enumerate(settings.models):
            if model not in known:
                raise ConfigError(
                    f"teams.{team}.models.{i}: {model!r} is no route or model name "
                    f"(known: {', '.join(sorted(known))})"
                )
