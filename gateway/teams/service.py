"""Teams in the running gateway: who a request is, what it may use, whether its limits
let it in now, and what it used.

:func:`open_teams` holds the resources (the usage database, the Redis connections) for the
gateway's lifetime. The HTTP layer calls :meth:`Teams.authenticate`, :meth:`Teams.authorize`
and :meth:`Teams.admit`; the relay calls the admission's :meth:`TeamAdmission.finish` when the
request ends, with its :class:`~gateway.inflight.InFlight` record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..abc import JSONObject
from ..errors import AuthenticationError, PermissionDenied, RateLimited, shown
from .keys import HeaderLookup, KeyRing, credential_from_headers
from .limits import Decision, Limits, format_duration
from .redis_state import RedisState, open_redis_state
from .resp import RedisError
from .state import LocalState, StateBackend, Ticket
from .usage import UsageRecord, UsageRecorder, UsageRow, open_usage_recorder

if TYPE_CHECKING:
    from ..config import GatewayConfig, Route
    from ..inflight import InFlight

__all__ = ["Identity", "TeamAdmission", "Teams", "open_teams"]

log = logging.getLogger("gateway.teams")

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_KEY = "Incorrect API key provided."
_KIND = {"requests": "requests", "tokens": "tokens", "concurrent_streams": "requests"}
_WHAT = {
    "requests": "requests per min (RPM)",
    "tokens": "tokens per min (TPM)",
    "concurrent_streams": "concurrent streams",
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request: the team, and the fingerprint of the key it used."""

    team: str
    key_id: str

    @staticmethod
    def log_fields_of(identity: Identity | None) -> dict[str, str]:
        """Access-log fields for whoever sent a request (none with auth off)."""
        return {} if identity is None else {"team": identity.team, "key_id": identity.key_id}


@dataclass(frozen=True, slots=True)
class _Team:
    name: str
    limits: Limits
    models: frozenset[str]

    def may_use(self, route: Route) -> bool:
        names = {route.name, *route.public_names}
        return "*" in self.models or not self.models.isdisjoint(names)


class TeamAdmission:
    """One request its team's limits let in: its limit headers, and its hold on the team's
    windows. (A backend's own concurrency limit is :class:`gateway.admission.BackendSlots`.)

    The team is charged the tokens the upstream reported. Where its client left before the
    usage came (an upstream that was asked reports none then), it is charged an estimate
    instead, so that hanging up is no way around ``tokens_per_minute``: the request body's
    JSON bytes / 4 for the prompt, one token per SSE data event streamed for the answer."""

    __slots__ = ("_teams", "body", "headers", "identity", "ticket")

    def __init__(
        self,
        teams: Teams,
        identity: Identity,
        ticket: Ticket,
        headers: dict[str, str],
        body: JSONObject | None = None,
    ):
        self._teams = teams
        self.identity = identity
        self.ticket = ticket
        self.headers = headers
        self.body = body

    def finish(self, entry: InFlight | None = None) -> None:
        """Release the stream slot, count the tokens, record usage. Synchronous and
        idempotent; ``entry`` is ``None`` when the request ended before the relay ran."""
        if self.ticket.released:
            return
        prompt = completion = 0
        if entry is not None:
            prompt, completion = self._tokens(entry)
        self.ticket.release(prompt + completion)
        if entry is not None:
            end = entry.ended_at if entry.ended_at is not None else entry.started_at
            self._teams.record(
                UsageRecord(
                    at=time.time(),
                    team=self.identity.team,
                    route=entry.route,
                    backend=entry.backend,
                    error=entry.outcome not in ("completed", "client_gone"),
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    stream_seconds=end - entry.started_at if entry.stream else 0.0,
                )
            )

    def _tokens(self, entry: InFlight) -> tuple[int, int]:
        """The prompt and answer tokens to charge: as reported, else — the client left
        once an upstream had its request (it may have been reading the prompt) — estimated.
        A request no upstream took, or one an upstream fault broke, costs what was reported."""
        prompt, completion = entry.prompt_tokens, entry.completion_tokens
        if entry.outcome != "client_gone" or not entry.upstream_seconds:
            return prompt or 0, completion or 0
        if prompt is None:
            prompt = _prompt_estimate(self.body)
        if completion is None:
            completion = entry.data_events
        return prompt, completion


def _prompt_estimate(body: JSONObject | None) -> int:
    """About 4 bytes of the request's JSON to a token (the common rule of thumb)."""
    if body is None:
        return 0
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"))) // 4


def auth_enabled(config: GatewayConfig) -> bool:
    """Whether ``config`` turns auth on: as ``[auth] enabled`` says, else when it has teams."""
    return bool(config.teams) if config.auth.enabled is None else config.auth.enabled


class Teams:
    """Auth, access, limits and usage. With ``enabled`` false, everyone is let in."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        state: StateBackend | None = None,
        recorder: UsageRecorder | None = None,
        shared: RedisState | None = None,
    ) -> None:
        auth = config.auth
        self.enabled = auth_enabled(config)
        self.state: StateBackend = state if state is not None else LocalState()
        self.recorder = recorder
        self.shared = shared  # usage shared by every process (Redis), when configured
        self._teams = {
            name: _Team(
                name,
                Limits(
                    t.limits.requests_per_minute,
                    t.limits.tokens_per_minute,
                    t.limits.concurrent_streams,
                ),
                frozenset(t.models),
            )
            for name, t in config.teams.items()
        }
        self._keys = KeyRing((h, name) for name, t in config.teams.items() for h in t.keys)
        self._admins = KeyRing((h, "admin") for h in auth.admin_keys)

    def reloaded(self, config: GatewayConfig) -> Teams:
        """These teams with ``config``'s teams, keys, limits and admin keys, and the same
        state, usage recorder and Redis: a team that is still there keeps its counters.
        (Turning auth on or off needs a restart: the caller keeps ``enabled`` as it was.)"""
        return Teams(config, state=self.state, recorder=self.recorder, shared=self.shared)

    def authenticate(self, headers: HeaderLookup) -> Identity:
        """The team of the request's key. Raises :class:`AuthenticationError` (401)."""
        credential = credential_from_headers(headers)
        if credential is None:
            raise AuthenticationError(_NO_KEY, code=None)
        found = self._keys.owner(credential.key)
        if found is None:
            raise AuthenticationError(_BAD_KEY)
        return Identity(*found)

    def authenticate_admin(self, headers: HeaderLookup, *, browser: bool = False) -> str:
        """The admin key's fingerprint. Raises :class:`AuthenticationError`; ``browser``
        asks for HTTP Basic credentials (the password is the admin key), which a browser
        then also sends with the page's own requests."""
        challenge = 'Basic realm="trio-gateway", charset="UTF-8"' if browser else "Bearer"
        credential = credential_from_headers(headers)
        if credential is None:
            raise AuthenticationError(
                "This needs the gateway's admin key.", code=None, challenge=challenge
            )
        found = self._admins.owner(credential.key)
        if found is None:
            raise AuthenticationError(_BAD_KEY, challenge=challenge)
        return found[1]

    def may_use(self, team: str, route: Route) -> bool:
        known = self._teams.get(team)
        return known is not None and known.may_use(route)

    def authorize(self, identity: Identity, route: Route, model: str) -> None:
        """Raises :class:`PermissionDenied` (403) if the team may not use ``route``, and
        :class:`AuthenticationError` if its team is gone (a config reload removed it
        after the key was checked)."""
        if identity.team not in self._teams:
            raise AuthenticationError(_BAD_KEY)
        if not self.may_use(identity.team, route):
            raise PermissionDenied(
                f"Team {identity.team} does not have access to the model `{shown(model)}`.",
                param="model",
            )

    async def admit(
        self, identity: Identity, *, id: str, stream: bool, body: JSONObject | None = None
    ) -> TeamAdmission:
        """Count the request (``body``: its JSON) against its team's limits. Raises
        :class:`RateLimited`."""
        team = self._teams[identity.team]
        decision, ticket = await self.state.admit(team.name, team.limits, id=id, stream=stream)
        if ticket is None:
            raise _rate_limited(team, decision)
        return TeamAdmission(self, identity, ticket, decision.headers, body)

    def record(self, record: UsageRecord) -> None:
        if self.recorder is not None:
            self.recorder.record(record)
        if self.shared is not None:
            self.shared.record_usage(record)

    async def usage(self, *, team: str | None = None, since: float | None = None) -> list[UsageRow]:
        """Every process's usage when Redis is shared (falling back to this process's
        database if Redis fails), else the database's."""
        if self.shared is not None:
            try:
                return await self.shared.query_usage(team=team, since=since)
            except RedisError as error:
                log.error(
                    "usage from redis unavailable, answering from %s: %s",
                    "the local database",
                    error,
                )
        if self.recorder is None:
            return []
        return await self.recorder.query(team=team, since=since)


def _rate_limited(team: _Team, decision: Decision) -> RateLimited:
    exceeded = decision.exceeded or "requests"
    limit = {
        "requests": team.limits.requests_per_minute,
        "tokens": team.limits.tokens_per_minute,
        "concurrent_streams": team.limits.concurrent_streams,
    }[exceeded]
    message = (
        f"Rate limit reached for team {team.name} on {_WHAT[exceeded]}: Limit {limit}. "
        f"Please try again in {format_duration(max(decision.retry_after, 0.001))}."
    )
    return RateLimited(
        message,
        kind=_KIND[exceeded],
        retry_after=decision.retry_after,
        limit_headers=decision.headers,
    )


@asynccontextmanager
async def open_teams(
    config: GatewayConfig, *, local: StateBackend | None = None
) -> AsyncIterator[Teams]:
    """Open what the teams need (usage database, Redis) for the gateway's lifetime; with
    auth off, nothing — and a loud warning. ``local``: where the windows live without
    Redis (default: this process; a worker's are its parent's)."""
    probe = Teams(config)
    if not probe.enabled:
        log.warning(
            "AUTH IS OFF: no [teams] configured%s; anyone who can reach this gateway may "
            "use every model, without limits",
            " ([auth] enabled = false)" if config.auth.enabled is False else "",
        )
        yield probe
        return
    async with AsyncExitStack() as stack:
        recorder = await stack.enter_async_context(open_usage_recorder(config.usage.database))
        state: StateBackend = local if local is not None else LocalState()
        shared: RedisState | None = None
        if config.state.redis is not None:
            state = shared = await stack.enter_async_context(
                open_redis_state(
                    config.state.redis,
                    prefix=config.state.prefix,
                    stream_lease=config.state.stream_lease,
                    call_timeout=config.state.timeout,
                )
            )
        log.info(
            "auth on: %d team(s), usage in %s, limits %s",
            len(config.teams),
            config.usage.database,
            "in redis"
            if config.state.redis
            else "per process"
            if local is None
            else "for the machine (parent process)",
        )
        yield Teams(config, state=state, recorder=recorder, shared=shared)
