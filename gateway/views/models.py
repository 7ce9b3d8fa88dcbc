"""``GET /v1/models`` and ``GET /v1/models/{model}``: the model names the caller may use —
every route's public names with auth off, the ones the caller's team may use with it on.

A request with an ``anthropic-version`` header (what Anthropic's SDKs send) gets Anthropic's
shapes (``type: "model"``, ``display_name``, ``created_at``; a list page with ``has_more``,
``first_id`` and ``last_id``); any other, OpenAI's."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, request

from ..errors import ModelNotFound, shown
from ..service import Gateway
from ..teams import Identity
from . import json_response


def blueprint(gateway: Gateway) -> Blueprint:
    models = Blueprint("models", __name__)

    def visible_models() -> list[str]:
        teams = gateway.auth
        identity: Identity | None = g.get("identity")  # set by the app's auth hook
        if teams is None or identity is None:
            return gateway.router.public_models()
        return [
            name
            for route in gateway.router.routes
            if teams.may_use(identity.team, route)
            for name in route.public_names
        ]

    @models.get("/v1/models")
    async def list_models() -> Response:
        names = visible_models()
        if not _anthropic():
            return json_response({"object": "list", "data": [_model_card(n) for n in names]})
        return json_response(
            {
                "data": [_anthropic_card(n) for n in names],
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        )

    @models.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        """Raises :class:`ModelNotFound` (404) for a model the caller may not see."""
        if model not in visible_models():
            raise ModelNotFound(f"The model `{shown(model)}` does not exist", param="model")
        return json_response(_anthropic_card(model) if _anthropic() else _model_card(model))

    return models


def _anthropic() -> bool:
    return "anthropic-version" in request.headers


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "trio-gateway"}


def _anthropic_card(name: str) -> dict[str, Any]:
    # The gateway knows no release date of a route; the epoch says so plainly.
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": "1970-01-01T00:00:00Z",
    }
