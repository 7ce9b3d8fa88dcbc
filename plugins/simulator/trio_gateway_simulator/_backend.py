"""The simulator backend: the timeline of an answer, played on trio's clock."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from itertools import count

import trio

from gateway.abc import (
    Backend,
    CompletionEncoder,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
)

from ._answers import Plan, closing, plan, whole
from ._settings import SimulatorSettings


class SimulatorBackend(Backend[SimulatorSettings]):
    """Answers every request itself, on the timeline its settings describe.

    ``open_response`` waits ``time_to_headers`` and then enters (or raises the configured
    fault); the body waits ``prefill``, then yields one SSE event per token at
    ``tokens_per_second``. All waits are trio sleeps: cancellation ends an answer at once,
    in any phase. :attr:`active` counts the answers in progress.
    """

    Settings = SimulatorSettings

    def __init__(self, id: str, settings: SimulatorSettings) -> None:
        super().__init__(id, settings)
        self.active = 0
        self._ids = count(1)

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        s = self.settings
        answer = plan(request.endpoint, request.body, s)
        self.active += 1
        try:
            if s.fault == "refuse":
                raise UpstreamConnectError(f"backend {self.id}: connection refused (simulated)")
            await trio.sleep(s.time_to_headers)
            if s.fault == "status":
                raise UpstreamStatusError(
                    s.fault_status, f"backend {self.id}: simulated upstream error"
                )
            model = request.body.get("model")
            encoder = CompletionEncoder(
                request.endpoint,
                f"sim-{self.id}-{next(self._ids)}",
                model if isinstance(model, str) else "simulator",
                int(trio.current_time()),
            )
            if request.stream:
                body = self._stream(answer, encoder)
                content_type = "text/event-stream"
            else:
                body = self._whole(answer, encoder)
                content_type = "application/json"
            async with aclosing(body):
                yield UpstreamResponse(200, content_type, body)
        finally:
            self.active -= 1

    def _due(self, start: float, token: int) -> float:
        """When token number ``token`` is due, for a first token due at ``start``."""
        s = self.settings
        paused = sum(gap.seconds for gap in s.gaps if gap.at <= token)
        return start + token / s.tokens_per_second + paused

    async def _fault(self, sent: int) -> bool:
        """Play the mid-stream fault after ``sent`` tokens; True: end the body here."""
        fault = self.settings.fault
        if fault == "error_mid_stream":
            raise UpstreamProtocolError(
                f"backend {self.id}: simulated connection loss after {sent} token(s)"
            )
        if fault == "stall":
            await trio.sleep_forever()
        return fault == "truncate"

    async def _stream(
        self, answer: Plan, encoder: CompletionEncoder
    ) -> AsyncGenerator[bytes, None]:
        s = self.settings
        await trio.sleep(s.prefill)
        start = trio.current_time()
        opening = encoder.opening()
        for i in range(answer.tokens):
            if i == s.fault_after and await self._fault(i):
                return
            await trio.sleep_until(self._due(start, i))
            yield (opening if i == 0 else b"") + encoder.piece(answer.piece(i))
        if s.fault_after >= answer.tokens and await self._fault(answer.tokens):
            return
        yield closing(encoder, answer)

    async def _whole(self, answer: Plan, encoder: CompletionEncoder) -> AsyncGenerator[bytes, None]:
        s = self.settings
        await trio.sleep(s.prefill)
        done = self._due(trio.current_time(), answer.tokens - 1)
        sent = min(s.fault_after, answer.tokens)
        if s.fault != "none":
            await trio.sleep_until(self._due(trio.current_time(), sent))
            if await self._fault(sent):
                body = whole(encoder, answer)
                yield body[: len(body) // 2]
                return
        await trio.sleep_until(done)
        yield whole(encoder, answer)
