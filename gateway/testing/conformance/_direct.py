"""Checks that drive the backend directly: enter ``open_response``, read, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from ...abc import Endpoint, UpstreamConnectError
from ...errors import GatewayError
from ...sse import SSEEvent, SSEFramer
from ..openai_shapes import Answer
from ._cases import CANCEL_CASES, Case, Phase, Script, error_event
from ._failure import (
    ConformanceFailure,
    deadline,
    fail,
    gateway_error,
    left_open,
    tasks_below,
    unwrapped,
)
from ._harness import BackendT, Harness

# Room for a backend that enters open_response before its upstream answered to do so.
_EARLY_ENTRY_PROBE = 0.05


class _Abandon(Exception):
    """Raised inside ``open_response`` by a consumer that stops reading."""


class DirectChecks(Harness[BackendT]):
    async def check_answer(self, endpoint: Endpoint, stream: bool) -> Answer:
        """A complete answer: a 2xx response of the right content type whose body is a
        well-formed OpenAI answer; afterwards nothing stays open."""
        case, script = self.case("answer", stream=stream, endpoint=endpoint)
        what = f"{endpoint} answer (stream={stream})"
        with deadline(what, self.check_timeout):
            async with self.running(script) as backend:
                tasks = tasks_below(trio.lowlevel.current_task())
                raw = await self.read(backend, self.request(case, script), what)
                await self.settled(backend, tasks, f"after a complete {what}")
        answer = self.answer(endpoint, stream, raw, what)
        if stream and answer.pieces < 2:
            fail(
                f"{what}: the text came in {answer.pieces} piece(s); the `answer` script "
                "must produce at least two, and the backend must not merge them"
            )
        return answer

    async def check_concurrent(self, n: int = 4) -> None:
        """``n`` streams at once through one backend instance all complete, each whole."""
        case, script = self.case("answer")
        with deadline(f"{n} concurrent streams", self.check_timeout):
            async with self.running(script) as backend:
                tasks = tasks_below(trio.lowlevel.current_task())
                results: list[bytes] = []

                async def one(i: int) -> None:
                    request = self.request(case, script, i)
                    results.append(await self.read(backend, request, f"concurrent stream {i}"))

                with unwrapped():
                    async with trio.open_nursery() as nursery:
                        for i in range(n):
                            nursery.start_soon(one, i)
                await self.settled(backend, tasks, f"after {n} concurrent streams")
        for raw in results:
            self.answer(case.endpoint, True, raw, "a concurrent stream")

    async def check_error_status(self, stream: bool = True) -> GatewayError:
        """A refusal before the first byte raises, from entering ``open_response``, a
        GatewayError carrying the status the client must see — UpstreamStatusError with the
        upstream's status for an HTTP upstream. The body is never handed out."""
        case, script = self.case("error_status", stream=stream)
        if script.status is None or not 400 <= script.status <= 599:
            fail(f"the error_status script must give the status it causes, got {script.status}")
        error = await self._expect_error_on_enter(case, script, "an upstream error status")
        if error.status != script.status:
            fail(
                f"an upstream error status {script.status} became {type(error).__name__} "
                f"with status {error.status}"
            )
        return error

    async def check_connect_error(self) -> UpstreamConnectError:
        """An unreachable upstream raises UpstreamConnectError from entering
        ``open_response`` — the class the gateway fails over on."""
        case, script = self.case("connect_error")
        error = await self._expect_error_on_enter(case, script, "an unreachable upstream")
        if not isinstance(error, UpstreamConnectError):
            fail(f"an unreachable upstream raised {type(error).__name__}, not UpstreamConnectError")
        return error

    async def _expect_error_on_enter(self, case: Case, script: Script, what: str) -> GatewayError:
        error: GatewayError | None = None
        with deadline(what, self.check_timeout):
            async with self.running(script) as backend:
                tasks = tasks_below(trio.lowlevel.current_task())
                try:
                    async with backend.open_response(self.request(case, script)):
                        fail(f"{what}: open_response was entered; it must raise instead")
                except ConformanceFailure:
                    raise
                except Exception as exc:
                    error = gateway_error(exc)
                    if error is None:
                        fail(
                            f"{what}: raised {exc!r}, not a gateway error (an UpstreamError "
                            "subclass); the gateway reports anything else as its own bug, a 500"
                        )
                await self.settled(backend, tasks, f"after {what}")
        assert error is not None
        if not error.message:
            fail(f"{what}: the error has no message for the client")
        return error

    async def check_error_mid_stream(self) -> GatewayError | None:
        """A failure after the first data event is never a clean end, which would look like
        a complete answer: the body raises a gateway error (an UpstreamError subclass), or
        — for an upstream that reports failures in band, as vLLM does — it hands on the
        upstream's own OpenAI error event. Returns the error raised, if one was."""
        case, script = self.case("error_mid_stream")
        what = "an upstream failing mid-stream"
        events: list[SSEEvent] = []
        entered = False
        error: BaseException | None = None
        with deadline(what, self.check_timeout):
            async with self.running(script) as backend:
                tasks = tasks_below(trio.lowlevel.current_task())
                try:
                    async with backend.open_response(self.request(case, script)) as response:
                        entered = True
                        framer = SSEFramer()
                        async for chunk in response.body:
                            events += framer.feed(chunk)
                except Exception as exc:
                    error = exc
                await self.settled(backend, tasks, f"after {what}")
        data = [e.data for e in events if e.data is not None]
        answer = [item for item in data if item != "[DONE]" and error_event(item) is None]
        if not entered or not answer:
            fail(
                f"{what}: the failure came before any data event; the error_mid_stream "
                f"script must fail after at least one (raised: {error!r})"
            )
        if error is None:
            if any(error_event(item) is not None for item in data):
                return None  # the upstream's own error event, handed on
            ending = "with [DONE]" if "[DONE]" in data else "without an error"
            fail(
                f"{what}: the body ended {ending}; it must raise an UpstreamError "
                "subclass (an error swallowed looks like a complete answer)"
            )
        found = gateway_error(error)
        if found is None:
            fail(f"{what}: raised {error!r}, not an UpstreamError subclass")
        return found

    async def check_cancel(self, phase: Phase) -> None:
        """Cancelled (or abandoned by its consumer) in ``phase``, the exchange ends at once,
        does not turn the cancellation into an error, and closes its upstream request."""
        case, script = self.case(CANCEL_CASES[phase])
        what = f"cancelled while {phase.replace('_', ' ')}"
        entered = trio.Event()
        got_data = trio.Event()
        finished = False
        bodies: list[AsyncIterator[bytes]] = []

        async def consume(backend: BackendT) -> None:
            nonlocal finished
            abandoned = False
            try:
                async with backend.open_response(self.request(case, script)) as response:
                    bodies.append(response.body)
                    entered.set()
                    framer = SSEFramer()
                    async for chunk in response.body:
                        if any(e.is_data for e in framer.feed(chunk)):
                            got_data.set()
                            if phase == "abandoned":
                                raise _Abandon
            except* _Abandon:  # a backend with a nursery inside may hand it back grouped
                abandoned = True
            finished = not abandoned

        with deadline(what, self.check_timeout):
            async with self.running(script) as backend:
                tasks = tasks_below(trio.lowlevel.current_task())
                try:
                    with unwrapped():
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(consume, backend)
                            await self._reach(phase, backend, entered, got_data, what)
                            if phase != "abandoned":
                                nursery.cancel_scope.cancel()
                except ConformanceFailure:
                    raise
                except Exception as exc:
                    fail(
                        f"{what}: the exchange raised {exc!r}; cancellation must propagate "
                        "as Cancelled, never become an error"
                    )
                if finished:
                    fail(
                        f"{what}: the body ended normally after cancellation; it must not "
                        "swallow Cancelled"
                    )
                await self.settled(backend, tasks, what)
                await _closed(bodies, what)

    async def _reach(
        self, phase: Phase, backend: BackendT, entered: trio.Event, got_data: trio.Event, what: str
    ) -> None:
        """Return once the exchange is in ``phase``."""
        if phase == "awaiting_headers":
            await self.wait_open(backend, what)
            await trio.sleep(_EARLY_ENTRY_PROBE)
            if entered.is_set():
                fail(
                    f"{what}: open_response was entered before the upstream answered "
                    "(hang_before_headers never answers)"
                )
        elif phase == "prefill":
            with deadline(f"{what}: waiting for open_response to enter", self.check_timeout):
                await entered.wait()
            await self.wait_open(backend, what)
        else:
            with deadline(f"{what}: waiting for the first data event", self.check_timeout):
                await got_data.wait()


async def _closed(bodies: list[AsyncIterator[bytes]], what: str) -> None:
    """Fail if a body generator was left suspended when ``open_response`` exited (after
    closing it, so the garbage collector has nothing left to complain about)."""
    for body in bodies:
        if left_open(body):
            with trio.CancelScope(shield=True):
                await body.aclose()  # type: ignore[attr-defined]
            fail(
                f"{what}: open_response exited with its body generator still suspended; "
                "the backend owns the body and must close it on every way out "
                "(async with contextlib.aclosing(body): yield ...)"
            )
