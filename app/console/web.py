"""The console's plumbing: its per-process state, the route class that guards every page and
adds the security headers, templates, and the signed-in dependency."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.console.session import ConsoleSession, Sessions
from app.console.views import region_zone, when
from app.deps import StateDep
from app.errors import AppError, is_database_unavailable
from app.ops.static import content_version
from app.pagination import Cursor, decode_cursor

log = structlog.get_logger("app.console")

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_URL = "/console/static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["css_url"] = (
    f"{STATIC_URL}/console.css?v={content_version(STATIC_DIR / 'console.css')}"
)

# No script at all (the pages work without JavaScript), styles from our own file only (no
# inline style attributes either), no framing, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # Pages show customers' phone numbers: not kept by the browser or a proxy.
    "Cache-Control": "no-store",
}


class Console:
    """Per process: the session cookies' signer and the operator's zone (the sign-in throttle
    is in the database: throttle.py)."""

    def __init__(self, state: Any) -> None:
        settings = state.settings
        self.sessions = Sessions(settings)
        self.region: str = settings.default_region
        self.zone = region_zone(settings.default_region)
        self.sandbox: bool = settings.sandbox


async def get_console(state: StateDep) -> Console:
    console = state.extras.get("console")
    if not isinstance(console, Console):
        console = state.extras["console"] = Console(state)
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]


class NotSignedInError(Exception):
    pass


class PageError(Exception):
    """Answered as an HTML page with this status (not the API's JSON error shape)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


async def signed_in(request: Request, console: ConsoleDep) -> ConsoleSession:
    session = console.sessions.read(request)
    if session is None or session.key_name is None:
        raise NotSignedInError
    request.state.console_session = session
    return session


OperatorDep = Annotated[ConsoleSession, Depends(signed_in)]


def render(
    request: Request,
    console: Console,
    session: ConsoleSession | None,
    template: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    zone = console.zone
    base = {
        "operator": session.key_name if session else None,
        "csrf_token": console.sessions.csrf_token(session) if session else "",
        "zone_name": zone.key,
        "region": console.region,
        "sandbox": console.sandbox,
        "when": lambda value: when(value, zone),
    }
    return templates.TemplateResponse(request, template, base | context, status_code=status)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console"


class ConsoleRoute(APIRoute):
    """Every console answer gets the security headers; a visitor who is not signed in is sent
    to the sign-in page (and back afterwards); a PageError or a database outage is an HTML
    page rather than the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except NotSignedInError:
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(
                    f"/console/sign-in?next={quote(here, safe='')}", status_code=303
                )
            except PageError as exc:
                response = _error_page(request, exc)
            except RequestValidationError as exc:
                problem = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
                )
                response = _error_page(request, PageError(422, "Not understood", problem))
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                log.warning("console page without a database", path=request.url.path)
                response = _error_page(
                    request,
                    PageError(503, "Database unavailable", "Try again in a moment."),
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return guarded


PAGE_SIZE = 50


def decode_page_cursor(raw: str | None) -> Cursor | None:
    if not raw:
        return None
    try:
        return decode_cursor(raw)
    except AppError:
        raise PageError(400, "Bad page link", "That next-page link is damaged.") from None


# Every console page is a route of this router (endpoints.py, callback_pages.py).
router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def _error_page(request: Request, exc: PageError) -> HTMLResponse:
    relay = request.scope.get("state", {}).get("relay")
    console = relay.extras.get("console") if relay is not None else None
    session = getattr(request.state, "console_session", None)
    context = {"title": exc.title, "detail": exc.detail}
    if isinstance(console, Console):
        return render(request, console, session, "error.html", exc.status, **context)
    return templates.TemplateResponse(request, "error.html", context, status_code=exc.status)
