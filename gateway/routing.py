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


# One limit under each name the APIs give it: a cap on one caps all a request carries (the
# SDKs send ``max_completion_tokens``, which vLLM and llama-cpp-python read first).
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def apply_policy(body: JSONObject, route: Route) -> JSONObject:
    """The route's request policy: ``defaults`` fill absent parameters, ``caps`` are
    ceilings (a larger value is lowered to the cap; an absent one is set to it). A cap on
    a token limit caps it under its other names too, where the request gives them."""
    settings = route.settings
    out = {**settings.defaults, **body} if settings.defaults else dict(body)
    for name, ceiling in settings.caps.items():
        capped = int(ceiling) if float(ceiling).is_integer() else ceiling
        if _over(out.get(name), ceiling):
            out[name] = capped
        if name in _TOKEN_LIMITS:
            for other in _TOKEN_LIMITS:
                if other != name and other in out and _over(out[other], ceiling):
                    out[other] = capped
    return out


def _over(value: object, ceiling: float) -> bool:
    """Whether ``value`` is no number within ``ceiling``."""
    return not isinstance(value, (int, float)) or isinstance(value, bool) or value > ceiling


def upstream_body(body: JSONObject, target: TargetSettings) -> JSONObject:
    """The body one target receives: ``model`` renamed to what that backend knows."""
    if target.model is None:
        return body
    return {**body, "model": target.model}
