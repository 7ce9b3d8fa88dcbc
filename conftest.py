"""Markers for the tests that need a compiled or external part, so that ``./dev test --fast``
can leave them out (``-m "not (llamacpp or chromium or redis or node)"``).

A test is marked by the fixtures it uses, so a new test that takes one of them is marked
without anyone remembering to: the real model (``model_path``, which every llama.cpp fixture
builds on), a Redis server (``redis_url``), the Node clients (``node_client``). Tests that
drive Chromium carry ``@pytest.mark.chromium`` themselves.
"""

from __future__ import annotations

import pytest

MARKER_OF_FIXTURE = {
    "model_path": "llamacpp",
    "llama_server": "llamacpp",
    "redis_url": "redis",
    "node_client": "node",
    "coding_agents": "node",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = MARKER_OF_FIXTURE.get(fixture)
            if marker is not None:
                item.add_marker(marker)
