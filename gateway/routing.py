"""Which route serves a request's ``model``. Pure: no I/O, no trio.

Exact names and aliases win over glob patterns; patterns are tried in the order the routes
appear in the config, and the first match wins.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .config import Route


class Router:
    __slots__ = ("_exact", "_patterns", "_routes")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self._routes = routes
        self._exact = {name: route for route in routes for name in route.public_names}
        self._patterns = [(p, route) for route in routes for p in route.settings.match]

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

    def upstream_model(self, route: Route, requested: str) -> str:
        """The model name sent upstream: the route's ``upstream_model``, else as asked."""
        return route.settings.upstream_model or requested
