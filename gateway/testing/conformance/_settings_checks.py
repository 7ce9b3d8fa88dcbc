"""Checks of a backend's settings class and its registration as an entry point."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping

import pydantic

from ...abc import BackendSettings
from ...config import build_config
from ...errors import ConfigError
from ...registry import ENTRY_POINT_GROUP, load_registry
from ..serving import registry_of
from ._cases import BACKEND_ID, JSONLike, Script, SettingsTable, merge
from ._failure import fail
from ._harness import BackendT, Harness


def nested_model(annotation: object) -> type[pydantic.BaseModel] | None:
    """The pydantic model a field holds as a table (directly, or as a member of a union)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = nested_model(arg)
            if found is not None:
                return found
    return None


def listed_model(annotation: object) -> type[pydantic.BaseModel] | None:
    """The pydantic model a field holds a list of (``tuple[Gap, ...]``, ``list[Gap]``)."""
    if typing.get_origin(annotation) in (tuple, list):
        for arg in typing.get_args(annotation):
            found = nested_model(arg)
            if found is not None:
                return found
    return None


class SettingsChecks(Harness[BackendT]):
    def config_error(self, table: SettingsTable) -> str | None:
        """The gateway's message for ``table`` as a ``[backends.<id>]`` table, if wrong."""
        raw = {"backends": {BACKEND_ID: dict(table)}}
        try:
            build_config(raw, registry=registry_of({self.type_name: self.backend_class}))
        except ConfigError as exc:
            return exc.message
        return None

    def check_settings_class(self) -> None:
        """Settings derive from BackendSettings, stay frozen, and forbid unknown keys."""
        settings = self.backend_class.Settings
        if not (isinstance(settings, type) and issubclass(settings, BackendSettings)):
            fail(f"{self.backend_class.__name__}.Settings is not a BackendSettings subclass")
        if settings.model_config.get("extra") != "forbid":
            fail(f"{settings.__name__} does not forbid unknown keys (model_config extra)")
        if not settings.model_config.get("frozen"):
            fail(f"{settings.__name__} is not frozen (model_config frozen)")

    def check_settings_valid(self) -> None:
        """The author's example settings pass the gateway's config validation."""
        error = self.config_error(self.table(Script()))
        if error is not None:
            fail(f"the example settings are rejected:\n{error}")

    def check_unknown_keys(self) -> None:
        """An unknown key — at the top and inside every nested table — is an error that
        names its dotted path."""
        table = self.table(Script())
        probes: list[tuple[dict[str, JSONLike], str]] = [
            ({**table, "no_such_key": 1}, f"backends.{BACKEND_ID}.no_such_key: unknown key")
        ]
        for name, info in self.backend_class.Settings.model_fields.items():
            probe: JSONLike
            if nested_model(info.annotation) is not None:
                current = table.get(name)
                nested = dict(current) if isinstance(current, Mapping) else {}
                probe = {**nested, "no_such_key": 1}
                path = f"{name}.no_such_key"
            elif listed_model(info.annotation) is not None:
                probe, path = [{"no_such_key": 1}], f"{name}.0.no_such_key"
            else:
                continue
            probes.append(({**table, name: probe}, f"backends.{BACKEND_ID}.{path}: unknown key"))
        for probe, expected in probes:
            error = self.config_error(probe)
            if error is None:
                fail(f"settings with an unknown key were accepted (expected {expected!r})")
            if expected not in error:
                fail(f"expected {expected!r} in the config error, got:\n{error}")

    def check_invalid_settings(self) -> None:
        """The author's invalid values are rejected, naming the right dotted path."""
        table = self.table(Script())
        for patch, path in self.invalid_settings:
            error = self.config_error(merge(table, patch))
            expected = f"backends.{BACKEND_ID}.{path}:"
            if error is None:
                fail(f"invalid settings {dict(patch)!r} were accepted")
            if expected not in error:
                fail(f"invalid settings {dict(patch)!r}: expected {expected!r} in:\n{error}")

    def check_registered(self) -> None:
        """The installed entry point ``type_name`` loads this very class."""
        registry = load_registry()
        for broken in registry.broken:
            if broken.name == self.type_name:
                fail(f"entry point {self.type_name!r} is broken: {broken.reason}")
        found = registry.get(self.type_name)
        if found is None:
            fail(
                f"no entry point {self.type_name!r} in group {ENTRY_POINT_GROUP} — "
                "is the distribution installed?"
            )
        if found.cls is not self.backend_class:
            fail(f"entry point {self.type_name!r} loads {found.cls!r}, not {self.backend_class!r}")
