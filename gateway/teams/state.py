"""Where limit windows live: in this process (:class:`LocalState`) or in Redis
(:class:`~gateway.teams.redis_state.RedisState`), behind one small interface."""

from __future__ import annotations

from typing import Protocol

import trio

from .limits import Decision, Limits, LocalWindows

__all__ = ["LocalState", "StateBackend", "Ticket"]


class Ticket:
    """One admitted request's hold on its team's windows: the stream slot it may hold,
    and where its tokens go when it ends. :meth:`release` is idempotent."""

    __slots__ = ("_backend", "id", "released", "stream", "team")

    def __init__(self, backend: StateBackend, team: str, id: str, stream: bool) -> None:
        self._backend = backend
        self.team = team
        self.id = id
        self.stream = stream
        self.released = False

    def release(self, tokens: int) -> None:
        """Free the stream slot and count ``tokens`` against the team. Synchronous: the
        relay calls it while it may already be cancelled."""
        if self.released:
            return
        self.released = True
        self._backend.finish(self, tokens)


class StateBackend(Protocol):
    async def admit(
        self, team: str, limits: Limits, *, id: str, stream: bool
    ) -> tuple[Decision, Ticket | None]:
        """Check the team's windows and, when allowed, count this request in them (one
        atomic step). The ticket is ``None`` when the request is refused."""
        ...

    def finish(self, ticket: Ticket, tokens: int) -> None:
        """Called once per ticket (through :meth:`Ticket.release`); must not block."""
        ...


class LocalState:
    """Windows in this process, on trio's clock."""

    def __init__(self) -> None:
        self.windows = LocalWindows()

    async def admit(
        self, team: str, limits: Limits, *, id: str, stream: bool
    ) -> tuple[Decision, Ticket | None]:
        decision = self.windows.admit(team, limits, trio.current_time(), stream=stream)
        return decision, Ticket(self, team, id, stream) if decision.allowed else None

    def finish(self, ticket: Ticket, tokens: int) -> None:
        if ticket.stream:
            self.windows.release_stream(ticket.team)
        self.windows.add_tokens(ticket.team, tokens, trio.current_time())
