"""One pure ASGI middleware (no BaseHTTPMiddleware: the DN hook is a hot path).

Per request: take `X-Request-ID` (or make one) and return it, bind it to the log context,
time the request, count it by route template and status, and write one log line (the DN
hook's 200s at DEBUG: see `RequestMiddleware`).

It also refuses, in the error shape, what is too big to handle: headers over
`MAX_HEADER_BYTES` or `MAX_HEADERS` fields (431; uvicorn's default httptools parser has no
limit of its own) and a body over `max_body_bytes` (413), declared by Content-Length (refused
before the app runs) or streamed (refused when the endpoint reads past the limit).
"""

from __future__ import annotations

import logging
import os
import re
import time

import structlog
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.ops.metrics import HTTP_LATENCY, HTTP_REQUESTS, labelled

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_HEADER_BYTES = 16 * 1024  # what uvicorn's h11 parser allows for a whole request head
MAX_HEADERS = 100
# A handler may put a dict of fields here, in the scope, for the request's log line (the send
# path: its send id and outcome counts), rather than write a line of its own.
LOG_FIELDS = "relay.log_fields"


def _read_head(headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes, int]:
    """(request id, declared Content-Length, bytes of headers) in one pass over the head."""
    request_id = None
    declared_length = b""
    header_bytes = 0
    for name, value in headers:
        header_bytes += len(name) + len(value)
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            # A caller's id is echoed only if harmless in a log line and a header.
            if _SAFE_ID.match(candidate):
                request_id = candidate
        elif name == b"content-length":
            declared_length = value
    if request_id is None:
        request_id = os.urandom(16).hex()  # as unique as a uuid4, a fraction of the cost
    return request_id, declared_length, header_bytes


class RequestMiddleware:
    """`hot_path=True` for the DN hook: thousands of requests a second, each stored with its
    receipt time and counted in the metrics. Its successful requests are logged at DEBUG (the
    rest, 4xx and 503s included, at INFO like every request), and, as the hook logs nothing
    of its own, the request id goes into the log line instead of a context variable."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int | None = None, hot_path: bool = False
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.bind_context = not hot_path
        # Per instance: a logger proxy is bound to the level configured when first used.
        self._log = structlog.get_logger("app.request")
        self._debug: bool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, declared_length, header_bytes = _read_head(scope["headers"])
        rid_header = request_id.encode()
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid_header)]
            await send(message)

        if self.bind_context:
            structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            refusal = self._refusal(len(scope["headers"]), header_bytes, declared_length)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            elif self.max_body_bytes is not None:
                await self.app(scope, self._limited(receive, self.max_body_bytes), send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self._account(scope, status, time.perf_counter() - started, request_id)

    def _account(self, scope: Scope, status: int, duration: float, request_id: str) -> None:
        """Count and time the request by route template and status; write its log line."""
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        labelled(HTTP_REQUESTS, method, template, str(status)).inc()
        labelled(HTTP_LATENCY, method, template).observe(duration)
        if not self.bind_context and status == 200 and not self._log_hot_200():
            return  # the DN hook's 200s are logged at DEBUG only: build nothing
        fields = {
            "method": method,
            "route": template,
            "status": status,
            "duration_ms": round(duration * 1000, 2),
        }
        extra = scope.get(LOG_FIELDS)
        if extra:
            fields.update(extra)
        if self.bind_context:
            self._log.info("request", **fields)
            structlog.contextvars.unbind_contextvars("request_id")
        else:
            (self._log.debug if status == 200 else self._log.info)(
                "request", request_id=request_id, **fields
            )

    def _log_hot_200(self) -> bool:
        """Whether DEBUG lines are written: asked once, when the first one would be (the
        logger proxy is bound to the level configured then, and stays so)."""
        if self._debug is None:
            self._debug = bool(self._log.is_enabled_for(logging.DEBUG))
        return self._debug

    def _refusal(self, headers: int, header_bytes: int, declared_length: bytes) -> Response | None:
        if headers > MAX_HEADERS or header_bytes > MAX_HEADER_BYTES:
            return error_response(
                431,
                "headers_too_large",
                f"request headers are limited to {MAX_HEADER_BYTES} bytes and {MAX_HEADERS} fields",
            )
        limit = self.max_body_bytes
        # More than 18 digits is too big whatever the limit (and int() of thousands raises).
        if (
            limit is not None
            and declared_length.isdigit()
            and (len(declared_length) > 18 or int(declared_length) > limit)
        ):
            return error_response(413, "payload_too_large", f"the body is over {limit} bytes")
        return None

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the endpoint reading the body: the app's handler answers it.
                    raise HTTPException(413, f"the body is over {limit} bytes")
            return message

        return limited_receive
