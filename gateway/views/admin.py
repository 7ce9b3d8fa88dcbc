"""``/admin``: what an operator with the admin key may ask (the app's auth hook checks the
key). Registered only with auth on — without teams there is nothing to account."""

from __future__ import annotations

import time

from quart import Blueprint, Response, request

from ..errors import InvalidRequest
from ..teams import Teams
from ..teams.usage import parse_since
from . import json_response


def blueprint(teams: Teams) -> Blueprint:
    admin = Blueprint("admin", __name__)

    @admin.get("/admin/usage")
    async def usage() -> Response:
        """Usage per team, route and backend: ``?team=NAME&since=24h`` (both optional).
        Raises :class:`InvalidRequest` (400) for a ``since`` it cannot read."""
        since_arg = request.args.get("since")
        try:
            since = parse_since(since_arg, now=time.time()) if since_arg else None
        except ValueError as error:
            raise InvalidRequest(str(error), param="since") from None
        rows = await teams.usage(team=request.args.get("team") or None, since=since)
        return json_response(
            {"object": "list", "since": since, "data": [row.as_json() for row in rows]}
        )

    return admin
