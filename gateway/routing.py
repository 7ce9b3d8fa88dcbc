"""Which route serves a request's ``model``. Pure: no I/O, no trio.

Exact names and aliases win over glob patterns; patterns are tried in the order the routes
appear in the config, and the first match wins.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .abc import JSONObject
from .config import Route, TargetSettings


class Router:
    __slots__ = ("_exact", "_patterns", "_routes")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self._routes = routes
        self._exact = {name: route for route in routes for name in route.public_names}
        self._patterns = [(p, route) for route in routes for p in route.settings.match]

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def resolve(self, model: str) -> Route | None:
        route = self._exact.get(model)
        if route is not None:
            return route
        for pattern, candidate in self._patterns:
            if fnmatchcase(model, pattern):
                return candidate
        return None

    def public_models(self) -> list[str]:
        """What ``GET /v1/models`` lists: routes' names and aliases, never patterns."""
        return [name for route in self._routes for name in route.public_names]


def apply_policy(body: JSONObject, route: Route) -> JSONObject:
    """The route's request policy: ``defaults`` fill absent parameters, ``caps`` are
    ceilings (a larger value is lowered to the cap; an absent one is set to it)."""
    settings = route.settings
    out = {**settings.defaults, **body} if settings.defaults else dict(body)
    for name, ceiling in settings.caps.items():
        value = out.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value > ceiling:
            out[name] = int(ceiling) if float(ceiling).is_integer() else ceiling
    return out


def upstream_body(body: JSONObject, target: TargetSettings) -> JSONObject:
    """The body one target receives: ``model`` renamed to what that backend knows."""
    if target.model is None:
        return body
    return {**body, "model": target.model}
