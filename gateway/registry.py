"""Backend types, found through the ``trio_gateway.backends`` entry-point group.

Built-in backends are registered there by this distribution exactly as third-party plugins
are by theirs. A plugin that fails to load is reported with its name and reason and does
not stop the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from .abc import Backend

ENTRY_POINT_GROUP = "trio_gateway.backends"


@dataclass(frozen=True, slots=True)
class BackendType:
    name: str
    cls: type[Backend]
    distribution: str
    version: str


@dataclass(frozen=True, slots=True)
class BrokenPlugin:
    name: str
    distribution: str
    reason: str


@dataclass(frozen=True, slots=True)
class Registry:
    types: dict[str, BackendType]
    broken: tuple[BrokenPlugin, ...] = ()

    def get(self, name: str) -> BackendType | None:
        return self.types.get(name)


def _load_one(ep: EntryPoint) -> BackendType | BrokenPlugin:
    dist = ep.dist.name if ep.dist is not None else "?"
    version = ep.dist.version if ep.dist is not None else "?"
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin's import error must not stop the others
        return BrokenPlugin(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}")
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        return BrokenPlugin(ep.name, dist, f"{ep.value} is not a gateway.abc.Backend subclass")
    return BackendType(ep.name, obj, dist, version)


def load_registry() -> Registry:
    types: dict[str, BackendType] = {}
    broken: list[BrokenPlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        loaded = _load_one(ep)
        if isinstance(loaded, BrokenPlugin):
            broken.append(loaded)
        elif loaded.name in types:
            broken.append(
                BrokenPlugin(
                    ep.name,
                    loaded.distribution,
                    f"type {ep.name!r} is already provided by {types[ep.name].distribution}",
                )
            )
        else:
            types[loaded.name] = loaded
    return Registry(types, tuple(broken))
