"""Per-team limits as sliding windows: the arithmetic, the decision and the headers.

Pure: no I/O and no clock of its own; callers pass ``now``. :class:`LocalWindows` keeps one
process's windows; the Redis state runs the same rules in a Lua script (see
``redis_state.py``) so several processes share one set of windows.

A team's requests-per-minute window counts the requests admitted in the last 60 s; its
tokens-per-minute window sums the tokens (prompt + completion, from the upstream's
``usage``) of requests that *finished* in the last 60 s. A request is admitted while the
request count is below its limit and the token sum is below its limit — a request's tokens
are known only once it ends, so the last admitted request may take the sum over the limit,
and the next ones wait until enough of it has left the window.

Headers follow OpenAI's: ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and
``x-ratelimit-reset-*`` (time until the window is empty again, as ``1m0s``/``20ms``), for
``requests`` and ``tokens``, each only when that limit is set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "WINDOW",
    "Decision",
    "Limits",
    "LocalWindows",
    "WindowUsage",
    "decide",
    "format_duration",
    "ratelimit_headers",
    "wait_below",
]

WINDOW = 60.0

Exceeded = Literal["requests", "tokens", "concurrent_streams"]


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One team's windows as they stand, before the request being decided."""

    requests: int = 0
    requests_reset: float = 0.0  # until the request window is empty
    requests_wait: float = 0.0  # until the count is below the limit (0: it is)
    tokens: int = 0
    tokens_reset: float = 0.0
    tokens_wait: float = 0.0
    streams: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    exceeded: Exceeded | None
    retry_after: float
    headers: dict[str, str]

    @property
    def allowed(self) -> bool:
        return self.exceeded is None


def wait_below(
    entries: Iterable[tuple[float, int]], limit: int, now: float, window: float = WINDOW
) -> float:
    """Seconds until the amounts of ``entries`` (``(time, amount)``, oldest first, all
    inside the window) sum to less than ``limit``, as the oldest ones leave the window."""
    items = list(entries)
    total = sum(amount for _, amount in items)
    wait = 0.0
    for at, amount in items:
        if total < limit:
            break
        total -= amount
        wait = at + window - now
    return max(0.0, wait)


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it (Go's style): ``20ms``, ``1.5s``,
    ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    seconds = round(seconds, 3)
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def ratelimit_headers(
    limits: Limits, *, requests: int, requests_reset: float, tokens: int, tokens_reset: float
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for windows holding ``requests`` and ``tokens``."""
    headers: dict[str, str] = {}
    if limits.requests_per_minute is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(
            max(0, limits.requests_per_minute - requests)
        )
        headers["x-ratelimit-reset-requests"] = format_duration(requests_reset)
    if limits.tokens_per_minute is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tokens_per_minute - tokens))
        headers["x-ratelimit-reset-tokens"] = format_duration(tokens_reset)
    return headers


def decide(limits: Limits, usage: WindowUsage, *, stream: bool) -> Decision:
    """Admit one request or say which limit it meets and when to retry. The headers
    describe the windows after the decision (counting this request when admitted)."""
    exceeded: Exceeded | None = None
    retry = 0.0
    rpm, tpm, streams = (
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.concurrent_streams,
    )
    if stream and streams is not None and usage.streams >= streams:
        exceeded, retry = "concurrent_streams", 1.0
    elif rpm is not None and usage.requests >= rpm:
        exceeded, retry = "requests", usage.requests_wait
    elif tpm is not None and usage.tokens >= tpm:
        exceeded, retry = "tokens", usage.tokens_wait
    admitted = exceeded is None
    headers = ratelimit_headers(
        limits,
        requests=usage.requests + admitted,
        requests_reset=WINDOW if admitted else usage.requests_reset,
        tokens=usage.tokens,
        tokens_reset=usage.tokens_reset,
    )
    return Decision(exceeded, retry, headers)


class _Team:
    __slots__ = ("requests", "streams", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.streams = 0


class LocalWindows:
    """One process's windows for every team. Every method is synchronous, so a check and
    its update can never interleave with another request's under trio."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._teams: dict[str, _Team] = {}

    def _team(self, team: str, now: float) -> _Team:
        state = self._teams.setdefault(team, _Team())
        edge = now - self.window
        while state.requests and state.requests[0] <= edge:
            state.requests.popleft()
        while state.tokens and state.tokens[0][0] <= edge:
            state.tokens.popleft()
        return state

    def usage(self, team: str, limits: Limits, now: float) -> WindowUsage:
        state = self._team(team, now)
        reqs, toks = state.requests, state.tokens
        return WindowUsage(
            requests=len(reqs),
            requests_reset=reqs[-1] + self.window - now if reqs else 0.0,
            requests_wait=wait_below(
                ((t, 1) for t in reqs), limits.requests_per_minute or 0, now, self.window
            )
            if limits.requests_per_minute is not None and len(reqs) >= limits.requests_per_minute
            else 0.0,
            tokens=sum(n for _, n in toks),
            tokens_reset=toks[-1][0] + self.window - now if toks else 0.0,
            tokens_wait=wait_below(toks, limits.tokens_per_minute, now, self.window)
            if limits.tokens_per_minute is not None
            else 0.0,
            streams=state.streams,
        )

    def admit(self, team: str, limits: Limits, now: float, *, stream: bool) -> Decision:
        decision = decide(limits, self.usage(team, limits, now), stream=stream)
        if decision.allowed:
            state = self._teams[team]
            state.requests.append(now)
            if stream:
                state.streams += 1
        return decision

    def release_stream(self, team: str) -> None:
        state = self._teams.get(team)
        if state is not None and state.streams > 0:
            state.streams -= 1

    def add_tokens(self, team: str, tokens: int, now: float) -> None:
        if tokens > 0:
            self._team(team, now).tokens.append((now, tokens))
