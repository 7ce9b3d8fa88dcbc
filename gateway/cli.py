"""The ``gateway`` command."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from .config import GatewayConfig, load_config
from .errors import ConfigError
from .logs import LogFormat, configure_logging
from .registry import Registry, load_registry, settings_fields

DEFAULT_CONFIG = "gateway.toml"

config_option = click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Path of the gateway's TOML config.",
)


def _load_or_exit(path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as error:
        click.echo(f"config error in {path}:\n{error.message}", err=True)
        sys.exit(2)


def _usage_database_or_exit(config, what: str) -> None:  # type: ignore[no-untyped-def]
    """With teams on, the usage database must be usable, and without Redis the file of
    stored responses: else one line naming the path on stderr, and exit status 1 (no
    traceback)."""
    from .responses import ResponsesDatabaseError, check_responses_database
    from .teams import auth_enabled
    from .teams.usage import UsageDatabaseError, check_usage_database

    try:
        if auth_enabled(config):
            check_usage_database(config.usage.database)
        if config.state.redis is None:
            check_responses_database(config.responses.database_path(config.usage))
    except (UsageDatabaseError, ResponsesDatabaseError) as error:
        click.echo(f"{what}: {error}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """trio-gateway: an OpenAI-compatible gateway whose streams never go silent."""


@main.command()
@config_option
@click.option("--bind", help="HOST:PORT to listen on (overrides server.bind).")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="Access logs are JSON lines either way.",
)
def serve(config_path: Path, bind: str | None, log_level: str, log_format: LogFormat) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain gracefully."""
    from .server import serve_gateway, tune_gc

    # SIGHUP reloads once the gateway serves; before that (starting its backends can take
    # minutes) and during the drain, the default action would end the process at once.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    registry = load_registry()
    for broken in registry.broken:
        logging.getLogger("gateway").warning(
            "backend plugin %s (%s) not loaded: %s", broken.name, broken.distribution, broken.reason
        )
    config = _load_or_exit(config_path)
    if bind is not None:
        from .config import parse_bind

        try:
            parse_bind(bind)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--bind") from None
    _usage_database_or_exit(config, "cannot start")

    workers = config.server.worker_count
    if workers > 1:
        log_args = ["--log-level", log_level, "--log-format", log_format]
        _supervise(config, config_path, bind, workers, registry, log_args)
        return

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve_gateway, config, bind=bind, config_path=config_path)
            )
            tune_gc()
            _log_serving(binds)

    from .backend_hosts import BackendStartError
    from .connections import CannotListen
    from .pidfile import PidFileError
    from .responses import ResponsesDatabaseError
    from .teams.usage import UsageDatabaseError

    try:
        trio.run(run)
    except* ConfigError as group:  # what only start-up finds: a missing binary or model
        _config_error_exit(config_path, group)
    except* (UsageDatabaseError, ResponsesDatabaseError) as group:  # changed since the check
        click.echo(f"cannot start: {_first_error(group)}", err=True)
        sys.exit(1)
    except* (CannotListen, PidFileError, BackendStartError) as group:
        click.echo(f"cannot start: {_first_error(group)}", err=True)
        sys.exit(1)


def _log_serving(binds: list[str]) -> None:
    for address in binds:
        logging.getLogger("gateway").info("serving on %s", address)


def _supervise(
    config: GatewayConfig,
    config_path: Path,
    bind: str | None,
    workers: int,
    registry: Registry,
    log_args: list[str],
) -> None:
    """Run ``workers`` worker processes under this one (:mod:`gateway.supervisor`)."""
    from .backend_hosts import BackendStartError
    from .connections import CannotListen
    from .pidfile import PidFileError
    from .supervisor import WorkerFailed, supervise

    run = partial(
        supervise,
        config,
        config_path,
        registry=registry,
        workers=workers,
        bind=bind,
        log_args=log_args,
        on_serving=_log_serving,
    )
    try:
        trio.run(run)
    except* ConfigError as group:
        _config_error_exit(config_path, group)
    except* (WorkerFailed, CannotListen, PidFileError, BackendStartError) as group:
        click.echo(f"cannot start: {_first_error(group)}", err=True)
        sys.exit(1)


def _config_error_exit(config_path: Path, group: BaseExceptionGroup[ConfigError]) -> NoReturn:
    error = _first_error(group)
    assert isinstance(error, ConfigError)
    click.echo(f"config error in {config_path}:\n{error.message}", err=True)
    sys.exit(2)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in ``group``, out of the groups that nested nurseries wrap it in."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@main.command(hidden=True)
@config_option
@click.option("--id", "worker", type=int, required=True)
@click.option("--listen-fd", "listen_fds", type=int, multiple=True, required=True)
@click.option("--control-fd", type=int, required=True)
@click.option("--shares-fd", type=int, required=True)
@click.option("--workers", type=int, required=True)
@click.option("--parent-backend", "parent_backends", multiple=True, help="ID=ADDRESS")
@click.option("--start-config", type=click.Path(path_type=Path), default=None)
@click.option("--log-level", default="info")
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]))
def worker(
    config_path: Path,
    worker: int,
    listen_fds: tuple[int, ...],
    control_fd: int,
    shares_fd: int,
    workers: int,
    parent_backends: tuple[str, ...],
    start_config: Path | None,
    log_level: str,
    log_format: LogFormat,
) -> None:
    """One worker process of `gateway serve` with [server] workers above 1 (started by
    the parent; not for use by hand)."""
    from .worker import run_worker

    configure_logging(log_level, log_format)
    addresses = dict(entry.split("=", 1) for entry in parent_backends)
    trio.run(
        partial(
            run_worker,
            config_path,
            worker=worker,
            listen_fds=list(listen_fds),
            control_fd=control_fd,
            shares_fd=shares_fd,
            workers=workers,
            addresses=addresses,
            registry=load_registry(),
            start_config=start_config,
        )
    )


@main.command()
@config_option
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The running gateway's pid file (default: where `gateway serve` with this "
    "config writes it).",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Send the signal without validating the file here: the gateway validates it in "
    "its own environment (its { env = ... } variables) and refuses a bad one.",
)
def reload(config_path: Path, pid_file: Path | None, no_check: bool) -> None:
    """Reload a running gateway's config without a restart: check the file, then send
    SIGHUP to the gateway serving it. Streams in flight finish on the config they began
    with; the gateway's log and its trio_gateway_config_reloads_total tell the outcome."""
    from .pidfile import PidFileError, pid_path, signal_holder

    configured = None
    if not no_check:
        configured = _load_for_reload(config_path).server.pid_file
    elif pid_file is None:
        configured = _pid_file_setting(config_path)
    path = pid_file if pid_file is not None else pid_path(configured, config_path)
    try:
        pid = signal_holder(path, signal.SIGHUP)
    except PidFileError as error:
        click.echo(f"no running gateway for {config_path}: {error}", err=True)
        sys.exit(1)
    click.echo(f"sent SIGHUP to the gateway (pid {pid}) serving {config_path}")


def _load_for_reload(path: Path) -> GatewayConfig:
    """The config at ``path``, or exit status 2 as :func:`_load_or_exit`; if the file names
    an environment variable not set here, the error says so and points at ``--no-check``:
    the gateway reads the variables in its own environment."""
    try:
        return load_config(path)
    except ConfigError as error:
        click.echo(f"config error in {path}:\n{error.message}", err=True)
        unset = dict.fromkeys(_unset_variables(_read_toml(path), os.environ))
        if unset:
            click.echo(
                f"{', '.join(unset)} not set in this environment: if the gateway's has it, "
                "`gateway reload --no-check` sends the signal without this check (the "
                "gateway checks the file itself and refuses a bad one)",
                err=True,
            )
        sys.exit(2)


def _pid_file_setting(path: Path) -> str | None:
    """``[server] pid_file`` as written in the file at ``path`` (neither validated nor
    read through the environment); exit status 2 if that cannot be told."""
    document = _read_toml(path)
    server = document.get("server") if document is not None else None
    pid_file = server.get("pid_file") if isinstance(server, dict) else None
    if document is None or not isinstance(pid_file, str | None):
        click.echo(f"{path}: cannot tell its server.pid_file unchecked; give --pid-file", err=True)
        sys.exit(2)
    return pid_file


def _read_toml(path: Path) -> dict[str, Any] | None:
    """The TOML document at ``path``; ``None`` if it cannot be read or is not TOML."""
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _unset_variables(value: object, environ: Mapping[str, str]) -> list[str]:
    """The variables of the ``{ env = "NAME" }`` references in ``value`` that ``environ``
    lacks."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            name = value["env"]
            return [name] if isinstance(name, str) and name not in environ else []
        return [name for item in value.values() for name in _unset_variables(item, environ)]
    if isinstance(value, list):
        return [name for item in value for name in _unset_variables(item, environ)]
    return []


@main.command()
@config_option
def check(config_path: Path) -> None:
    """Validate a config, and that its usage database can be opened; exit non-zero with
    the problem if not (2: the config is invalid; 1: the database is not usable)."""
    config = _load_or_exit(config_path)
    _usage_database_or_exit(config, str(config_path))
    click.echo(
        f"{config_path}: ok ({len(config.backends)} backend(s), {len(config.routes)} route(s))"
    )


@main.command()
def plugins() -> None:
    """List the installed backend types with their settings, then the plugins that failed
    to load (exit status 1 if there are any)."""
    registry = load_registry()
    for backend_type in registry.types.values():
        cls = backend_type.cls
        click.echo(
            f"{backend_type.name}  {backend_type.distribution} {backend_type.version}"
            f"  ({cls.__module__}.{cls.__qualname__})"
        )
        for field in settings_fields(cls.Settings):
            if field.name == "type":
                continue
            default = "required" if field.default is None else f"default {field.default}"
            about = f"  {field.description}" if field.description else ""
            click.echo(f"    {field.name}: {field.type} ({default}){about}")
    for broken in registry.broken:
        click.echo(f"BROKEN {broken.name}  {broken.distribution} {broken.version}: {broken.reason}")
    if registry.broken:
        sys.exit(1)


@main.group()
def keys() -> None:
    """Make and hash team API keys (the config holds only hashes)."""


@keys.command("new")
@click.option("--team", required=True, help="The team the key is for.")
def keys_new(team: str) -> None:
    """Print a fresh key (shown once: give it to the team) and the config line."""
    from .teams.keys import hash_key, new_key
    from .teams.settings import TEAM_NAME_RULE, is_team_name, team_table

    if not is_team_name(team):
        raise click.BadParameter(f"{team!r}: {TEAM_NAME_RULE}", param_hint="--team")
    key = new_key()
    click.echo(f"key for team {team} (shown once, store it now): {key}")
    click.echo(f"add its hash to [{team_table(team)}] keys in gateway.toml:")
    click.echo(f'keys = ["{hash_key(key)}"]')


@keys.command("hash")
def keys_hash() -> None:
    """Hash an existing key, read from stdin (never from the command line, where `ps` and
    shell history would show it)."""
    from .teams.keys import hash_key

    if sys.stdin.isatty():
        key = click.prompt("key", hide_input=True, err=True)
    else:
        key = sys.stdin.readline().strip()
    if not key:
        click.echo("no key given on stdin", err=True)
        sys.exit(2)
    click.echo(hash_key(key))


@main.command()
@config_option
@click.option("--team", help="Only this team.")
@click.option("--since", help="30m, 2h, 7d ago, or an ISO date/time (UTC).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def usage(config_path: Path, team: str | None, since: str | None, as_json: bool) -> None:
    """Usage per team, route and backend: from Redis when the config shares state there
    (every process's), else from the config's usage database."""
    import json
    import time

    from .teams.usage import UsageDatabaseError, UsageRow, UsageStore, parse_since

    config = _load_or_exit(config_path)
    try:
        since_at = parse_since(since, now=time.time()) if since else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    if config.state.redis is not None:  # every process's usage
        from .teams.redis_state import open_redis_state
        from .teams.resp import RedisError

        async def from_redis() -> list[UsageRow]:
            assert config.state.redis is not None
            async with open_redis_state(
                config.state.redis,
                prefix=config.state.prefix,
                stream_lease=config.state.stream_lease,
                call_timeout=config.state.timeout,
            ) as state:
                return await state.query_usage(team=team, since=since_at)

        # The state's own outage log speaks of admitting requests: not this command's.
        logging.getLogger("gateway.teams").setLevel(logging.CRITICAL)
        try:
            rows = trio.run(from_redis)
        except* RedisError as group:  # the error, never the URL: it may hold a password
            click.echo(f"cannot read usage from redis: {_first_error(group)}", err=True)
            sys.exit(1)
    else:
        path = Path(config.usage.database)
        if not path.exists():
            click.echo(f"no usage recorded yet ({path} does not exist)", err=True)
            sys.exit(1)
        try:
            store = UsageStore(path)
        except UsageDatabaseError as error:
            click.echo(str(error), err=True)
            sys.exit(1)
        try:
            rows = store.query(team=team, since=since_at)
        finally:
            store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json()))
        return
    header = (
        "team",
        "route",
        "backend",
        "requests",
        "errors",
        "prompt",
        "completion",
        "total",
        "stream_s",
    )
    table = [header] + [
        (
            r.team,
            r.route,
            r.backend,
            str(r.requests),
            str(r.errors),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            str(r.total_tokens),
            f"{r.stream_seconds:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo(
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
