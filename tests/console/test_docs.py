"""The API docs pages load every asset from the app, with cache headers (no browser)."""

from __future__ import annotations

import re

import pytest

from app.ops.static import IMMUTABLE, REVALIDATE
from tests.conftest import Relay

ASSET = re.compile(r"""(?:src|href)=["']?([^"' >]+)""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_nothing_from_another_host(relay: Relay, page: str) -> None:
    response = await relay.client.get(page)
    assert response.status_code == 200
    assets = ASSET.findall(response.text)
    assert assets, "the page links its assets"
    assert all(a.startswith("/static/docs/") for a in assets), assets
    assert "cdn" not in response.text.lower()
    for asset in assets:
        served = await relay.client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["cache-control"] == IMMUTABLE  # versioned URL


async def test_unversioned_asset_is_revalidated_and_answers_304(relay: Relay) -> None:
    first = await relay.client.get("/static/docs/swagger-ui.css")
    assert first.headers["cache-control"] == REVALIDATE
    again = await relay.client.get(
        "/static/docs/swagger-ui.css", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304


async def test_docs_pages_are_not_operations(relay: Relay) -> None:
    paths = (await relay.client.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc", "/static")) for p in paths)
