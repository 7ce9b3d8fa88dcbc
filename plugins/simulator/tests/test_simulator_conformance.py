"""The simulator passes the gateway's backend conformance suite: every case is a setting."""

from __future__ import annotations

from collections.abc import Sequence

from trio_gateway_simulator import SimulatorBackend

from gateway.testing.conformance import BackendConformance, Case, Script, SettingsTable

_CASES: dict[str, SettingsTable] = {
    "answer": {},
    "error_status": {"fault": "status", "fault_status": 503},
    "connect_error": {"fault": "refuse"},
    "error_mid_stream": {"fault": "error_mid_stream", "fault_after": 2},
    "stall": {"fault": "stall", "fault_after": 2},
    "hang_before_headers": {"time_to_headers": 3600},
    "hang_after_headers": {"prefill": 3600},
    "endless": {"max_tokens": 10**9, "tokens_per_second": 200},
}


class TestSimulator(BackendConformance[None, SimulatorBackend]):
    type_name = "simulator"
    backend_class = SimulatorBackend

    def settings(self, upstream: None) -> SettingsTable:
        return {"max_tokens": 6, "tokens_per_second": 1000}

    def script(self, upstream: None, case: Case) -> Script:
        if case.name == "gap":
            return Script(settings={"gaps": [{"at": 2, "seconds": case.seconds}]})
        return Script(settings=_CASES[case.name], status=503)

    def open_requests(self, upstream: None, backend: SimulatorBackend) -> int:
        return backend.active

    def invalid_settings(self, upstream: None) -> Sequence[tuple[SettingsTable, str]]:
        return [
            ({"tokens_per_second": 0}, "tokens_per_second"),
            ({"fault": "explode"}, "fault"),
            ({"gaps": [{"at": 1, "seconds": -1}]}, "gaps.0.seconds"),
            ({"text": "   "}, "text"),
        ]
