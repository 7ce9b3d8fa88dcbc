"""The Quart blueprints of what the gateway answers itself, one concern each:

- :mod:`.probes` — ``/healthz``, ``/readyz`` and ``/metrics``, open to probes and scrapers;
- :mod:`.models` — ``/v1/models``, the models the caller may use;
- :mod:`.status_page` — the live status page (``/``) and its SSE feed;
- :mod:`.admin` — ``/admin/usage``, with auth on.

:func:`gateway.app.create_app` registers them and adds what they share (request ids, auth,
the access log, error answers). Each module exposes ``blueprint(...)``, built for one
gateway.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a JSON response, written by :func:`json.dumps` as it is."""
    return Response(json.dumps(payload), status=status, content_type="application/json")
