"""Backend types, found through the ``trio_gateway.backends`` entry-point group.

Built-in backends are registered there by this distribution exactly as third-party plugins
are by theirs. A plugin that fails to load — its import raises, its object is not a usable
:class:`~gateway.abc.Backend` subclass, or its name is taken — is kept as a
:class:`BrokenPlugin` with its name and reason, and does not stop the others.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Literal

import pydantic
from pydantic.fields import FieldInfo

from .abc import Backend, BackendSettings, Placement

ENTRY_POINT_GROUP = "trio_gateway.backends"
_OWN_DISTRIBUTION = "trio-gateway"

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendType",
    "BrokenPlugin",
    "Registry",
    "SettingField",
    "declared_settings",
    "load_registry",
    "settings_fields",
]


@dataclass(frozen=True, slots=True)
class BackendType:
    """A loaded backend type: its entry-point name, class, and where it comes from."""

    name: str
    cls: type[Backend]
    distribution: str
    version: str


@dataclass(frozen=True, slots=True)
class BrokenPlugin:
    """An entry point that could not become a backend type, and why."""

    name: str
    distribution: str
    version: str
    reason: str


@dataclass(frozen=True, slots=True)
class Registry:
    types: dict[str, BackendType]
    broken: tuple[BrokenPlugin, ...] = ()

    def get(self, name: str) -> BackendType | None:
        return self.types.get(name)

    def placed(
        self, backends: Mapping[str, BackendSettings], placement: Placement
    ) -> Iterator[tuple[str, BackendSettings, type[Backend]]]:
        """The backends of ``backends`` (a config's, by id) whose class puts them at
        ``placement`` when there are several workers, with their class."""
        for id, settings in backends.items():
            backend_type = self.types.get(settings.type)
            if backend_type is not None and backend_type.cls.placement(settings) == placement:
                yield id, settings, backend_type.cls


GATEWAY_TABLES = ("timeouts", "admission", "ejection", "keepalive")
"""The tables of :class:`~gateway.abc.BackendSettings` the gateway itself reads: a plugin's
settings may narrow them (a subclass) but not put something else in their place."""


def _problem(obj: object, value: str, name: str) -> str | None:
    """Why ``obj`` (what entry point ``name = value`` loaded) cannot be a backend type, if so."""
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        return f"{value} is {obj!r}, not a gateway.abc.Backend subclass"
    settings = getattr(obj, "Settings", None)
    if not (isinstance(settings, type) and issubclass(settings, BackendSettings)):
        return f"{value}.Settings is {settings!r}, not a gateway.abc.BackendSettings subclass"
    declared = declared_settings(obj)
    if not issubclass(settings, declared):
        return (
            f"{value}.Settings is {settings.__name__}, but the class is declared "
            f"Backend[{declared.__name__}]: its settings would not be what it expects"
        )
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        return f"{value} does not implement {missing}"
    for owned in GATEWAY_TABLES:
        base = BackendSettings.model_fields[owned].annotation
        mine = settings.model_fields[owned].annotation
        if not (isinstance(mine, type) and isinstance(base, type) and issubclass(mine, base)):
            return (
                f"{value}.Settings redefines `{owned}`, which the gateway reads for every "
                f"backend ([backends.<id>.{owned}]): give the plugin's own setting another name"
            )
    field = settings.model_fields.get("type")
    allowed = typing.get_args(field.annotation) if field is not None else ()
    if field is not None and typing.get_origin(field.annotation) is Literal and name not in allowed:
        return (
            f"{value}.Settings.type is Literal{list(allowed)!r}, but the entry point names the "
            f"type {name!r}: a backend table's `type = {name!r}` would be refused"
        )
    return None


def declared_settings(cls: type[Backend]) -> type[BackendSettings]:
    """The settings type ``cls`` gives :class:`~gateway.abc.Backend` as its type argument
    (``class B(Backend[S])``, or a base class's), else ``BackendSettings``."""
    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Backend:
                (argument,) = typing.get_args(base)
                if isinstance(argument, type) and issubclass(argument, BackendSettings):
                    return argument
                return BackendSettings  # a type variable: a generic intermediate class
    return BackendSettings


def _load_one(ep: EntryPoint) -> BackendType | BrokenPlugin:
    dist = ep.dist.name if ep.dist is not None else "?"
    version = ep.dist.version if ep.dist is not None else "?"
    try:
        obj = ep.load()
    except Exception as exc:
        return BrokenPlugin(ep.name, dist, version, f"import failed: {type(exc).__name__}: {exc}")
    problem = _problem(obj, ep.value, ep.name)
    if problem is not None:
        return BrokenPlugin(ep.name, dist, version, problem)
    return BackendType(ep.name, obj, dist, version)


def _precedence(ep: EntryPoint) -> tuple[str, bool, str]:
    """Name order; for one name, the gateway's own distribution first, so a plugin can
    never take over a built-in type."""
    dist = ep.dist.name if ep.dist is not None else ""
    return (ep.name, dist != _OWN_DISTRIBUTION, dist)


def load_registry() -> Registry:
    """Load every entry point of the group, in name order. Never raises for a plugin. A
    type name provided twice keeps the first (built-ins win) and reports the other."""
    found: dict[str, BackendType] = {}
    broken: list[BrokenPlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_precedence):
        loaded = _load_one(ep)
        other = found.get(ep.name)
        if other is not None:  # whatever else is wrong with it, this is first
            if isinstance(loaded, BackendType) and other.cls is loaded.cls:
                continue  # one distribution seen twice on the path
            reason = f"type {ep.name!r} is already provided by {other.distribution}"
            broken.append(BrokenPlugin(ep.name, loaded.distribution, loaded.version, reason))
        elif isinstance(loaded, BrokenPlugin):
            broken.append(loaded)
        else:
            found[loaded.name] = loaded
    return Registry(found, tuple(broken))


@dataclass(frozen=True, slots=True)
class SettingField:
    """One key of a backend's settings table, dotted for nested tables."""

    name: str
    type: str
    default: str | None  # ``None``: required
    description: str | None = None


def settings_fields(settings: type[pydantic.BaseModel], prefix: str = "") -> Iterator[SettingField]:
    """The keys a ``[backends.<id>]`` table may hold, nested tables flattened to dotted
    names, with their types and defaults as an operator would write them."""
    fields = list(settings.model_fields.items())
    if issubclass(settings, BackendSettings):  # the backend's own keys before the gateway's
        fields.sort(key=lambda item: item[0] in BackendSettings.model_fields)
    for name, info in fields:
        nested = _model_of(info.annotation)
        if nested is not None:
            yield from settings_fields(nested, f"{prefix}{name}.")
            continue
        default = None if info.is_required() else _default(info)
        yield SettingField(
            f"{prefix}{name}", _type_name(info.annotation), default, info.description
        )


def _model_of(annotation: object) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    return None


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, pydantic.SecretStr):
        return "(secret)"
    if isinstance(value, str):
        return repr(value)
    return "none" if value is None else str(value)


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation)
