"""``GET`` and ``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``: the
responses the gateway stored (``store`` on, OpenAI's default), each visible to its own team
only — another team's id is a 404, as an unknown one is. With auth off there are no teams,
and the ids are the only secret."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, request

from ..errors import InvalidRequest, NotFound
from ..responses import ResponseStore, StoredResponse
from ..teams import Identity
from . import json_response


def blueprint(store: ResponseStore) -> Blueprint:
    responses = Blueprint("responses", __name__)

    async def stored(response_id: str) -> StoredResponse:
        identity: Identity | None = g.get("identity")  # set by the app's auth hook
        found = await store.get(identity.team if identity else "", response_id)
        if found is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return found

    @responses.get("/v1/responses/<response_id>")
    async def retrieve(response_id: str) -> Response:
        if request.args.get("stream") in ("true", "1"):
            raise InvalidRequest(
                "replaying a stored response as a stream is not supported; ask without stream",
                param="stream",
            )
        return json_response((await stored(response_id)).response)

    @responses.delete("/v1/responses/<response_id>")
    async def delete(response_id: str) -> Response:
        identity: Identity | None = g.get("identity")
        if not await store.delete(identity.team if identity else "", response_id):
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return json_response({"id": response_id, "object": "response", "deleted": True})

    @responses.get("/v1/responses/<response_id>/input_items")
    async def input_items(response_id: str) -> Response:
        """The request's input items, newest first unless ``?order=asc``; ``limit`` (1-100,
        default 20) and ``after`` (an item id) page through them."""
        items = list((await stored(response_id)).input_items)
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
        if order == "desc":
            items.reverse()
        after = request.args.get("after")
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequest(f"no input item with id '{after}'", param="after")
            items = items[ids.index(after) + 1 :]
        limit = _limit(request.args.get("limit", "20"))
        page = items[:limit]
        return json_response(_page(page, has_more=len(items) > limit))

    return responses


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit")
    return int(text)


def _page(items: list[Any], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0].get("id") if items else None,
        "last_id": items[-1].get("id") if items else None,
        "has_more": has_more,
    }
