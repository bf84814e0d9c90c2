"""The DN hook (`GET|POST /dn/{token}`), the DN listing and the error-code tables.

The hook is the hot path: Bulk360 may post thousands of DNs a second. It reads the raw ASGI
request (no typed parameters, no pydantic per DN, no FastAPI per-request wrappers: see
`DNHookRoute`), validates by hand, and awaits the commit of the group-commit batch holding its
DN (`writer.DNWriter`). Answers:

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

import base64
import binascii
import hmac
import ipaddress
import re
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Query
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from app.bulk360.codes import describe_error_code, error_code_tables, normalise_error_code
from app.config import IPNetwork
from app.deps import ApiKeyDep, SessionDep, State
from app.errors import (
    AppError,
    error_response,
    error_responses,
    http_error_response,
    unexpected_error_response,
)
from app.models import DeliveryNotification
from app.notifications.schemas import (
    DeliveryNotificationOut,
    DeliveryNotificationPage,
    ErrorCodeTables,
)
from app.notifications.writer import DNStoreError, DNUnavailable, InboundDN
from app.ops.metrics import DN_RECEIVED
from app.ops.middleware import RequestMiddleware

MAX_DN_BODY_BYTES = 16 * 1024  # a DN is four short fields; anything bigger is not a DN
MAX_QUERY_BYTES = 4 * 1024
# Column sizes (models.DeliveryNotification): checked here so no DN can fail its batch.
FIELD_LIMITS = {"msgid": 128, "status": 64, "error-code": 32, "msisdn": 64}

_STORED = DN_RECEIVED.labels("stored")
_REJECTED = DN_RECEIVED.labels("rejected")
_UNAVAILABLE = DN_RECEIVED.labels("unavailable")


router = APIRouter(tags=["delivery notifications"])


class _BadDN(Exception):  # noqa: N818 - control flow inside the hook
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


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


async def _read_body(receive: Callable[[], Any]) -> bytes:
    body = b""
    while True:
        message: ASGIMessage = await receive()
        if message["type"] != "http.request":  # the client went away
            raise _BadDN(400, "client_disconnected", "the client disconnected")
        body += message.get("body", b"")
        if len(body) > MAX_DN_BODY_BYTES:
            raise _BadDN(
                413, "payload_too_large", f"a DN body is at most {MAX_DN_BODY_BYTES} bytes"
            )
        if not message.get("more_body", False):
            return bytes(body)


async def _multipart_fields(scope: Scope, body: bytes) -> dict[str, Any]:
    sent = False

    async def replay() -> ASGIMessage:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(scope, replay).form(max_files=0, max_fields=64) as form:
            return dict(form.items())
    except StarletteHTTPException as exc:
        raise _BadDN(400, "malformed_body", f"multipart form: {exc.detail}") from None
    except Exception:  # python-multipart raises several types for broken input
        raise _BadDN(400, "malformed_body", "the multipart form could not be parsed") from None


async def _body_fields(scope: Scope, receive: Callable[[], Any]) -> dict[str, Any]:
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise _BadDN(400, "malformed_body", "Content-Length is not a number")
            if int(value) > MAX_DN_BODY_BYTES:
                raise _BadDN(
                    413, "payload_too_large", f"a DN body is at most {MAX_DN_BODY_BYTES} bytes"
                )
        elif name == b"content-type":
            content_type = value.lower()
    body = await _read_body(receive)
    if not body.strip():
        return {}
    if content_type.startswith(b"application/x-www-form-urlencoded"):
        return _urlencoded_fields(body, "form body")
    if content_type.startswith(b"application/json") or b"+json" in content_type:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _BadDN(400, "malformed_body", "the body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise _BadDN(400, "malformed_body", "the JSON body must be an object")
        return parsed
    if content_type.startswith(b"multipart/form-data"):
        return await _multipart_fields(scope, body)
    shown = content_type.decode("latin-1")[:60] or "none"
    raise _BadDN(
        415,
        "unsupported_media_type",
        f"Content-Type {shown!r}: send a query string, a form or a JSON object",
    )


def _urlencoded_fields(raw: bytes, where: str) -> dict[str, Any]:
    # Strict UTF-8, raw or percent-encoded: a lenient decode would store mojibake or U+FFFD
    # in place of what was sent, with a 200.
    try:
        text = raw.decode()
        if "%" not in text and "+" not in text:
            # What DNs look like (ids, digits, words): nothing to unquote. parse_qsl spent
            # a twentieth of the hook's CPU unquoting every name and value.
            fields: dict[str, Any] = {}
            for pair in text.split("&"):
                if pair:
                    name, _, value = pair.partition("=")
                    fields[name] = value
            return fields
        return dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise _BadDN(400, "invalid_encoding", f"the {where} is not valid UTF-8") from None


def _text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _BadDN(400, "invalid_field", f"{name} must be a string")
    text = str(value).strip()
    if "\x00" in text:
        raise _BadDN(400, "invalid_field", f"{name} contains a NUL character")
    limit = FIELD_LIMITS[name]
    if len(text) > limit:
        raise _BadDN(400, "invalid_field", f"{name} is longer than {limit} characters")
    return text or None


def _parse_dn(fields: dict[str, Any], received_ts: float) -> InboundDN:
    msgid = _text(fields, "msgid")
    status = _text(fields, "status")
    if msgid is None or status is None:
        missing = [name for name, v in (("msgid", msgid), ("status", status)) if v is None]
        raise _BadDN(400, "missing_field", "missing required field: " + ", ".join(missing))
    if "error-code" in fields:
        raw_code = _text(fields, "error-code")
    else:
        raw_code = _text({"error-code": fields.get("error_code")}, "error-code")
    try:
        raw = orjson.dumps(fields).decode()
    except TypeError:  # e.g. a JSON body nesting objects in extra fields: still a DN
        raw = orjson.dumps({k: str(v) for k, v in fields.items()}).decode()
    return InboundDN(
        msgid=msgid,
        status=status,
        error_code=normalise_error_code(raw_code),
        error_description=describe_error_code(raw_code),
        msisdn=_text(fields, "msisdn"),
        raw=raw,
        received_ts=received_ts,
    )


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
                        "error-code": {"type": ["string", "number"], "example": "000"},
                        "msisdn": {"type": ["string", "number"], "example": "60123240066"},
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
            raise _BadDN(413, "payload_too_large", f"a DN query is at most {MAX_QUERY_BYTES} bytes")
        fields: dict[str, Any] = _urlencoded_fields(query, "query string") if query else {}
        if scope["method"] == "POST":
            fields.update(await _body_fields(scope, receive))
        dn = _parse_dn(fields, received_ts)
    except _BadDN as exc:
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


async def dn_hook(request: Request) -> Response:
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


# ---- the listing --------------------------------------------------------------------------

_CURSOR_RE = re.compile(r"^dn1:([0-9]{1,19})$")


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"dn1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    match = _CURSOR_RE.match(text)
    # 19 digits can still exceed a BIGINT: the database would fail on it (a 500).
    if match is None or int(match.group(1)) > 2**63 - 1:
        raise AppError(400, "invalid_cursor", "cursor: not a cursor this service issued")
    return int(match.group(1))


@router.get(
    "/v1/delivery-notifications",
    response_model=DeliveryNotificationPage,
    summary="List stored DNs, newest first",
    responses=error_responses(400, 401, 422, 503),
)
async def list_delivery_notifications(
    session: SessionDep,
    _key: ApiKeyDep,
    unmatched: Annotated[
        bool, Query(description="Only DNs whose msgid matches no message (yet).")
    ] = False,
    msgid: Annotated[str | None, Query(max_length=128, description="Only this msgid.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> DeliveryNotificationPage:
    """Every DN received (duplicates included), newest first, keyset-paginated."""
    dn = DeliveryNotification
    query = select(dn).order_by(dn.id.desc()).limit(limit + 1)
    if unmatched:
        query = query.where(dn.message_id.is_(None))
    if msgid is not None and "\x00" in msgid:  # Postgres cannot compare it: a 500
        raise AppError(422, "validation_error", "msgid: must not contain NUL characters")
    if msgid is not None:
        query = query.where(dn.msgid == msgid)
    if cursor is not None:
        query = query.where(dn.id < decode_cursor(cursor))
    rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        DeliveryNotificationOut(
            id=row.id,
            seq=row.id,
            msgid=row.msgid,
            status=row.status,
            error_code=row.error_code,
            error_description=row.error_description,
            msisdn=row.msisdn,
            received_at=row.received_at,
            message_id=row.message_id,
        )
        for row in rows
    ]
    return DeliveryNotificationPage(
        items=items, next_cursor=encode_cursor(rows[-1].id) if more and rows else None
    )


@router.get(
    "/v1/error-codes",
    response_model=ErrorCodeTables,
    summary="The provider's code tables",
    tags=["operations"],
)
async def error_codes() -> dict[str, list[dict[str, str]]]:
    """Both Bulk360 tables (send-answer and DN error codes), with categories; no API key."""
    return error_code_tables()
