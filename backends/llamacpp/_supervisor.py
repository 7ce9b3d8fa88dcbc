"""Managed mode: one llama-server kept alive for the backend's lifetime.

Start it, wait until its ``/health`` answers 200 (logging progress), watch it; when it
exits or does not become healthy within ``start_timeout``, start it again after a delay
that doubles per failure (``restart_delay`` up to ``restart_delay_max``) and resets once a
start becomes healthy. While it starts the backend is ``loading``; between a crash and the
next start it is ``down``. Cancellation stops the process (SIGTERM, then SIGKILL after
``stop_grace``).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable

import trio

from gateway.abc import BackendStatus

from ._launch import Launch
from ._probe import Probe
from ._process import ServerProcess, open_process
from ._settings import LlamaCppSettings

log = logging.getLogger("gateway.backends.llamacpp")
server_log = logging.getLogger("gateway.backends.llamacpp.server")

# How often /health is read while a start is under way (at most; a shorter poll_interval
# wins), and how often a progress line is logged meanwhile.
_START_POLL = 0.1
_PROGRESS_EVERY = 2.0


class Supervisor:
    """Keeps one llama-server running. ``serving`` is true while the current process has
    passed its health check; until then ``status`` is what the backend should report."""

    def __init__(
        self,
        backend_id: str,
        launch: Launch,
        settings: LlamaCppSettings,
        probe: Probe,
        publish: Callable[[BackendStatus], None],
    ) -> None:
        self.backend_id = backend_id
        self.launch = launch
        self.settings = settings
        self.serving = False
        self.status = BackendStatus(health="loading", detail="starting llama-server")
        self.process: ServerProcess | None = None
        self.starts = 0
        self._probe = probe
        self._publish = publish

    def _set(self, status: BackendStatus) -> None:
        self.status = status
        self._publish(status)

    def _log_line(self, line: str) -> None:
        server_log.info("[%s] %s", self.backend_id, line)

    async def serve(self) -> None:
        """Run until cancelled; cancellation stops the current process."""
        delay = self.settings.restart_delay
        while True:
            if await self._run_once():
                delay = self.settings.restart_delay
            self._set(
                BackendStatus(health="down", detail=f"restarting llama-server in {delay:g} s")
            )
            await trio.sleep(delay)
            delay = min(delay * 2, self.settings.restart_delay_max)

    async def _run_once(self) -> bool:
        """Start one process and keep it until it exits or fails to start; return whether
        it became healthy."""
        s = self.settings
        self.starts += 1
        log.info(
            "backend %s: starting llama-server: %s", self.backend_id, shlex.join(self.launch.argv)
        )
        healthy = False
        try:
            async with open_process(
                self.launch.argv,
                env=self.launch.env,
                on_line=self._log_line,
                stop_grace=s.stop_grace,
            ) as process:
                self.process = process
                healthy = await self._wait_healthy(process)
                if healthy:
                    self.serving = True
                    await process.exited.wait()
        except OSError as exc:  # cannot execute the binary (it was there at start-up)
            log.error("backend %s: cannot start llama-server: %s", self.backend_id, exc)
            return False
        finally:
            self.serving = False
        if healthy:
            log.error(
                "backend %s: llama-server pid %d exited with code %s",
                self.backend_id,
                process.pid,
                process.returncode,
            )
        return healthy

    async def _wait_healthy(self, process: ServerProcess) -> bool:
        started = trio.current_time()
        next_progress = started + _PROGRESS_EVERY
        detail = ""
        self._set(
            BackendStatus(health="loading", detail=f"llama-server pid {process.pid} starting")
        )
        with trio.move_on_after(self.settings.start_timeout):
            while not process.exited.is_set():
                status = await self._probe.health()
                waited = trio.current_time() - started
                if status.health == "ready":
                    log.info(
                        "backend %s: llama-server pid %d is ready on %s after %.1f s",
                        self.backend_id,
                        process.pid,
                        self.launch.url,
                        waited,
                    )
                    self._set(BackendStatus(health="ready"))
                    return True
                now_detail = status.detail if status.health == "loading" else "not listening yet"
                if now_detail != detail:
                    detail = now_detail
                    self._set(
                        BackendStatus(
                            health="loading", detail=f"llama-server pid {process.pid}: {detail}"
                        )
                    )
                if trio.current_time() >= next_progress:
                    log.info(
                        "backend %s: waiting for llama-server pid %d to become healthy "
                        "(%s, %.0f s so far)",
                        self.backend_id,
                        process.pid,
                        detail,
                        waited,
                    )
                    next_progress += _PROGRESS_EVERY
                with trio.move_on_after(min(_START_POLL, self.settings.poll_interval)):
                    await process.exited.wait()
            log.error(
                "backend %s: llama-server pid %d exited with code %s while starting",
                self.backend_id,
                process.pid,
                process.returncode,
            )
            return False
        log.error(
            "backend %s: llama-server pid %d not healthy within %g s; restarting it",
            self.backend_id,
            process.pid,
            self.settings.start_timeout,
        )
        return False
