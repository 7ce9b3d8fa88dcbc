"""What every check stands on: the backend under test, built and run from the author's
settings and scripts, and the probes that say whether an exchange left anything behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from math import inf
from typing import Generic

import pydantic
import trio
from typing_extensions import TypeVar

from ...abc import Backend, Endpoint, JSONObject, UpstreamRequest
from ..openai_shapes import Answer, ShapeError, check_stream, check_unary, parse_sse
from ..waiting import wait_until
from ._cases import (
    BACKEND_ID,
    Case,
    CaseName,
    JSONLike,
    Script,
    SettingsTable,
    as_json,
    base_body,
    merge,
)
from ._failure import CHECK_TIMEOUT, ConformanceFailure, deadline, fail, tasks_below, unwrapped

POLL = 0.005  # how often a wait on the author's open_requests() looks again

BackendT = TypeVar("BackendT", bound=Backend, default=Backend)
"""The backend class under test, so the author's ``open_requests`` gets it as itself."""


class Harness(Generic[BackendT]):
    """The backend under test and how to drive it. :class:`~.Conformance` adds the checks.

    ``settings`` is a valid ``[backends.<id>]`` table without ``type``; ``script(case)``
    makes the upstream behave as the case says; ``open_requests(backend)`` counts the
    upstream requests not closed yet; ``invalid_settings`` holds ``(patch, dotted path)``
    pairs that must be rejected at that path. ``close_within`` bounds how long a closed
    exchange may take to show as closed upstream; ``check_timeout`` how long one whole
    check may take before it counts as hung (raise it for a slow model on a slow machine).
    """

    def __init__(
        self,
        *,
        type_name: str,
        backend_class: type[BackendT],
        settings: SettingsTable,
        script: Callable[[Case], Script],
        open_requests: Callable[[BackendT], int],
        endpoints: Sequence[Endpoint] = ("chat/completions", "completions"),
        reports_usage: bool = True,
        close_within: float = 0.5,
        check_timeout: float = CHECK_TIMEOUT,
        invalid_settings: Sequence[tuple[SettingsTable, str]] = (),
    ) -> None:
        self.type_name = type_name
        self.backend_class = backend_class
        self.settings = dict(settings)
        self.script = script
        self.open_requests = open_requests
        self.endpoints = tuple(endpoints)
        self.reports_usage = reports_usage
        self.close_within = close_within
        self.check_timeout = check_timeout
        self.invalid_settings = tuple(invalid_settings)

    def table(self, script: Script, extra: SettingsTable | None = None) -> dict[str, JSONLike]:
        """The settings table of one case: the author's, the script's, then ``extra``."""
        table = merge({"type": self.type_name, **self.settings}, script.settings)
        return merge(table, extra or {})

    def body(self, case: Case, script: Script) -> JSONObject:
        return {
            key: as_json(value)
            for key, value in merge(base_body(case.endpoint, case.stream), script.body).items()
        }

    def request(self, case: Case, script: Script, n: int = 0) -> UpstreamRequest:
        request_id = f"conformance-{case.name}-{n}"
        return UpstreamRequest(
            endpoint=case.endpoint,
            body=self.body(case, script),
            stream=case.stream,
            request_id=request_id,
            headers={"x-request-id": request_id},
        )

    def case(
        self,
        name: CaseName,
        *,
        stream: bool = True,
        endpoint: Endpoint | None = None,
        seconds: float = 0.0,
    ) -> tuple[Case, Script]:
        case = Case(name, endpoint or self.endpoints[0], stream, seconds)
        script = self.script(case)
        if not isinstance(script, Script):
            fail(f"script({case}) returned {script!r}, not a Script")
        return case, script

    @asynccontextmanager
    async def running(self, script: Script) -> AsyncIterator[BackendT]:
        """A backend built from the case's settings, inside its ``running()``."""
        try:
            settings = self.backend_class.Settings.model_validate(self.table(script))
        except pydantic.ValidationError as exc:
            fail(f"the settings of this case do not validate:\n{exc}")
        backend = self.backend_class(BACKEND_ID, settings)
        with unwrapped():
            async with backend.running():
                yield backend

    def answer(self, endpoint: Endpoint, stream: bool, raw: bytes, where: str) -> Answer:
        try:
            if stream:
                return check_stream(endpoint, parse_sse(raw), usage=self.reports_usage)
            return check_unary(endpoint, raw, usage=self.reports_usage)
        except ShapeError as exc:
            fail(f"{where}: {exc}")

    async def read(self, backend: BackendT, request: UpstreamRequest, what: str) -> bytes:
        """Enter ``open_response``, check the response's head, and read the whole body."""
        chunks: list[bytes] = []
        try:
            async with backend.open_response(request) as response:
                if not 200 <= response.status < 300:
                    fail(f"{what}: entered with status {response.status}, not 2xx")
                expected = "text/event-stream" if request.stream else "application/json"
                if not response.content_type.lower().startswith(expected):
                    fail(f"{what}: content type {response.content_type!r}, not {expected}")
                async for chunk in response.body:
                    if not isinstance(chunk, bytes):
                        fail(f"{what}: the body yielded {type(chunk).__name__}, not bytes")
                    chunks.append(chunk)
        except ConformanceFailure:
            raise
        except Exception as exc:
            fail(f"{what}: the backend raised {exc!r}")
        return b"".join(chunks)

    async def settled(self, backend: BackendT, tasks: int | None, after: str) -> None:
        """Wait up to ``close_within`` until the upstream requests are closed and (when
        ``tasks`` is given) no more tasks run below this one than ``tasks``."""
        limit = trio.current_time() + self.close_within
        while True:
            open_now = self.open_requests(backend)
            tasks_now = tasks_below(trio.lowlevel.current_task()) if tasks is not None else 0
            if open_now == 0 and (tasks is None or tasks_now <= tasks):
                return
            if trio.current_time() >= limit:
                problems = []
                if open_now:
                    problems.append(f"{open_now} upstream request(s) still open")
                if tasks is not None and tasks_now > tasks:
                    problems.append(f"{tasks_now - tasks} task(s) started by the backend still run")
                fail(
                    f"{after}: {' and '.join(problems)} after {self.close_within:g} s — "
                    "leaving open_response must close the upstream request at once"
                )
            await trio.sleep(POLL)

    async def wait_open(self, backend: BackendT, what: str) -> None:
        """Wait until the author's ``open_requests`` sees the request upstream."""
        with deadline(
            f"{what}: waiting for open_requests() to report the request", self.check_timeout
        ):
            await wait_until(lambda: self.open_requests(backend) >= 1, within=inf, interval=POLL)
