"""How a check reports a broken contract, and the small probes every check shares."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import trio

from ...errors import GatewayError

CHECK_TIMEOUT = 20.0  # a check that takes longer is hung somewhere


class ConformanceFailure(AssertionError):
    """The backend broke the contract of :mod:`gateway.abc`; the message says how."""


def fail(message: str) -> NoReturn:
    raise ConformanceFailure(message)


@contextmanager
def unwrapped() -> Iterator[None]:
    """Let a failure out of a nursery (the backend's, the test gateway's) as itself, not
    inside an exception group, so the author reads the message and pytest.raises sees it."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _ = group.split(ConformanceFailure)
        if matched is None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


@contextmanager
def deadline(what: str, seconds: float = CHECK_TIMEOUT) -> Iterator[None]:
    """Fail the check, naming ``what``, if the block is not done within ``seconds``."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        fail(f"{what}: not done after {seconds:g} s — something waits forever")


def tasks_below(task: trio.lowlevel.Task) -> int:
    """How many tasks run in nurseries below ``task``, at any depth."""
    return sum(
        1 + tasks_below(child) for nursery in task.child_nurseries for child in nursery.child_tasks
    )


def gateway_error(exc: BaseException) -> GatewayError | None:
    """The GatewayError ``exc`` is, or the first of a group made only of them — what the
    relay reports to the client either way."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(GatewayError)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            assert isinstance(leaf, GatewayError)
            return leaf
    return None


def left_open(body: object) -> bool:
    """Whether ``body`` is an async generator that started and is suspended — neither run to
    its end nor closed, so its ``finally`` blocks (the upstream's cleanup) have not run."""
    if not inspect.isasyncgen(body):
        return False
    state = getattr(inspect, "getasyncgenstate", None)  # Python 3.12+
    if state is not None:
        return bool(state(body) == "AGEN_SUSPENDED")
    frame = body.ag_frame
    return frame is not None and frame.f_lasti > 0
