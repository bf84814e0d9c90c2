"""One error type and one handler: every error answers `{"error": code, "detail": text}`.

Validation errors are reshaped the same way, naming the field and the offending value; an
unexpected exception is a 500 with no stack trace in the body; the database being unreachable
is a 503, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = structlog.get_logger("app.errors")


class AppError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


class ErrorBody(BaseModel):
    """The error shape of every endpoint."""

    error: str
    detail: str


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """An HTTPException (404, 405, 413, ...) in the error shape."""
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error shape for the given statuses."""
    return {status: {"model": ErrorBody} for status in statuses}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc is ("body", <offset>), input is {}
            where = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            parts.append(f"body: not valid JSON at character {where} ({reason})")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if "input" in err and err.get("type") != "missing":
            value = err["input"]
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            if len(shown) > 80:
                shown = shown[:77] + "..."
            parts.append(f"{field}: {msg} (got {shown})")
        else:
            parts.append(f"{field}: {msg}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(
    app: FastAPI, refusal: Callable[[Request], AppError | None] | None = None
) -> None:
    """`refusal(request)`: what to answer instead of a 400/422 raised before the route's
    dependencies ran (FastAPI reads the body first), e.g. the 401 of a missing API key."""

    def refused(request: Request) -> JSONResponse | None:
        exc = refusal(request) if refusal is not None else None
        return (
            None if exc is None else error_response(exc.status, exc.code, exc.detail, exc.headers)
        )

    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refused(request) or error_response(
            422, "validation_error", _describe_validation(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            return refused(request) or http_error_response(exc)
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
        return http_error_response(exc)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeoutError)
    @app.exception_handler(OSError)
    async def _db_error(request: Request, exc: Exception) -> JSONResponse:
        if is_database_unavailable(exc):
            log.warning("database_unavailable", error=type(exc).__name__)
            return database_unavailable_response()
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method the path serves: Starlette's 405 names only the first route matching the
    path, though another route may serve the same path with other methods. Asked of the
    router itself (routers nest), one method at a time: only 405s pay for it."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def unexpected_error_response(exc: Exception) -> JSONResponse:
    """The answer to an exception nothing else handled (logged, without its arguments)."""
    # asyncpg's own errors can escape SQLAlchemy unwrapped (a connection dying during its
    # set-up): still "the database is unreachable", never a 500.
    if is_database_unavailable(exc):
        log.warning("database_unavailable", error=type(exc).__name__)
        return database_unavailable_response()
    log.error("unhandled_error", error=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred")


_UNAVAILABLE_NAMES = frozenset(
    {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "CannotConnectNowError",
        "ConnectionFailureError",
        "AdminShutdownError",
        "CrashShutdownError",
        "TooManyConnectionsError",
        # A connection left mid-operation by a cut ("cannot switch to state ...; another
        # operation is in progress"): unusable, so discarded, and the DN answered 503.
        "InternalClientError",
    }
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True for "cannot reach / lost the database", as opposed to a bug or a constraint.

    Looks down the cause chain: while Postgres shuts down or starts up, SQLAlchemy wraps
    asyncpg's CannotConnectNowError (57P03) in a plain DBAPIError that is not marked as a
    disconnect, and the DN writer sees asyncpg's errors unwrapped.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolTimeoutError | OperationalError | InterfaceError | OSError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if type(current).__name__ in _UNAVAILABLE_NAMES:
            return True
        # 08xxx connection exceptions, 57P0x shutdown/start-up, 53300 too many connections.
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(("08", "57P", "53300")):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def database_unavailable_response() -> JSONResponse:
    return error_response(503, "database_unavailable", "the database is unreachable; retry")
