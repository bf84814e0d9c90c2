"""Status callbacks: where a send's callbacks go, and what each one says.

- `callback_url_for` decides a send's callback URL (its `callback_url`, else the API key's
  entry in CALLBACK_URLS, else none) and refuses, with a 422 naming the field, a host outside
  CALLBACK_ALLOWED_HOSTS, a link-local address (cloud metadata), or any callback URL while no
  signing secret is configured (`callbacks_not_configured`).
- `event_body` builds the JSON body from the event's stored snapshot only, so every retry of
  an event sends the same bytes (and the same signature for the same timestamp).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.bulk360.codes import message_error_category
from app.callbacks import repository
from app.callbacks.schemas import CallbackSummary, summary
from app.config import IPNetwork, Settings
from app.errors import AppError

MAX_URL_LENGTH = 2048
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def callback_url_for(settings: Settings, api_key_name: str, requested: str | None) -> str | None:
    """The callback URL of a send, checked; AppError 422 when it may not be used."""
    url = requested if requested is not None else settings.callback_url_defaults.get(api_key_name)
    if url is None:
        return None
    field = "callback_url" if requested is not None else f"CALLBACK_URLS[{api_key_name!r}]"
    check_callback_url(settings, url, field)
    if not settings.callback_secrets:
        raise AppError(
            422,
            "callbacks_not_configured",
            f"{field}: status callbacks need CALLBACK_SIGNING_SECRETS on the relay; nothing "
            "was sent",
        )
    return url


def check_callback_url(settings: Settings, url: str, field: str = "callback_url") -> str:
    """The URL's host if it may receive callbacks; AppError 422 naming `field` otherwise.
    Error texts name the host only: a URL's query string may carry the receiver's token."""
    if len(url) > MAX_URL_LENGTH:
        raise AppError(422, "validation_error", f"{field}: longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise AppError(422, "validation_error", f"{field}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise AppError(
            422, "validation_error", f"{field}: must be an absolute http(s) URL with a host"
        )
    address = _address(host)
    if address is not None and any(address in net for net in _LINK_LOCAL):
        raise AppError(
            422, "validation_error", f"{field}: {host} is a link-local address, never a receiver"
        )
    allowed = settings.callback_allowed
    if allowed is not None and not _host_allowed(host, address, *allowed):
        raise AppError(
            422, "validation_error", f"{field}: host {host} is not in CALLBACK_ALLOWED_HOSTS"
        )
    return host


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    # ::ffff:169.254.169.254 is the metadata address too.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_allowed(
    host: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    names: tuple[str, ...],
    nets: tuple[IPNetwork, ...],
) -> bool:
    if address is not None:
        return any(address in net for net in nets)
    for name in names:
        if name.startswith("*."):
            if host.endswith(name[1:]):  # "*.svc.local" matches "a.svc.local", not "svc.local"
                return True
        elif host == name:
            return True
    return False


def url_host(url: str) -> str:
    """What logs may say about a callback URL: its host, never its path or query."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


# ---- the body --------------------------------------------------------------------------------


def event_body(event: Mapping[str, Any]) -> bytes:
    """The JSON body of one event, from its snapshot and the message's fixed fields."""
    recorded_at: datetime = event["recorded_at"]
    data = {
        "id": event["message_id"],
        "ref": event["ref"],
        "send_id": event["send_id"],
        "to": event["msisdn"],
        "channel": event["channel"],
        "client_ref": event["client_ref"],
        "api_key_name": event["api_key_name"],
        "status": event["status"],
        "delivery_status": event["delivery_status"],
        "error_code": event["error_code"],
        "error_description": event["error_description"],
        "error_category": str(
            message_error_category(event["status"], event["error_code"], event["submit_code"])
        ),
        "dn_count": event["dn_count"],
        "submitted_at": event["submitted_at"],
        "final_at": event["final_at"],
        "version": event["version"],
    }
    return orjson.dumps(
        {"type": "message.status", "timestamp": recorded_at, "data": data},
        option=orjson.OPT_UTC_Z,
    )


async def callback_summaries(session: AsyncSession, message_id: int) -> list[CallbackSummary]:
    """A message's status-callback events, oldest first (`GET /v1/messages/{ref}`)."""
    return [summary(e) for e in await repository.events_of_message(session, message_id)]
