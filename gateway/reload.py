"""Config reload without a restart (SIGHUP, or ``gateway reload``).

The file is read and validated in full first; a file that does not validate is refused
(logged with its dotted-path error, counted) and the running config serves on untouched.
A good file is swapped in at once — routes, aliases, targets, strategies, keepalive
policies, teams, keys, limits and backends — in one step with no checkpoint inside, so no
request ever sees half of it. A request keeps what it started with to its end
(:meth:`gateway.proxy.ProxyApp.prepare` reads the config once), so a stream running
through a reload finishes exactly as it would have.

Backends: one whose settings did not change — or only its ``keepalive``, the gateway's
policy, which is swapped in with the rest — is kept as it is (its pools, its managed
process, its queue and health state); a new or changed one is started before the swap —
if one fails to start (or, replacing a ready one, is not ready within
:data:`READY_TIMEOUT`: a managed server loads its model first), the reload is refused and
the ones started are stopped again; a removed or replaced one is stopped after the swap,
once no request may still reach it.

Some settings cannot change in a running process: the sections in :data:`RESTART_ONLY`
(the listener, the state store, the databases, the tracer) and turning auth on or off. A
reload that changes them applies the rest, logs what was left as it was, and keeps those
as they were.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import trio

from .abc import Backend, BackendSettings
from .config import GatewayConfig, read_config
from .errors import ConfigError
from .registry import load_registry
from .routing import Router
from .service import Gateway, Upstream, build_backend
from .teams import auth_enabled

log = logging.getLogger("gateway.reload")

RESTART_ONLY = ("server", "state", "usage", "responses", "tracing")
# How long a backend that replaces a ready one may take to be ready (a model to load).
READY_TIMEOUT = 600.0
_READY_POLL = 0.05


class ReloadError(Exception):
    """A new backend that did not come up: the reload is refused."""


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The sections of ``new`` that differ from ``old`` but need a restart to apply."""
    changed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if auth_enabled(old) != auth_enabled(new):
        changed += ["auth", "teams"]  # auth on or off: the usage database, the state
    return changed


def in_force(old: GatewayConfig, new: GatewayConfig) -> tuple[GatewayConfig, list[str]]:
    """``new`` as a reload over ``old`` puts it in force — the sections that need a restart
    as they were in ``old`` — and the names of those sections that ``new`` changed."""
    kept = restart_only_changes(old, new)
    return dataclasses.replace(new, **{name: getattr(old, name) for name in kept}), kept


async def reload_config(gateway: Gateway, path: Path, nursery: trio.Nursery) -> bool:
    """Read ``path`` and put it in force; ``nursery`` runs the stopping of the backends it
    replaced or removed. Returns whether the reload was applied."""
    old = gateway.config
    registry = gateway.registry if gateway.registry is not None else load_registry()
    try:
        new, digest = read_config(path, registry=registry)
        if gateway.adapt is not None:
            new = gateway.adapt(new)
    except ConfigError as error:
        log.error("config reload refused, the running config is kept: %s", error.message)
        gateway.telemetry.on_reload(False)
        return False
    except Exception:  # a reload never takes the serving gateway down
        log.exception("config reload refused, the running config is kept: reading it failed")
        gateway.telemetry.on_reload(False)
        return False
    new, kept = in_force(old, new)
    if kept:
        log.warning(
            "config reload: %s changed, which needs a restart; left as they were",
            ", ".join(kept),
        )

    # The backends to start: new ones and changed ones (under their ids, as built anew).
    current = gateway.upstreams
    unchanged = {
        id: upstream
        for id, upstream in current.items()
        if id in new.backends and _same_backend(upstream.backend.settings, new.backends[id])
    }
    hosts = gateway.hosts
    assert hosts is not None, "a gateway from open_gateway"
    started = []
    starting = ""
    try:
        for id, settings in new.backends.items():
            if id in unchanged:
                continue
            starting = id
            backend = build_backend(id, settings, registry)
            await hosts.start(backend)
            started.append(backend)
        for backend in started:
            starting = backend.id
            replaced = current.get(backend.id)
            if replaced is not None and replaced.backend.status.ready:
                await _until_ready(backend)
    except Exception as error:
        log.error(
            "config reload refused, the running config is kept: backend %s did not start: %s",
            starting,
            error,
        )
        for backend in started:
            await hosts.stop(backend)
        gateway.telemetry.on_reload(False)
        return False
    made = {b.id: Upstream.of(b, gateway.link, current.get(b.id)) for b in started}
    upstreams = {id: unchanged.get(id) or made[id] for id in new.backends}
    retired = [u for id, u in current.items() if upstreams.get(id) is not u]

    # The swap: no checkpoint from here to its end.
    gateway.config = new
    for id, upstream in unchanged.items():  # the gateway's own policy: the backend is kept
        upstream.keepalive = new.backends[id].keepalive
    gateway.upstreams = upstreams
    gateway.router = Router(new.routes)
    if gateway.teams is not None:
        gateway.teams = gateway.teams.reloaded(new)
    gateway.telemetry.on_config(digest)
    gateway.telemetry.on_reload(True)
    log.info(
        "config reloaded (%s): %d route(s), %d team(s); backends started: %s; stopping "
        "once unused: %s",
        digest,
        len(new.routes),
        len(new.teams),
        ", ".join(b.id for b in started) or "none",
        ", ".join(u.id for u in retired) or "none",
    )
    for upstream in retired:
        nursery.start_soon(_retire, gateway, upstream)
    return True


async def _until_ready(backend: Backend) -> None:
    """Wait until a backend that replaces a ready one is ready itself (a managed server
    that is still loading its model is not), so that its route never goes without a
    ready backend: the old one serves until the swap. Raises :class:`ReloadError` after
    :data:`READY_TIMEOUT` seconds."""
    if backend.status.ready:
        return
    log.info("config reload: waiting for backend %s to be ready before the swap", backend.id)
    with trio.move_on_after(READY_TIMEOUT):
        # `status` is a plain attribute backends (plugins too) assign: no event to wait on.
        while not backend.status.ready:  # noqa: ASYNC110
            await trio.sleep(_READY_POLL)
        return
    raise ReloadError(
        f"not ready after {READY_TIMEOUT:g} s ({backend.status.detail or backend.status.health})"
    )


async def _retire(gateway: Gateway, upstream: Upstream) -> None:
    """Stop a backend the config no longer has (or has anew), once no request holds it:
    its in-flight requests finish first, then its pools close and its process stops."""
    await upstream.wait_unused()
    assert gateway.hosts is not None
    await gateway.hosts.stop(upstream.backend)


def _same_backend(running: BackendSettings, new: BackendSettings) -> bool:
    """Whether ``new`` leaves the running backend as it is: equal but for its
    ``keepalive``, which the gateway reads from the upstream, never the backend."""
    return running.model_copy(update={"keepalive": new.keepalive}) == new
