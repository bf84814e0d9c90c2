"""Browser-test fixtures: Debian's Chromium driven by Playwright (async API: pytest-asyncio's
loop is already running, and Playwright's sync API refuses to start inside one), the relay on
a real socket with the simulator as its upstream and DN sender.

The browser only reaches the relay: every other request is aborted and recorded, as on a
machine without internet. After each browser test a full-page screenshot is saved under
`.artifacts/screenshots/` (git-ignored), named after the test.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright

from app.bulk360.simulator import Simulator
from app.config import Settings
from app.main import create_app
from tests.conftest import DN_TOKEN, TEST_API_KEY, relay_settings
from tests.servers import bound_socket, serve_in_loop

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",  # no update checks or field trials: there is no internet
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"


@dataclass
class LiveRelay:
    url: str
    client: httpx.AsyncClient  # authenticated with TEST_API_KEY
    settings: Settings
    simulator: Simulator


@dataclass
class Tab:
    """A page of a browser context that only reaches the relay."""

    page: Page
    context: BrowserContext
    relay: LiveRelay
    blocked: list[str] = field(default_factory=list)  # URLs outside the relay it asked for


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        # Never a skip: `.ci/run` installs Debian's chromium when it is missing.
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@contextlib.asynccontextmanager
async def serve_relay(
    db_url: str, simulator: Simulator, **overrides: Any
) -> AsyncIterator[LiveRelay]:
    """The relay served on 127.0.0.1 by uvicorn; the simulator sends its DNs to it."""
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    simulator.config.dn_url = f"{url}/dn/{DN_TOKEN}"
    settings = relay_settings(db_url, simulator.base_url, public_base_url=url, **overrides)
    async with (
        serve_in_loop(create_app(settings), sock),
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TEST_API_KEY}"}
        ) as client,
    ):
        yield LiveRelay(url, client, settings, simulator)


@pytest.fixture
async def live_relay(db_url: str, simulator: Simulator) -> AsyncIterator[LiveRelay]:
    async with serve_relay(db_url, simulator) as relay:
        yield relay


async def open_tab(
    browser: Browser, relay: LiveRelay, *, width: int = 1280, java_script: bool = True
) -> Tab:
    context = await browser.new_context(
        base_url=relay.url,
        viewport={"width": width, "height": 900},
        java_script_enabled=java_script,
    )
    tab = Tab(await context.new_page(), context, relay)

    async def only_the_relay(route: Route) -> None:
        if route.request.url.startswith(relay.url + "/"):
            await route.continue_()
        else:
            tab.blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", only_the_relay)
    return tab


@pytest.fixture
async def tab(
    browser: Browser, live_relay: LiveRelay, request: pytest.FixtureRequest
) -> AsyncIterator[Tab]:
    """A desktop-sized tab on the live relay; screenshotted when the test ends."""
    tab = await open_tab(browser, live_relay)
    try:
        yield tab
    finally:
        await save_screenshot(tab.page, request.node.name)
        await tab.context.close()


async def save_screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".png")
    if not page.is_closed():
        await page.screenshot(path=path, full_page=True)
    return path
