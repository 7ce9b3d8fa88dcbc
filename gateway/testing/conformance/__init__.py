"""The backend conformance suite: the contract of :mod:`gateway.abc`, checked.

Every backend — built in or plugin — must pass it. Subclass :class:`BackendConformance` in a
test module, name the subclass ``Test...``, and provide the backend, its upstream and a
script for each case::

    class TestMyBackend(BackendConformance[MyFakeUpstream, MyBackend]):
        type_name = "mybackend"              # its entry-point name
        backend_class = MyBackend

        @pytest.fixture
        async def upstream(self, nursery: trio.Nursery) -> MyFakeUpstream:
            fake = MyFakeUpstream()          # start what the backend talks to
            await nursery.start(fake.serve)
            return fake

        def settings(self, upstream: MyFakeUpstream) -> SettingsTable:
            return {"url": upstream.url}     # a valid [backends.<id>] table, without `type`

        def script(self, upstream: MyFakeUpstream, case: Case) -> Script:
            ...                              # make the upstream behave as `case` says
            return Script(body={...}, settings={...}, status=...)

        def open_requests(self, upstream: MyFakeUpstream, backend: MyBackend) -> int:
            return upstream.active           # upstream requests not closed yet

The type arguments are what the ``upstream`` fixture returns (``None``, the default, for a
backend with no upstream) and the backend class: each hook gets them typed as such.

Most checks run twice: against the backend directly (enter ``open_response``, read the
body, cancel) and through a real gateway served on port 0 (heartbeats, timers, error
mapping, client disconnects). The cases a script must produce:

======================= ==================================================================
``answer``              a normal answer with at least two content pieces, a finish reason,
                        and usage when the request asks (``stream_options.include_usage``)
``error_status``        the upstream refuses before the first byte; :attr:`Script.status`
                        says which status the client must see
``connect_error``       the upstream cannot be reached (say, ``Script(settings={"url":
                        ...})`` with :func:`~gateway.testing.serving.unused_port`)
``error_mid_stream``    the upstream fails after at least one data event (the backend raises,
                        or hands on the upstream's own OpenAI error event)
``stall``               at least one data event, then silence with the connection open
``gap``                 at least one data event, a pause of ``case.seconds``, then the rest
``hang_before_headers`` the upstream takes the request and never answers
``hang_after_headers``  the upstream answers 2xx, then sends no body byte, ever
``endless``             data events keep coming (one every few ms) for minutes
======================= ==================================================================

A backend that cannot produce a case names it, with the reason, in
``BackendConformance.not_applicable``; only ``answer`` and ``endless`` are required of all.

What "nothing leaked" means here: after every exchange — complete, failed, cancelled in any
phase, or abandoned by its consumer — ``open_requests`` is back to 0 within ``close_within``
seconds, and no task started by the backend is still running (tasks are counted under the
task that entered ``Backend.running()``).

The checks are methods of :class:`Conformance`, usable without the pytest class; each
raises :class:`ConformanceFailure` (an ``AssertionError``) that says what broke the
contract. This package needs pytest and pytest-trio (``trio_mode = true``).
"""

from ._cases import Case, CaseName, JSONLike, Phase, Script, SettingsTable
from ._checks import Conformance
from ._failure import ConformanceFailure
from ._pytest import BackendConformance

__all__ = [
    "BackendConformance",
    "Case",
    "CaseName",
    "Conformance",
    "ConformanceFailure",
    "JSONLike",
    "Phase",
    "Script",
    "SettingsTable",
]
