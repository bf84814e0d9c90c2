"""The DN hook (`GET|POST /dn/{token}`), the path Bulk360 posts delivery notifications to.

The hook is the hot path: Bulk360 may post thousands of DNs a second. It reads the raw ASGI
request (no typed parameters, no pydantic per DN, no FastAPI per-request wrappers: see
`DNHookRoute`), validates by hand (inbound.py), and awaits the commit of the group-commit
batch holding its DN (`writer.DNWriter`). Answers:

- 200 `OK` once the DN's transaction has committed;
- 400 naming the missing or invalid field, 413 for a body over 16 KiB, 415 for a body that is
  neither a form nor JSON (never a 500 for what a sender got wrong);
- 404 for a wrong token, byte-identical to an unknown path's 404 (the same exception goes
  through the same handler) and compared in constant time;
- 403 when `DN_ALLOWED_CIDRS` is set and the client address is outside it. The token is
  checked first, so a 403 tells nothing to anyone who does not already hold the token;
- 503 (with `Retry-After`) when the DN cannot be stored now: queue full, database down, or no
  commit within `DN_ACK_TIMEOUT_S`. The sender retries; a retried DN is stored again, which
  the "last DN received is final" rule absorbs.

Client address: the allow-list reads the ASGI `client` address, i.e. the socket peer. Behind a
reverse proxy that is the proxy; run `bulk360-relay serve --forwarded-allow-ips <proxy IPs>` so
that uvicorn replaces it with the address from `X-Forwarded-For`, and only for those proxies
(never `*` on a port the internet can reach: anyone could then claim any address).
IPv4-mapped IPv6 peers (`::ffff:203.0.113.7`) are matched as IPv4.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import IPNetwork
from app.deps import State
from app.errors import (
    error_response,
    error_responses,
    http_error_response,
    unexpected_error_response,
)
from app.notifications.inbound import (
    MAX_QUERY_BYTES,
    BadDN,
    body_fields,
    parse_dn,
    urlencoded_fields,
)
from app.notifications.writer import DNStoreError, DNUnavailable
from app.ops.metrics import DN_RECEIVED
from app.ops.middleware import RequestMiddleware

_STORED = DN_RECEIVED.labels("stored")
_REJECTED = DN_RECEIVED.labels("rejected")
_UNAVAILABLE = DN_RECEIVED.labels("unavailable")


def _client_allowed(scope: Scope, networks: tuple[IPNetwork, ...]) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        ip = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


_OPENAPI_HOOK: dict[str, Any] = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in ("msgid", "status", "error-code", "msisdn")
    ],
    "requestBody": {
        "required": False,
        "content": {
            media: {
                "schema": {
                    "type": "object",
                    # JSON numbers are read as their text (an error code sent as 0 is "0").
                    "properties": {
                        "msgid": {"type": ["string", "number"], "example": "a1b2c3d4e5"},
                        "status": {"type": ["string", "number"], "example": "DELIVERED"},
                        # Optional: null is read as absent.
                        "error-code": {"type": ["string", "number", "null"], "example": "000"},
                        "msisdn": {"type": ["string", "number", "null"], "example": "60123240066"},
                    },
                    # Not "required" here: they may come in the query string instead.
                    "description": "`msgid` and `status` are required, in the body or the query.",
                }
            }
            for media in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "application/json",
            )
        },
    },
    "responses": {
        "200": {"description": "Stored (committed).", "content": {"text/plain": {"example": "OK"}}},
        **{
            str(status): {
                "description": text,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            }
            for status, text in (
                (400, "A required field is missing or invalid (named in `detail`)."),
                (403, "DN_ALLOWED_CIDRS is set and the client address is outside it."),
                (404, "Wrong token (the same answer as an unknown path)."),
                (413, "Body over 16 KiB."),
                (415, "Body neither a form nor JSON."),
                (503, "Not stored now (queue full, database down, timeout): retry."),
            )
        },
    },
}


def _right_token(scope: Scope, token: str) -> bool:
    """The DN hook token, compared in constant time."""
    relay: State | None = scope.get("state", {}).get("relay")
    return relay is not None and hmac.compare_digest(
        token.encode(), relay.settings.effective_dn_hook_token.encode()
    )


async def _receive_dn(scope: Scope, receive: Receive) -> Response | None:
    """The hook's work, once the token is checked: None once the DN is committed (answer
    200 OK), else the answer."""
    received_ts = time.time()
    state: State = scope["state"]["relay"]
    settings = state.settings
    networks = settings.dn_allowed_networks
    if networks and not _client_allowed(scope, networks):
        _REJECTED.inc()
        return error_response(403, "forbidden", "this client address may not post DNs")
    try:
        query = scope["query_string"]
        if len(query) > MAX_QUERY_BYTES:
            raise BadDN(413, "payload_too_large", f"a DN query is at most {MAX_QUERY_BYTES} bytes")
        fields: dict[str, Any] = urlencoded_fields(query, "query string") if query else {}
        if scope["method"] == "POST":
            fields.update(await body_fields(scope, receive))
        dn = parse_dn(fields, received_ts)
    except BadDN as exc:
        _REJECTED.inc()
        return error_response(exc.status, exc.code, exc.detail)
    try:
        await state.dn_writer.store(dn)
    except DNUnavailable as exc:
        _UNAVAILABLE.inc()
        return error_response(503, "dn_unavailable", f"{exc}; retry", {"Retry-After": "1"})
    except DNStoreError:
        _UNAVAILABLE.inc()
        return error_response(500, "internal_error", "the DN could not be stored")
    _STORED.inc()
    return None


_OK_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"2")]


async def _answer_dn(scope: Scope, receive: Receive, send: Send) -> None:
    answer = await _receive_dn(scope, receive)
    if answer is not None:
        await answer(scope, receive, send)
        return
    # A fresh start message each time: middleware may add headers to it.
    await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
    await send({"type": "http.response.body", "body": b"OK"})


class DNHookRoute(APIRoute):
    """The hook's route: matched, documented and counted like any APIRoute, but handled as
    bare ASGI. Requests with the right token normally never get here (`DNHookFastPath`
    answers them first); a wrong token does, and gets the router's own 404."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "POST"):
            raise StarletteHTTPException(405, headers={"Allow": "GET, POST"})
        if not _right_token(scope, scope["path_params"]["token"]):
            raise StarletteHTTPException(404)  # exactly what an unknown path raises
        await _answer_dn(scope, receive, send)


class _HookTemplate:
    # What the request middleware reads from scope["route"] for its metrics and log line.
    path = "/dn/{token}"


class DNHookFastPath:
    """Answers DNs with the right token before FastAPI's own stack; `app` gets the rest.

    The hook is the hot path (thousands of DNs a second). `main.RelayApp` puts this in front
    of FastAPI's middleware stack: its layers (error, telemetry, body limit, exceptions, exit
    stack, routing) each cost CPU on every request and on every resumption of the request's
    coroutine chain. A right-token DN gets the request middleware (request id, metrics, log
    line: at DEBUG for a 200, see `RequestMiddleware`) and the hook; anything else, a wrong
    token included, goes to `app` unchanged, so its 404 stays byte-identical to an unknown
    path's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._instrumented = RequestMiddleware(self._answer, hot_path=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "POST")
            and scope["path"].startswith("/dn/")
        ):
            token = scope["path"][4:]
            if _right_token(scope, token):
                scope["route"] = _HookTemplate
                scope["path_params"] = {"token": token}
                await self._instrumented(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _answer_dn(scope, receive, send)
        except StarletteHTTPException as exc:
            await http_error_response(exc)(scope, receive, send)
        except Exception as exc:  # what the app's own handler would answer
            await unexpected_error_response(exc)(scope, receive, send)


hook_router = APIRouter(tags=["delivery notifications"], route_class=DNHookRoute)


async def dn_hook(
    token: Annotated[
        str, Path(description="`DN_HOOK_TOKEN`: the secret part of the URL given to Bulk360.")
    ],
) -> Response:
    """Store one DN (`status`, `error-code`, `msisdn`, `msgid`) from a query string, form or
    JSON object; 200 only after it is committed."""
    # Documentation only: `DNHookRoute.handle` answers the route without calling this.
    raise NotImplementedError


# One route per method, so each has its own OpenAPI operation id.
for _method in ("GET", "POST"):
    hook_router.add_api_route(
        "/dn/{token}",
        dn_hook,
        methods=[_method],
        operation_id=f"dn_hook_{_method.lower()}",
        summary="Delivery notification hook (called by Bulk360)",
        # A GET's body is not read: only the POST documents one.
        openapi_extra=_OPENAPI_HOOK
        if _method == "POST"
        else {k: v for k, v in _OPENAPI_HOOK.items() if k != "requestBody"},
        responses=error_responses(),  # registers ErrorBody in the components
    )
