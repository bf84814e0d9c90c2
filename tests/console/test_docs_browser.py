"""`/docs` and `/redoc` render in Chromium with no network but the relay (issue 17 item 5:
FastAPI's own pages load their scripts from a CDN and were blank offline)."""

from __future__ import annotations

from playwright.async_api import expect

from tests.console.conftest import Tab

REDOC_BRANDING = "https://cdn.redoc.ly/redoc/logo-mini.svg"
# A few operations every version of the API has, by their OpenAPI summary and path.
OPERATIONS = {
    "/v1/messages": "Send",
    "/v1/messages/{ref}": "Look up one message by ref or id",
    "/v1/delivery-notifications": None,
}


async def test_swagger_ui_lists_the_operations_offline(tab: Tab) -> None:
    await tab.page.goto("/docs")
    summaries = tab.page.locator(".opblock-summary")
    await expect(summaries.first).to_be_visible(timeout=15_000)
    shown = set()
    for summary in await summaries.all():
        method = await summary.locator(".opblock-summary-method").inner_text()
        path = await summary.locator(".opblock-summary-path").inner_text()
        shown.add((method.lower(), path.replace("\u200b", "")))
    openapi = (await tab.relay.client.get("/openapi.json")).json()
    assert shown == {(m, p) for p, methods in openapi["paths"].items() for m in methods}
    assert {p for _, p in shown} >= set(OPERATIONS)
    assert tab.blocked == []


async def test_redoc_lists_the_operations_offline(tab: Tab) -> None:
    await tab.page.goto("/redoc")
    title = OPERATIONS["/v1/messages/{ref}"]
    assert title is not None
    await expect(tab.page.get_by_role("heading", name=title)).to_be_visible(timeout=15_000)
    await expect(tab.page.get_by_text("/v1/delivery-notifications").first).to_be_attached()
    # The one request ReDoc makes outside: its "API docs by Redocly" logo, a decorative image
    # hard-coded in the bundle; aborted, it leaves the page whole.
    assert all(url.startswith(REDOC_BRANDING) for url in tab.blocked), tab.blocked
