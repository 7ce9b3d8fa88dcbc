"""The suite as a pytest base class: subclass it, fill in the hooks, get every test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Generic, cast

import pytest
from typing_extensions import TypeVar

from ...abc import Endpoint
from ._cases import Case, CaseName, Script, SettingsTable
from ._checks import Conformance
from ._failure import CHECK_TIMEOUT
from ._harness import BackendT

UpstreamT = TypeVar("UpstreamT", default=None)
"""What the backend under test talks to (a fake server, a model file), as the ``upstream``
fixture returns it; ``None`` for a backend with no upstream."""

# The tests that need each case; a backend that cannot produce a case loses them.
TESTS_OF_CASE: dict[CaseName, tuple[str, ...]] = {
    "answer": ("test_answer", "test_concurrent_streams", "test_gateway_answer"),
    "error_status": ("test_error_status_before_first_byte", "test_gateway_error_status"),
    "connect_error": ("test_connect_error", "test_gateway_connect_error"),
    "error_mid_stream": ("test_error_after_first_byte", "test_gateway_error_after_first_byte"),
    "stall": ("test_gateway_stall_hits_idle_timer",),
    "gap": ("test_gateway_heartbeats_fill_gaps",),
    "hang_before_headers": (
        "test_cancel_awaiting_headers",
        "test_gateway_disconnect_awaiting_headers",
    ),
    "hang_after_headers": ("test_cancel_prefill", "test_gateway_disconnect_prefill"),
    "endless": (
        "test_cancel_streaming",
        "test_cancel_abandoned",
        "test_gateway_disconnect_streaming",
    ),
}
_REQUIRED: frozenset[CaseName] = frozenset({"answer", "endless"})


class BackendConformance(Generic[UpstreamT, BackendT]):
    """Base class of a backend's conformance tests; see the package docstring.

    Parametrize it with the upstream's type and the backend class —
    ``BackendConformance[MyFake, MyBackend]`` — and every hook gets them typed as such.
    Required: :attr:`type_name`, :attr:`backend_class`, :meth:`settings`, :meth:`script`,
    :meth:`open_requests`; override the :meth:`upstream` fixture to start the upstream.
    A backend that cannot produce a case (an in-process model has no network to fail)
    names it in :attr:`not_applicable` with the reason; its tests are then not collected.
    ``answer`` and ``endless`` apply to every backend.
    """

    type_name: ClassVar[str]
    backend_class: type[BackendT]  # set on the class, like type_name
    endpoints: ClassVar[tuple[Endpoint, ...]] = ("chat/completions", "completions")
    reports_usage: ClassVar[bool] = True
    close_within: ClassVar[float] = 0.5
    check_timeout: ClassVar[float] = CHECK_TIMEOUT
    not_applicable: ClassVar[Mapping[CaseName, str]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for case, reason in cls.not_applicable.items():
            if case in _REQUIRED:
                raise TypeError(f"{cls.__name__}: case {case!r} applies to every backend")
            if case not in TESTS_OF_CASE or not reason:
                raise TypeError(
                    f"{cls.__name__}.not_applicable: {case!r} needs a known case and a reason"
                )
            for name in TESTS_OF_CASE[case]:
                setattr(cls, name, None)  # pytest collects only callables

    @pytest.fixture
    def upstream(self) -> UpstreamT:
        """What the backend talks to (a fake server, say); passed to the hooks below.
        Override it unless the backend has no upstream: this default is ``None``."""
        return cast(UpstreamT, None)  # right for the default UpstreamT, None

    def settings(self, upstream: UpstreamT) -> SettingsTable:
        """A valid settings table for a backend reaching ``upstream``, without ``type``."""
        raise NotImplementedError

    def script(self, upstream: UpstreamT, case: Case) -> Script:
        """How to make ``upstream`` behave as ``case`` says; see the package docstring."""
        raise NotImplementedError

    def open_requests(self, upstream: UpstreamT, backend: BackendT) -> int:
        """Upstream requests of ``backend`` that are not closed yet, as the upstream (or the
        backend's own bookkeeping, when there is no upstream) sees them."""
        raise NotImplementedError

    def invalid_settings(self, upstream: UpstreamT) -> Sequence[tuple[SettingsTable, str]]:
        """``(patch, dotted path)`` pairs: settings merged with the patch must be rejected
        with an error at ``backends.<id>.<path>``."""
        return ()

    @pytest.fixture
    def conformance(self, upstream: UpstreamT) -> Conformance[BackendT]:
        return Conformance(
            type_name=self.type_name,
            backend_class=self.backend_class,
            settings=self.settings(upstream),
            script=lambda case: self.script(upstream, case),
            open_requests=lambda backend: self.open_requests(upstream, backend),
            endpoints=self.endpoints,
            reports_usage=self.reports_usage,
            close_within=self.close_within,
            check_timeout=self.check_timeout,
            invalid_settings=self.invalid_settings(upstream),
        )

    # Settings and registration (async only because the upstream fixture may be).

    async def test_settings_class(self, conformance: Conformance[BackendT]) -> None:
        conformance.check_settings_class()

    async def test_settings_valid(self, conformance: Conformance[BackendT]) -> None:
        conformance.check_settings_valid()

    async def test_settings_unknown_keys_rejected(self, conformance: Conformance[BackendT]) -> None:
        conformance.check_unknown_keys()

    async def test_settings_invalid_values_rejected(
        self, conformance: Conformance[BackendT]
    ) -> None:
        conformance.check_invalid_settings()

    async def test_registered_entry_point(self, conformance: Conformance[BackendT]) -> None:
        conformance.check_registered()

    # The backend, directly.

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
    async def test_answer(self, conformance: Conformance[BackendT], stream: bool) -> None:
        for endpoint in self.endpoints:
            await conformance.check_answer(endpoint, stream)

    async def test_concurrent_streams(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_concurrent()

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
    async def test_error_status_before_first_byte(
        self, conformance: Conformance[BackendT], stream: bool
    ) -> None:
        await conformance.check_error_status(stream)

    async def test_connect_error(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_connect_error()

    async def test_error_after_first_byte(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_error_mid_stream()

    async def test_cancel_awaiting_headers(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_cancel("awaiting_headers")

    async def test_cancel_prefill(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_cancel("prefill")

    async def test_cancel_streaming(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_cancel("streaming")

    async def test_cancel_abandoned(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_cancel("abandoned")

    # Through a gateway served on port 0.

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
    async def test_gateway_answer(self, conformance: Conformance[BackendT], stream: bool) -> None:
        for endpoint in self.endpoints:
            await conformance.check_gateway_answer(endpoint, stream)

    async def test_gateway_error_status(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_error_status()

    async def test_gateway_connect_error(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_connect_error()

    async def test_gateway_error_after_first_byte(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_error_mid_stream()

    async def test_gateway_stall_hits_idle_timer(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_stall()

    async def test_gateway_heartbeats_fill_gaps(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_gap()

    async def test_gateway_disconnect_awaiting_headers(
        self, conformance: Conformance[BackendT]
    ) -> None:
        await conformance.check_gateway_disconnect("awaiting_headers")

    async def test_gateway_disconnect_prefill(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_disconnect("prefill")

    async def test_gateway_disconnect_streaming(self, conformance: Conformance[BackendT]) -> None:
        await conformance.check_gateway_disconnect("streaming")
