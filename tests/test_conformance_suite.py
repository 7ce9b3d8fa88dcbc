"""Tests of the conformance suite itself: it must fail, saying why, for backends that break
the contract — one that leaks its upstream request when cancelled, ones that swallow or
disguise errors — while the real ``openai`` backend passes the same checks
(tests/test_conformance_builtins.py)."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import ClassVar, TypeVar

import pytest
import trio

from backends.openai import OpenAIBackend
from gateway.abc import (
    Backend,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStatusError,
)
from gateway.testing.conformance import (
    BackendConformance,
    Case,
    CaseName,
    Conformance,
    ConformanceFailure,
    Phase,
    Script,
    SettingsTable,
)
from gateway.testing.fake_openai import FakeOpenAI

_FAKE: dict[str, SettingsTable] = {
    "answer": {"tokens": 4},
    "error_status": {"status": 503},
    "error_mid_stream": {"tokens": 6, "fault": "reset_mid_stream"},
    "hang_before_headers": {"headers_delay": 3600},
    "hang_after_headers": {"prefill": 3600},
    "endless": {"tokens": 20_000, "pace": 0.005},  # 100 s
}


def _script(case: Case) -> Script:
    return Script(body={"fake": _FAKE[case.name]}, status=503)


class LeaksOnCancel(OpenAIBackend):
    """Reads the upstream in a task of its own, started in the backend's long-lived nursery
    and never cancelled — a fire-and-forget pump. Answers come through whole, but a client
    that goes away leaves the upstream request running."""

    _pumps: trio.Nursery

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with super().running(), trio.open_nursery() as nursery:
            self._pumps = nursery
            yield
            nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        send, receive = trio.open_memory_channel[_Item](math.inf)
        self._pumps.start_soon(self._pump, request, send)
        head = await receive.receive()
        if isinstance(head, Exception):
            raise head
        assert isinstance(head, str)
        yield UpstreamResponse(200, head, _Drain(receive))  # the bug: no cancel on exit

    async def _pump(self, request: UpstreamRequest, send: trio.MemorySendChannel[_Item]) -> None:
        try:
            async with super().open_response(request) as response:
                send.send_nowait(response.content_type)
                async for chunk in response.body:
                    send.send_nowait(chunk)
        except UpstreamError as exc:
            send.send_nowait(exc)
        send.close()


_Item = str | bytes | Exception


class _Drain:
    """The body: what the pump sent (a plain iterator — nothing to close, the bug is the
    pump's)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[_Item]) -> None:
        self._receive = receive

    def __aiter__(self) -> _Drain:
        return self

    async def __anext__(self) -> bytes:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, bytes)
        return item


class SwallowsErrors(OpenAIBackend):
    """Ends the body quietly when the upstream fails mid-stream."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        async with super().open_response(request) as response:
            yield UpstreamResponse(response.status, response.content_type, _quiet(response.body))


async def _quiet(body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in body:
            yield chunk
    except UpstreamError:
        return  # the bug: the client will see a stream that simply ends


class LeavesBodyOpen(OpenAIBackend):
    """Wraps the body in a generator of its own and never closes it: the upstream is closed
    (the inner context sees to that), but the wrapper's cleanup waits for the garbage
    collector."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        async with super().open_response(request) as response:
            body = _relay(response.body)
            yield UpstreamResponse(response.status, response.content_type, body)  # the bug


async def _relay(body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    async for chunk in body:
        yield chunk


class HidesStatus(OpenAIBackend):
    """Raises its own exception for an upstream error status, not an UpstreamError."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        try:
            async with super().open_response(request) as response:
                yield response
        except UpstreamStatusError as exc:
            raise RuntimeError(f"upstream said {exc.status}") from None  # the bug


class EntersEarly(OpenAIBackend):
    """Hands out a response before the upstream answered."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        async def body() -> AsyncGenerator[bytes, None]:
            async with super(EntersEarly, self).open_response(request) as response:
                async for chunk in response.body:
                    yield chunk

        yield UpstreamResponse(200, "text/event-stream", body())


class OpensEarly(OpenAIBackend):
    """Yields an opening chunk of its own before the upstream's first byte."""

    @asynccontextmanager
    async def open_response(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        async with super().open_response(request) as response:

            async def body() -> AsyncGenerator[bytes, None]:
                yield b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'
                async for chunk in response.body:
                    yield chunk

            yield UpstreamResponse(response.status, response.content_type, body())


B = TypeVar("B", bound=Backend)


def _conformance(fake: FakeOpenAI, backend_class: type[B]) -> Conformance[B]:
    return Conformance(
        type_name="openai",
        backend_class=backend_class,
        settings={"url": fake.url},
        script=_script,
        open_requests=lambda backend: fake.active,
    )


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    upstream = FakeOpenAI()
    await nursery.start(upstream.serve)
    return upstream


@pytest.mark.parametrize("phase", ["awaiting_headers", "prefill", "streaming", "abandoned"])
async def test_a_backend_leaking_its_upstream_on_cancel_fails(
    fake: FakeOpenAI, phase: Phase
) -> None:
    with pytest.raises(
        ConformanceFailure,
        match=r"1 upstream request\(s\) still open and 1 task\(s\) started by the backend still",
    ):
        await _conformance(fake, LeaksOnCancel).check_cancel(phase)


async def test_a_leaking_backend_fails_when_a_client_disconnects_through_the_gateway(
    fake: FakeOpenAI,
) -> None:
    with pytest.raises(ConformanceFailure, match=r"still open .* close the upstream request"):
        await _conformance(fake, LeaksOnCancel).check_gateway_disconnect("streaming")


async def test_the_leaking_backend_is_otherwise_fine(fake: FakeOpenAI) -> None:
    """The leak is the only fault: a complete answer passes, so the failures above are the
    suite seeing the leak, not something else."""
    await _conformance(fake, LeaksOnCancel).check_answer("chat/completions", True)


async def test_a_backend_leaving_its_body_generator_open_fails(fake: FakeOpenAI) -> None:
    """A consumer that stops reading leaves the generator suspended (one cancelled while
    reading ends it by the exception); only the backend can close it then."""
    with pytest.raises(ConformanceFailure, match="body generator still suspended"):
        await _conformance(fake, LeavesBodyOpen).check_cancel("abandoned")


async def test_a_backend_swallowing_a_mid_stream_error_fails(fake: FakeOpenAI) -> None:
    with pytest.raises(ConformanceFailure, match="ended without an error"):
        await _conformance(fake, SwallowsErrors).check_error_mid_stream()


async def test_a_backend_disguising_an_error_status_fails(fake: FakeOpenAI) -> None:
    with pytest.raises(ConformanceFailure, match=r"RuntimeError.*not a gateway error"):
        await _conformance(fake, HidesStatus).check_error_status()


async def test_a_backend_entering_before_the_upstream_answers_fails(fake: FakeOpenAI) -> None:
    with pytest.raises(ConformanceFailure, match="entered before the upstream answered"):
        await _conformance(fake, EntersEarly).check_cancel("awaiting_headers")


async def test_a_backend_yielding_before_the_upstream_fails_at_once_saying_so(
    fake: FakeOpenAI,
) -> None:
    # It waited 20 s for a prefill phase the relay had passed, then blamed a hang.
    with trio.fail_after(5), pytest.raises(ConformanceFailure, match="the relay is streaming"):
        await _conformance(fake, OpensEarly).check_gateway_disconnect("prefill")


@pytest.mark.parametrize("phase", ["awaiting_headers", "prefill", "streaming", "abandoned"])
async def test_the_real_backend_passes_the_same_checks(fake: FakeOpenAI, phase: Phase) -> None:
    conformance = _conformance(fake, OpenAIBackend)
    await conformance.check_cancel(phase)
    await conformance.check_error_mid_stream()
    await conformance.check_error_status()


def test_only_optional_cases_can_be_declared_not_applicable() -> None:
    with pytest.raises(TypeError, match="applies to every backend"):

        class TestNoStreams(BackendConformance):
            not_applicable: ClassVar[Mapping[CaseName, str]] = {"endless": "no streams here"}


def test_a_case_declared_not_applicable_removes_its_tests() -> None:
    class TestInProcess(BackendConformance):
        not_applicable: ClassVar[Mapping[CaseName, str]] = {"connect_error": "no network"}

    assert TestInProcess.test_connect_error is None
    assert TestInProcess.test_gateway_connect_error is None
    assert callable(TestInProcess.test_answer)
    assert callable(BackendConformance.test_connect_error)


class _Typed(BackendConformance[FakeOpenAI, OpenAIBackend]):
    type_name = "openai"
    backend_class = OpenAIBackend


def test_a_parametrized_suite_is_a_plain_test_class() -> None:
    """Generic[...] adds no constructor (pytest collects only classes without one)."""
    assert _Typed.__init__ is object.__init__
    assert _Typed.backend_class is OpenAIBackend
    assert callable(_Typed.test_answer)


def _mentions_any(annotation: object) -> bool:
    """Whether an annotation (a string, under ``from __future__ import annotations``)
    names ``Any``; the aliases it may name (SettingsTable, JSONLike) are free of it."""
    return (
        re.search(r"\bAny\b", annotation if isinstance(annotation, str) else repr(annotation))
        is not None
    )


@pytest.mark.parametrize("cls", [BackendConformance, Conformance, Script, Case])
def test_no_public_hook_or_check_of_the_suite_is_typed_any(cls: type) -> None:
    """What an author writes or calls is typed: no Any in a public method's parameters or
    return, nor in a public field."""
    found = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        function = getattr(member, "__wrapped__", member)  # pytest fixtures wrap theirs
        if inspect.isfunction(function):
            annotations = function.__annotations__
            found += [f"{name}({key})" for key, hint in annotations.items() if _mentions_any(hint)]
    for klass in cls.__mro__:
        fields = vars(klass).get("__annotations__", {})
        found += [f"{klass.__name__}.{key}" for key, hint in fields.items() if _mentions_any(hint)]
    assert found == []


def test_the_any_finder_finds_it() -> None:
    assert _mentions_any("Mapping[str, Any]")
    assert _mentions_any("Any")
    assert not _mentions_any("SettingsTable")
    assert not _mentions_any("Many | AnyStr")
