"""The status page in a real headless Chromium (Debian's, driven by Playwright).

The browser runs in a worker thread (Playwright's sync API); the gateway, the fake upstream
and the streaming client run in the test's trio loop. Nothing here waits on a timer: the
browser waits for states of the page (a row in "prefill", its heartbeat count rising, the
row gone) and the test waits for the browser.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import Page, sync_playwright

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed, headless machine: no sandbox as root, nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


def drive_browser(url: str, request_started: Any, problems: list[str]) -> dict[str, Any]:
    """Open the page, check routes and backends, then follow one stream through its life.
    ``request_started()`` is called (via trio) once the page is live, to start the stream."""
    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(url, wait_until="load")

            page.wait_for_selector('#routes tr[data-route="chat"]', timeout=WAIT_MS)
            page.wait_for_selector('#backends tr[data-backend="fake"]', timeout=WAIT_MS)
            page.wait_for_selector("#conn.ready", timeout=WAIT_MS)
            seen["route_row"] = page.inner_text('#routes tr[data-route="chat"]')
            seen["backend_row"] = page.inner_text('#backends tr[data-backend="fake"]')

            request_started()
            row = '#streams tr[data-request-id="page-test"]'
            page.wait_for_selector(f'{row}[data-phase="prefill"]', timeout=WAIT_MS)
            seen["first_heartbeats"] = int(page.get_attribute(row, "data-heartbeats") or 0)
            page.wait_for_function(
                """(min) => {
                    const row = document.querySelector('#streams tr[data-request-id="page-test"]');
                    return row !== null && row.dataset.phase === "prefill"
                        && Number(row.dataset.heartbeats) >= min;
                }""",
                arg=seen["first_heartbeats"] + 2,
                timeout=WAIT_MS,
            )
            seen["later_heartbeats"] = int(page.get_attribute(row, "data-heartbeats") or 0)
            seen["prefill_row"] = page.inner_text(row)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-page-prefill.png"), full_page=True)

            page.wait_for_selector(row, state="detached", timeout=WAIT_MS)
            seen["after"] = page.inner_text("#streams")
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        finally:
            browser.close()
    return seen


@pytest.mark.chromium
async def test_status_page_in_chromium_follows_a_stream(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(keepalive={"interval": 0.2, "comment": "still-here"})
    go = trio.Event()
    received: list[bytes] = []

    async def stream_once() -> None:
        await go.wait()
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "fake": {"prefill": 3, "tokens": 4},
        }
        async with (
            gw.client() as client,
            client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-request-id": "page-test"}
            ) as resp,
        ):
            assert resp.status_code == 200
            async for chunk in resp.aiter_raw():
                received.append(chunk)

    problems: list[str] = []
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_once)
        seen = await trio.to_thread.run_sync(
            drive_browser,
            gw.url + "/",
            lambda: trio.from_thread.run_sync(go.set, trio_token=token),
            problems,
        )

    assert problems == []
    assert "chat" in seen["route_row"] and "m" in seen["route_row"]
    assert "0.2 s" in seen["route_row"] and "still-here" in seen["route_row"]
    assert seen["backend_row"].split("\t")[:3] == ["fake", "openai", "unknown"]
    assert "prefill" in seen["prefill_row"]
    assert seen["later_heartbeats"] >= seen["first_heartbeats"] + 2
    assert "Nothing in flight." in seen["after"]
    # The client finished its stream, and heard the heartbeats the page counted.
    raw = b"".join(received)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b": still-here\n\n") >= seen["later_heartbeats"]
    assert (ARTIFACTS / "status-page.png").stat().st_size > 0


async def test_feed_is_sse_with_heartbeats_and_can_be_switched_off(
    start_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    gw = await start_gateway()
    async with gw.client() as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert b"<script" in page.content and b"src=" not in page.content  # no external assets
        async with client.stream("GET", "/status/events") as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break
        assert '"routes"' in line and '"name": "chat"' in line
        [backend] = json.loads(line.removeprefix("data: "))["backends"]
        assert backend["keepalive"] == {}  # the route's policy, unchanged
    # Its viewer leaving is how a feed ends: its line is written then.
    await wait_until(lambda: any("/status/events" in r.getMessage() for r in caplog.records))

    off = await start_gateway(server={"status_page": False})
    async with httpx.AsyncClient(base_url=off.url) as client:
        resp = await client.get("/")
        assert resp.status_code == 404
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert (await client.get("/status/events")).status_code == 404
