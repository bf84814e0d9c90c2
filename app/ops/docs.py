"""`/docs` (Swagger UI) and `/redoc` served with their assets from the app, not a CDN.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net: on a machine without
internet, or behind a company proxy that blocks CDNs, `/docs` is a blank page. The assets come
from the `fastapi-offline` package (Swagger UI 5 and ReDoc 2 bundles, MIT); only its files
are used: its `FastAPIOffline()` builds a plain FastAPI, and this app is a `RelayApp`.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse

from app.ops.static import CachedStaticFiles

ASSETS_URL = "/static/docs"
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# The package's version pins its assets' content: a new release is a new URL.
_V = f"?v={version('fastapi-offline')}"


def install_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the docs pages to an app created with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_URL, CachedStaticFiles(directory=_ASSETS_DIR), name="docs-assets")
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js{_V}",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css{_V}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png{_V}",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def swagger_ui_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js{_V}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png{_V}",
            with_google_fonts=False,
        )

    # As routes of the app (not bare Starlette routes) so the request metrics name them.
    app.get(docs_url, include_in_schema=False)(swagger_ui)
    app.get(oauth2_redirect_url, include_in_schema=False)(swagger_ui_redirect)
    app.get(redoc_url, include_in_schema=False)(redoc)
