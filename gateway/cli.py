"""The ``gateway`` command."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path

import click
import trio

from .config import load_config
from .errors import ConfigError
from .registry import load_registry

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
def serve(config_path: Path, bind: str | None, log_level: str) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain gracefully."""
    from .server import serve_gateway

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = _load_or_exit(config_path)
    if bind is not None:
        from .config import parse_bind

        try:
            parse_bind(bind)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--bind") from None

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve_gateway, config, bind=bind))
            for address in binds:
                logging.getLogger("gateway").info("serving on %s", address)

    trio.run(run)


@main.command()
@config_option
def check(config_path: Path) -> None:
    """Validate a config; exit non-zero with the problem if it is invalid."""
    config = _load_or_exit(config_path)
    click.echo(
        f"{config_path}: ok ({len(config.backends)} backend(s), {len(config.routes)} route(s))"
    )


@main.command()
def plugins() -> None:
    """List the backend types that are installed, and the plugins that failed to load."""
    registry = load_registry()
    for backend_type in registry.types.values():
        click.echo(
            f"{backend_type.name:<20} {backend_type.distribution} {backend_type.version}"
            f"  ({backend_type.cls.__module__}.{backend_type.cls.__qualname__})"
        )
        for name, field in backend_type.cls.Settings.model_fields.items():
            default = "required" if field.is_required() else f"default {field.default!r}"
            annotation = getattr(field.annotation, "__name__", str(field.annotation))
            click.echo(f"    {name}: {annotation} ({default})")
    for broken in registry.broken:
        click.echo(f"{broken.name:<20} {broken.distribution}  BROKEN: {broken.reason}", err=True)
