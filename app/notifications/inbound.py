"""A DN request read into an `InboundDN`: the query string, an urlencoded or multipart form, or
a JSON object, validated by hand (the hook is the hot path: no pydantic per DN).

Anything a sender got wrong is a `BadDN` with the status to answer (400 naming the field,
413, 415), never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import Message as ASGIMessage
from starlette.types import Scope

from app.bulk360.codes import describe_error_code, normalise_error_code
from app.notifications.writer import InboundDN

MAX_DN_BODY_BYTES = 16 * 1024  # a DN is four short fields; anything bigger is not a DN
MAX_QUERY_BYTES = 4 * 1024
# Column sizes (models.DeliveryNotification): checked here so no DN can fail its batch.
FIELD_LIMITS = {"msgid": 128, "status": 64, "error-code": 32, "msisdn": 64}


class BadDN(Exception):  # noqa: N818 - control flow inside the hook
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


async def _read_body(receive: Callable[[], Any]) -> bytes:
    body = b""
    while True:
        message: ASGIMessage = await receive()
        if message["type"] != "http.request":  # the client went away
            raise BadDN(400, "client_disconnected", "the client disconnected")
        body += message.get("body", b"")
        if len(body) > MAX_DN_BODY_BYTES:
            raise BadDN(413, "payload_too_large", f"a DN body is at most {MAX_DN_BODY_BYTES} bytes")
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
        raise BadDN(400, "malformed_body", f"multipart form: {exc.detail}") from None
    except Exception:  # python-multipart raises several types for broken input
        raise BadDN(400, "malformed_body", "the multipart form could not be parsed") from None


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The body's Content-Type (lower case); a declared length over the limit refused first."""
    content_type = b""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise BadDN(400, "malformed_body", "Content-Length is not a number")
            if int(value) > MAX_DN_BODY_BYTES:
                raise BadDN(
                    413, "payload_too_large", f"a DN body is at most {MAX_DN_BODY_BYTES} bytes"
                )
        elif name == b"content-type":
            content_type = value.lower()
    return content_type


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadDN(400, "malformed_body", "the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise BadDN(400, "malformed_body", "the JSON body must be an object")
    return parsed


async def body_fields(scope: Scope, receive: Callable[[], Any]) -> dict[str, Any]:
    content_type = _content_type(scope["headers"])
    body = await _read_body(receive)
    if not body.strip():
        return {}
    if content_type.startswith(b"application/x-www-form-urlencoded"):
        return urlencoded_fields(body, "form body")
    if content_type.startswith(b"application/json") or b"+json" in content_type:
        return _json_fields(body)
    if content_type.startswith(b"multipart/form-data"):
        return await _multipart_fields(scope, body)
    shown = content_type.decode("latin-1")[:60] or "none"
    raise BadDN(
        415,
        "unsupported_media_type",
        f"Content-Type {shown!r}: send a query string, a form or a JSON object",
    )


def urlencoded_fields(raw: bytes, where: str) -> dict[str, Any]:
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
        raise BadDN(400, "invalid_encoding", f"the {where} is not valid UTF-8") from None


def _text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadDN(400, "invalid_field", f"{name} must be a string")
    text = str(value).strip()
    if "\x00" in text:
        raise BadDN(400, "invalid_field", f"{name} contains a NUL character")
    limit = FIELD_LIMITS[name]
    if len(text) > limit:
        raise BadDN(400, "invalid_field", f"{name} is longer than {limit} characters")
    return text or None


def parse_dn(fields: dict[str, Any], received_ts: float) -> InboundDN:
    msgid = _text(fields, "msgid")
    status = _text(fields, "status")
    if msgid is None or status is None:
        missing = [name for name, v in (("msgid", msgid), ("status", status)) if v is None]
        raise BadDN(400, "missing_field", "missing required field: " + ", ".join(missing))
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
