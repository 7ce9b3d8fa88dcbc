"""Teams from the outside: the status page is the admin's once teams exist (the admin key,
as a bearer token or HTTP Basic, also in Chromium), and a gateway without teams says
loudly that auth is off."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from gateway.config import build_config
from gateway.service import open_gateway
from gateway.testing.fake_openai import FakeOpenAI

from .teams_gateway import (
    ADMIN,
    ALPHA,
    Start,
    basic,
    bearer,
    start,  # noqa: F401  (fixture)
)


async def test_status_page_needs_the_admin_key(start: Start) -> None:
    gw = await start()
    async with gw.client() as client:
        for headers in ({}, bearer(ALPHA), basic(ALPHA)):
            r = await client.get("/", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == 'Basic realm="trio-gateway", charset="UTF-8"'
            assert ALPHA not in r.text
            assert (await client.get("/status/events", headers=headers)).status_code == 401
        r = await client.get("/", headers=basic(ADMIN))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert (await client.get("/", headers=bearer(ADMIN))).status_code == 200
        async with client.stream("GET", "/status/events", headers=basic(ADMIN)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no key
            assert (await client.get(path)).status_code == 200


async def test_auth_off_is_announced(
    nursery: trio.Nursery, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    raw: dict[str, Any] = {
        "backends": {"fake": {"type": "openai", "url": fake.url}},
        "routes": {"m": {"backend": "fake"}},
    }
    async with open_gateway(build_config(raw, environ={})) as gw:
        assert gw.teams is not None and not gw.teams.enabled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("AUTH IS OFF") for w in warnings)


@pytest.mark.chromium
async def test_status_page_in_chromium_with_the_admin_password(start: Start) -> None:
    """A browser asked for the admin key (HTTP Basic) sends it again with the page's own
    EventSource request, so the live feed connects."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_status_page import CHROMIUM, CHROMIUM_ARGS

    gw = await start()

    def browse(url: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                seen["without"] = browser.new_context().request.get(url).status
                context = browser.new_context(
                    http_credentials={"username": "ops", "password": ADMIN}
                )
                page = context.new_page()
                response = page.goto(url)
                seen["with"] = response.status if response else None
                page.wait_for_selector("#conn.ready", timeout=30_000)
                page.wait_for_selector('#routes tr[data-route="chat"]', timeout=30_000)
                seen["ready"] = True
            finally:
                browser.close()
        return seen

    seen = await trio.to_thread.run_sync(browse, gw.url)
    assert seen == {"without": 401, "with": 200, "ready": True}
