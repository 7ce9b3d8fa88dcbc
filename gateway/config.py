"""``gateway.toml`` parsed once into typed, frozen settings.

Every problem is a :class:`~gateway.errors.ConfigError` naming the dotted path of the value
(``routes.chat.keepalive.interval: Input should be greater than or equal to 0``). Unknown
keys are errors. A secret is written as an environment reference, ``{ env = "NAME" }``, and
a variable that is not set is an error too.
"""

from __future__ import annotations

import hashlib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .abc import BackendSettings, http_base_url
from .errors import ConfigError
from .keepalive import KeepaliveSettings
from .registry import Registry, load_registry
from .teams.settings import (
    AuthSettings,
    StateSettings,
    TeamSettings,
    UsageSettings,
    check_key_entries,
    check_team_models,
)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Settings):
    """How the gateway listens, and how long it waits on a client that is sending."""

    bind: str = "127.0.0.1:8080"
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description='worker processes sharing the listening socket, or "auto" (one per usable '
        "CPU); above 1, a parent process supervises them and keeps limits machine-wide",
    )
    graceful_timeout: float = Field(60.0, ge=0)
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        description="after SIGTERM, seconds /readyz answers 503 while requests are still "
        "served, before the drain begins (so load balancers stop sending first)",
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    status_page: bool = Field(True, description="serve the live status page at GET /")
    keep_alive_timeout: float = Field(
        75.0, gt=0, description="an idle connection between requests is closed after this"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="a request's head must arrive within this, from its first byte"
    )
    body_idle_timeout: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long gets 408"
    )
    body_timeout: float = Field(
        120.0, gt=0, description="a request body not whole after this long gets 408"
    )
    websockets: bool = Field(
        True,
        description="serve OpenAI Responses over WebSocket on GET /v1/responses "
        "(off: every upgrade gets 426)",
    )
    websocket_max_message_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="a larger WebSocket message closes its socket with 1009",
    )
    websocket_idle_timeout: float = Field(
        600.0, gt=0, description="a WebSocket with no response in flight closes after this"
    )
    pid_file: str | None = Field(
        None,
        description="where `gateway serve` writes its pid and holds a lock on it while it "
        "serves, for `gateway reload` (default: a file in the temp directory named after the "
        "config file's absolute path, its directory resolved but not a link to the file)",
    )

    @property
    def worker_count(self) -> int:
        """:attr:`workers` as a number ("auto": :func:`usable_cpus`)."""
        return usable_cpus() if self.workers == "auto" else self.workers

    @field_validator("bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_bind(value)
        return value

    @model_validator(mode="after")
    def _idle_within_total(self) -> ServerSettings:
        if self.body_idle_timeout > self.body_timeout:
            raise ValueError("`body_idle_timeout` must not exceed `body_timeout`")
        return self


class TargetSettings(_Settings):
    """One backend a route may send to, with the model name that backend knows."""

    backend: str
    model: str | None = Field(None, description="upstream model name; default: as requested")
    weight: float = Field(1.0, gt=0)


Strategy = Literal["priority", "round_robin", "weighted", "least_busy"]


class RouteSettings(_Settings):
    """One public model name (plus aliases and glob patterns) and the backends serving it.

    A single backend is written ``backend = "id"`` (with an optional ``upstream_model``);
    a pool is ``targets = [{ backend = "a", model = "...", weight = 2 }, ...]``.
    """

    model: str | None = None
    aliases: tuple[str, ...] = ()
    match: tuple[str, ...] = ()
    backend: str | None = None
    upstream_model: str | None = None
    targets: tuple[TargetSettings, ...] = ()
    strategy: Strategy = "priority"
    max_attempts: int = Field(3, ge=1)
    failover_deadline: float | None = Field(
        30.0, gt=0, description="no new attempt starts after this many seconds"
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="set when absent")
    caps: dict[str, float] = Field(default_factory=dict, description="numeric ceilings")
    keepalive: KeepaliveSettings = KeepaliveSettings()

    @model_validator(mode="after")
    def _one_way_to_name_backends(self) -> RouteSettings:
        if (self.backend is None) == (not self.targets):
            raise ValueError("give either `backend` or `targets` (one of them, not both)")
        if self.upstream_model is not None and self.backend is None:
            raise ValueError("`upstream_model` goes with `backend`; in `targets` use `model`")
        return self

    @cached_property  # read on every request; frozen settings never change
    def all_targets(self) -> tuple[TargetSettings, ...]:
        if self.backend is not None:
            return (TargetSettings(backend=self.backend, model=self.upstream_model),)
        return self.targets


class ResponsesSettings(_Settings):
    """``[responses]``: where stored Responses-API responses are kept, and for how long.

    With ``[state] redis`` set they are kept in Redis (every replica sees every response)
    and ``database`` is not used."""

    database: str | None = Field(
        None,
        description="SQLite file of stored responses; default: gateway-responses.sqlite "
        "in the directory of [usage] database",
    )
    ttl: float = Field(30 * 86400.0, gt=0, description="seconds a stored response is kept")
    max_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        le=512 * 1024 * 1024,  # Redis's largest value
        description="a response (its input, history and output as JSON) over this is not stored",
    )

    def database_path(self, usage: UsageSettings) -> Path:
        """``database``, or its default beside the usage database."""
        if self.database is not None:
            return Path(self.database)
        return Path(usage.database).parent / "gateway-responses.sqlite"


class TracingSettings(_Settings):
    """``[tracing]``: OpenTelemetry traces, exported over OTLP/HTTP off the request path
    (:mod:`gateway.tracing`). Off while ``otlp_endpoint`` is unset; :func:`build_config`
    takes it from ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``service_name`` from
    ``OTEL_SERVICE_NAME`` where the file gives none. Header values are secrets: write them
    as env references."""

    otlp_endpoint: str | None = Field(
        None,
        description="the collector's OTLP/HTTP base URL, e.g. http://collector:4318 "
        "(spans go to its /v1/traces)",
    )
    service_name: str = Field(
        "", description="the spans' service.name; default: OTEL_SERVICE_NAME, else trio-gateway"
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of new traces recorded; a client's traceparent decides for its own",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='sent with every export, e.g. authorization = { env = "OTLP_AUTH" }',
    )
    schedule_delay: float = Field(5.0, gt=0, description="seconds between two exports")
    max_queue_size: int = Field(
        2048, ge=1, description="ended spans waiting for export; past it they are dropped"
    )
    max_export_batch_size: int = Field(512, ge=1, description="spans in one export request")
    export_timeout: float = Field(
        10.0, gt=0, description="seconds one export may take, its retries included"
    )
    shutdown_timeout: float = Field(
        5.0, ge=0, description="seconds the gateway waits on exit for its last spans to go out"
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_base_url(value)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> TracingSettings:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("`max_export_batch_size` must not exceed `max_queue_size`")
        return self

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    def with_environment(self, environ: Mapping[str, str]) -> TracingSettings:
        """These settings, with the standard OpenTelemetry variables filling in what the
        file leaves unset. Raises :class:`ConfigError` for an endpoint that is no URL."""
        update: dict[str, str] = {}
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if self.otlp_endpoint is None and endpoint:
            try:
                update["otlp_endpoint"] = http_base_url(endpoint)
            except ValueError as error:
                raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT: {error}") from None
        if not self.service_name:
            update["service_name"] = environ.get("OTEL_SERVICE_NAME", "").strip() or "trio-gateway"
        return self.model_copy(update=update)


class _FileSettings(_Settings):
    server: ServerSettings = ServerSettings()
    backends: dict[str, dict[str, Any]] = {}
    routes: dict[str, RouteSettings] = {}
    auth: AuthSettings = AuthSettings()
    teams: dict[str, TeamSettings] = {}
    state: StateSettings = StateSettings()
    usage: UsageSettings = UsageSettings()
    responses: ResponsesSettings = ResponsesSettings()
    tracing: TracingSettings = TracingSettings()


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    model: str
    settings: RouteSettings

    @property
    def public_names(self) -> tuple[str, ...]:
        return (self.model, *self.settings.aliases)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerSettings
    backends: Mapping[str, BackendSettings]
    routes: tuple[Route, ...]
    auth: AuthSettings = field(default_factory=AuthSettings)
    teams: Mapping[str, TeamSettings] = field(default_factory=dict)
    state: StateSettings = field(default_factory=StateSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: those it may run on, at most its cgroup's CPU limit
    rounded up (a container's ``limits.cpu``; cgroup v2's ``cpu.max``, "max" for none)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _dotted(prefix: tuple[str | int, ...], loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in (*prefix, *loc))


def _raise_validation(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> None:
    lines = []
    for item in error.errors():
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_dotted(prefix, item['loc'])}: {msg}")
    raise ConfigError("\n".join(lines)) from None


def resolve_env(value: Any, path: tuple[str | int, ...], environ: Mapping[str, str]) -> Any:
    """Replace every ``{ env = "NAME" }`` table with the variable's value."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            name = value["env"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{_dotted(path, ('env',))}: must be a variable name")
            if name not in environ:
                raise ConfigError(f"{_dotted(path, ())}: environment variable {name} is not set")
            return environ[name]
        return {k: resolve_env(v, (*path, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, (*path, i), environ) for i, v in enumerate(value)]
    return value


def build_config(
    raw: Mapping[str, Any],
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Validate a parsed TOML document. Raises :class:`ConfigError`."""
    registry = registry if registry is not None else load_registry()
    environ = os.environ if environ is None else environ
    check_key_entries(raw)
    doc = resolve_env(dict(raw), (), environ)
    try:
        file = _FileSettings.model_validate(doc)
    except ValidationError as error:
        _raise_validation(error)

    backends: dict[str, BackendSettings] = {}
    for backend_id, table in file.backends.items():
        type_name = table.get("type")
        if not isinstance(type_name, str):
            raise ConfigError(f"backends.{backend_id}.type: required (one of {_names(registry)})")
        backend_type = registry.get(type_name)
        if backend_type is None:
            raise ConfigError(f"backends.{backend_id}.type: {_unknown_type(type_name, registry)}")
        try:
            backends[backend_id] = backend_type.cls.Settings.model_validate(table)
        except ValidationError as error:
            _raise_validation(error, ("backends", backend_id))
        except Exception as error:  # a plugin's validator raised what pydantic does not wrap
            raise ConfigError(
                f"backends.{backend_id}: {type_name} settings refused: "
                f"{type(error).__name__}: {error}"
            ) from None

    routes: list[Route] = []
    owner: dict[str, str] = {}
    for name, settings in file.routes.items():
        for i, target in enumerate(settings.all_targets):
            if target.backend not in backends:
                known = ", ".join(sorted(backends)) or "none defined"
                where = "backend" if settings.backend is not None else f"targets.{i}.backend"
                raise ConfigError(
                    f"routes.{name}.{where}: unknown backend {target.backend!r} ({known})"
                )
        route = Route(name, settings.model or name, settings)
        for public in route.public_names:
            if public in owner:
                raise ConfigError(
                    f"routes.{name}: model name {public!r} is already used by routes.{owner[public]}"
                )
            owner[public] = name
        routes.append(route)
    # Teams' ``models`` name a route by its name or any of its public names: one route's
    # model name that is another's route name would let a team allowed one use both.
    for route in routes:
        for public in route.public_names:
            if public in file.routes and public != route.name:
                raise ConfigError(
                    f"routes.{route.name}: model name {public!r} is the name of "
                    f"routes.{public} (teams' models name routes by either)"
                )
    check_team_models(file.teams, ((r.name, r.public_names) for r in routes))
    return GatewayConfig(
        file.server,
        backends,
        tuple(routes),
        file.auth,
        file.teams,
        file.state,
        file.usage,
        file.responses,
        file.tracing.with_environment(environ),
    )


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    return read_config(path, environ=environ)[0]


def read_config(
    path: str | Path,
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[GatewayConfig, str]:
    """Read and validate a config file: the config, and the sha256 of the file (its first
    16 hex digits, what ``trio_gateway_config_info`` shows). Raises :class:`ConfigError`."""
    path = Path(path)
    return parse_config(read_config_bytes(path), path, registry=registry, environ=environ)


def read_config_bytes(path: Path) -> bytes:
    """The bytes of the config file at ``path``. Raises :class:`ConfigError`."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None


def parse_config(
    data: bytes,
    path: Path,
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[GatewayConfig, str]:
    """:func:`read_config` for ``data``, the bytes read from the file at ``path``."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return build_config(raw, registry=registry, environ=environ), _digest(data)


def file_digest(path: str | Path) -> str:
    """The digest :func:`read_config` gives the file now ("unreadable" if it cannot be read)."""
    try:
        return _digest(Path(path).read_bytes())
    except OSError:
        return "unreadable"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _names(registry: Registry) -> str:
    return ", ".join(sorted(registry.types)) or "none"


def _unknown_type(name: str, registry: Registry) -> str:
    """Why backend type ``name`` cannot be used: a plugin that provides it but could not
    be loaded, or none at all."""
    for broken in registry.broken:
        if broken.name == name:
            return (
                f"backend type {name!r} comes from {broken.distribution} {broken.version}, "
                f"which could not be loaded: {broken.reason} (see `gateway plugins`)"
            )
    return (
        f"unknown backend type {name!r} (installed: {_names(registry)}; a plugin's types are "
        "its package's entry points, read when it is installed: install it, or install it "
        "again after adding one)"
    )
