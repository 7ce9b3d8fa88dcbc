"""All the checks, on one object."""

from __future__ import annotations

from ._direct import DirectChecks
from ._harness import BackendT
from ._settings_checks import SettingsChecks
from ._through_gateway import GatewayChecks


class Conformance(SettingsChecks[BackendT], DirectChecks[BackendT], GatewayChecks[BackendT]):
    """The checks. Build one from the backend and its upstream (see :class:`~._harness.Harness`
    for the arguments); each ``check_*`` method runs one check and raises
    :class:`~._failure.ConformanceFailure` if the backend breaks the contract."""
