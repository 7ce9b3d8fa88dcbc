"""Checks through a real gateway served on port 0: heartbeats, timers, error mapping and
client disconnects, as a client sees them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from math import inf

import httpx
import trio

from ...abc import Endpoint, JSONObject
from ...errors import ConfigError
from ...sse import SSEFramer
from ..openai_shapes import Answer, ShapeError, parse_sse
from ..serving import ServedGateway, open_test_gateway
from ..waiting import wait_until
from ._cases import (
    BACKEND_ID,
    CANCEL_CASES,
    PATHS,
    ROUTE_MODEL,
    Case,
    Phase,
    Script,
    SettingsTable,
    error_event,
)
from ._failure import deadline, fail, unwrapped
from ._harness import BackendT, Harness

GAP_SECONDS = 0.6
HEARTBEAT_INTERVAL = 0.1
IDLE_TIMEOUT = 0.3
# The relay's phase while the backend is in each phase of a disconnect check.
_RELAY_PHASES: dict[Phase, str] = {"awaiting_headers": "connecting", "prefill": "prefill"}


class GatewayChecks(Harness[BackendT]):
    @asynccontextmanager
    async def serving(
        self,
        script: Script,
        *,
        keepalive: SettingsTable | None = None,
        timeouts: SettingsTable | None = None,
    ) -> AsyncIterator[tuple[ServedGateway, BackendT]]:
        """A gateway with one route, ``conformance``, to the backend of this case."""
        table = self.table(script, {"timeouts": dict(timeouts)} if timeouts else None)
        config: SettingsTable = {
            "backends": {BACKEND_ID: table},
            "routes": {
                "conformance": {
                    "model": ROUTE_MODEL,
                    "match": ["*"],
                    "backend": BACKEND_ID,
                    "keepalive": {"interval": HEARTBEAT_INTERVAL, **(keepalive or {})},
                }
            },
        }
        try:
            with unwrapped():
                async with open_test_gateway(
                    config, backends={self.type_name: self.backend_class}
                ) as served:
                    backend = served.gateway.backends[BACKEND_ID]
                    if not isinstance(backend, self.backend_class):
                        fail(f"the gateway built {backend!r}, not a {self.backend_class.__name__}")
                    yield served, backend
        except ConfigError as exc:
            fail(f"the gateway rejected the settings of this case:\n{exc.message}")

    async def gateway_settled(self, served: ServedGateway, backend: BackendT, after: str) -> None:
        with deadline(
            f"{after}: waiting for the gateway's in-flight table to empty", self.close_within + 1
        ):
            await served.gateway.inflight.wait_empty()
        await self.settled(backend, None, after)

    async def post_through_gateway(
        self, case: Case, script: Script, what: str, **serving: SettingsTable
    ) -> httpx.Response:
        """Send the case's request through a gateway; return the whole answer once the
        gateway and the backend have settled."""
        with deadline(what, self.check_timeout):
            async with self.serving(script, **serving) as (served, backend):
                async with served.client() as client:
                    resp = await client.post(PATHS[case.endpoint], json=self.body(case, script))
                await self.gateway_settled(served, backend, f"after {what}")
        return resp

    async def check_gateway_answer(self, endpoint: Endpoint, stream: bool) -> Answer:
        """Through the gateway, the client gets the same well-formed answer."""
        case, script = self.case("answer", stream=stream, endpoint=endpoint)
        what = f"{endpoint} answer through the gateway (stream={stream})"
        with deadline(what, self.check_timeout):
            async with self.serving(script) as (served, backend):
                async with served.client() as client:
                    resp = await client.post(PATHS[endpoint], json=self.body(case, script))
                if resp.status_code != 200:
                    fail(f"{what}: status {resp.status_code}: {resp.text[:300]}")
                await self.gateway_settled(served, backend, f"after a complete {what}")
        return self.answer(endpoint, stream, resp.content, what)

    async def check_gateway_error_status(self) -> None:
        """Without early headers, the client gets the upstream's status and an OpenAI
        error body carrying its message."""
        case, script = self.case("error_status")
        what = "an upstream error status through the gateway"
        resp = await self.post_through_gateway(
            case, script, what, keepalive={"early_headers": False}
        )
        if resp.status_code != script.status:
            fail(f"{what}: the client got {resp.status_code}, not {script.status}")
        _error_body(resp, what)

    async def check_gateway_connect_error(self) -> None:
        """An unreachable upstream is a 502 ``upstream_connect_error`` — or a 503
        ``no_backend_available`` when the backend's own health check already found it down
        and the gateway did not try."""
        case, script = self.case("connect_error")
        what = "an unreachable upstream through the gateway"
        resp = await self.post_through_gateway(
            case, script, what, keepalive={"early_headers": False}
        )
        error = _error_body(resp, what)
        found = (resp.status_code, error.get("code"))
        if found not in ((502, "upstream_connect_error"), (503, "no_backend_available")):
            fail(f"{what}: got {resp.status_code} {error}, not 502 upstream_connect_error")

    async def check_gateway_error_mid_stream(self) -> None:
        """A failure after the first data event ends the stream with an error event and
        no ``[DONE]``; the events before it arrived whole."""
        case, script = self.case("error_mid_stream")
        what = "an upstream failing mid-stream, through the gateway"
        resp = await self.post_through_gateway(case, script, what)
        data = _data(resp, what)
        _ends_with_error(data, what)
        if not any(item != "[DONE]" and error_event(item) is None for item in data):
            fail(f"{what}: no data event reached the client before the error")

    async def check_gateway_stall(self) -> None:
        """A stalled upstream is ended by the gateway's idle timer (heartbeats do not reset
        it), the client gets an ``upstream_timeout`` error event, and the upstream request
        is closed — the backend's body must be cancellable while it waits."""
        case, script = self.case("stall")
        what = "a stalled upstream through the gateway"
        resp = await self.post_through_gateway(case, script, what, timeouts={"idle": IDLE_TIMEOUT})
        error = _ends_with_error(_data(resp, what), what)
        if error.get("code") != "upstream_timeout":
            fail(f"{what}: the error event is {error}, not upstream_timeout")

    async def check_gateway_gap(self) -> None:
        """Data is handed on as it comes: the events before a pause reach the client before
        it, and heartbeats fill the pause. A backend that buffers breaks both."""
        case, script = self.case("gap", seconds=GAP_SECONDS)
        what = "a stream with a pause, through the gateway"
        resp = await self.post_through_gateway(case, script, what)
        if resp.status_code != 200:
            fail(f"{what}: status {resp.status_code}: {resp.text[:300]}")
        longest = _longest_heartbeat_run(resp.content, what)
        # A pause of 0.6 s with heartbeats every 0.1 s leaves room for five; ask for two.
        if longest < 2:
            fail(
                f"{what}: no run of heartbeats between two data events (longest: {longest}) "
                "— the backend held data back instead of yielding it at once"
            )
        self.answer(case.endpoint, True, resp.content, what)

    async def check_gateway_disconnect(self, phase: Phase) -> None:
        """A client that hangs up in ``phase`` gets its upstream request closed promptly."""
        if phase == "abandoned":
            raise ValueError("a client cannot abandon a stream; use check_cancel")
        case, script = self.case(CANCEL_CASES[phase])
        what = f"a client gone while {phase.replace('_', ' ')}, through the gateway"
        with deadline(what, self.check_timeout):
            async with self.serving(script) as (served, backend):
                client = served.client()
                with trio.CancelScope() as scope:
                    path = PATHS[case.endpoint]
                    async with client.stream("POST", path, json=self.body(case, script)) as resp:
                        if phase in _RELAY_PHASES:
                            await self.wait_open(backend, what)
                            relay_phase = _RELAY_PHASES[phase]
                            waiting = f"{what}: waiting for the relay to reach {relay_phase}"
                            with deadline(waiting, self.check_timeout / 2):
                                await _relay_phase(served, relay_phase, what)
                            scope.cancel()
                        framer = SSEFramer()
                        async for chunk in resp.aiter_raw():
                            if any(e.is_data for e in framer.feed(chunk)):
                                scope.cancel()
                await client.aclose()
                if not scope.cancelled_caught:
                    fail(f"{what}: the stream ended before the client hung up")
                await self.gateway_settled(served, backend, what)


_ORDER = ("queued", "connecting", "prefill", "streaming", "finishing")


async def _relay_phase(served: ServedGateway, phase: str, what: str) -> None:
    """Return once a request in the gateway's in-flight table is in ``phase`` (the caller
    sets the deadline); fail at once if it is past it."""

    def reached() -> bool:
        for entry in served.gateway.inflight:
            if entry.phase == phase:
                return True
            if entry.phase in _ORDER and _ORDER.index(entry.phase) > _ORDER.index(phase):
                fail(
                    f"{what}: the relay is {entry.phase} already, before the upstream said "
                    f"anything — the backend yielded bytes of its own while the upstream was "
                    f"silent (an opening chunk, a role delta): yield nothing until the "
                    f"upstream's first bytes, so the gateway can tell {phase} from an answer"
                )
        return False

    await wait_until(reached, within=inf)


def _longest_heartbeat_run(raw: bytes, what: str) -> int:
    """The most comment-only events the client got between two data events."""
    try:
        events = parse_sse(raw)
    except ShapeError as exc:
        fail(f"{what}: {exc}")
    longest = run = 0
    seen_data = False
    for event in events:
        if event.data is not None:
            if seen_data:
                longest = max(longest, run)
            seen_data, run = True, 0
        elif seen_data and event.comments:
            run += 1
    return longest


def _error_body(resp: httpx.Response, what: str) -> JSONObject:
    error = error_event(resp.text)
    if error is None:
        fail(f"{what}: not an OpenAI error body: {resp.text[:300]!r}")
    return error


def _data(resp: httpx.Response, what: str) -> list[str]:
    if resp.status_code != 200:
        fail(f"{what}: status {resp.status_code}: {resp.text[:300]}")
    try:
        events = parse_sse(resp.content)
    except ShapeError as exc:
        fail(f"{what}: {exc}")
    return [e.data for e in events if e.data is not None]


def _ends_with_error(data: list[str], what: str) -> JSONObject:
    """The error event that ends ``data``: the last event, or — when the upstream reported
    its failure in band and ended with it, as vLLM does — the last before ``[DONE]``."""
    if not data:
        fail(f"{what}: the stream has no data events at all")
    body = data[:-1] if data[-1] == "[DONE]" and len(data) > 1 else data
    error = error_event(body[-1])
    if error is None:
        ending = "with [DONE]" if data[-1] == "[DONE]" else "without an error event"
        fail(f"{what}: the stream ended {ending}, as if it were complete: {body[-1][:300]!r}")
    for item in body[:-1]:
        try:
            json.loads(item)
        except ValueError:
            fail(f"{what}: a data event before the error is not whole JSON: {item[:200]!r}")
    return error
