"""Lookup: what became of a message, by ref or id, or a filtered list (CONTRACT §4.2).

Lookups are global, not scoped to the caller's API key: operators answer "did customer X get
the OTP?" whichever service sent it; `api_key_name` on each message says which one did.

`router` is included in the messages router (endpoints.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.bulk360.client import WHATSAPP_PREFIX
from app.bulk360.codes import message_error_category
from app.callbacks.service import callback_summaries
from app.deps import ApiKeyDep, SessionDep, StateDep
from app.errors import AppError, error_responses
from app.messages.lookup_schemas import (
    MessageDetail,
    MessagePage,
)
from app.messages.recipients import RecipientError, parse_recipient
from app.models import DeliveryNotification, Message
from app.notifications.schemas import DeliveryNotificationOut
from app.pagination import DEFAULT_LIMIT, Cursor, PageLimit, before, decode_cursor, encode_cursor
from app.vocabulary import Channel, MessageStatus, StorableStr, Timestamp

router = APIRouter()  # included in the messages router, which tags its routes


def _message_out(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "to": m.msisdn,
        "channel": m.channel,
        "from": m.sender,
        "client_ref": m.client_ref,
        "api_key_name": m.api_key_name,
        "status": m.status,
        "code": m.submit_code,
        "desc": m.submit_desc,
        "delivery_status": m.delivery_status,
        "error_code": m.error_code,
        "error_description": m.error_description,
        "error_category": message_error_category(m.status, m.error_code, m.submit_code),
        "rate": m.rate,
        "currency": m.currency,
        "encoding": m.encoding,
        "segments": m.segments,
        "ref": m.ref,
        "submitted_at": m.submitted_at,
        "final_at": m.final_at,
        "dn_count": m.dn_count,
        "created_at": m.created_at,
    }


async def _find(session: AsyncSession, ref: str) -> Message | None:
    if "\x00" in ref:  # no ref holds one, and Postgres cannot even compare it (a 500)
        return None
    found = await session.scalar(select(Message).where(Message.ref == ref))
    # A provider ref wins over an id: refs are what callers hold; ids are a fallback.
    if found is None and ref.isascii() and ref.isdigit() and len(ref) <= 18:
        found = await session.get(Message, int(ref))
    return found


@router.get(
    "/v1/messages/{ref}",
    summary="Look up one message by ref or id",
    response_model=MessageDetail,
    responses=error_responses(401, 404, 422, 503),
)
async def get_message(
    *,
    ref: Annotated[
        str,
        Path(
            description="The provider's ref; if no message has it and it is all digits, the "
            "message id",
            examples=["BULK360-8f2c1e"],
            max_length=128,
        ),
    ],
    session: SessionDep,
    _caller: ApiKeyDep,
) -> dict[str, Any]:
    """One message by ref (or id), with every DN received for it in order of receipt and its
    status-callback events."""
    message = await _find(session, ref)
    if message is None:
        raise AppError(404, "not_found", f"no message with ref or id {ref!r}")
    dns = await session.scalars(
        select(DeliveryNotification)
        .where(DeliveryNotification.message_id == message.id)
        .order_by(DeliveryNotification.id)
    )
    return {
        **_message_out(message),
        "notifications": [DeliveryNotificationOut.from_row(dn) for dn in dns],
        "callbacks": await callback_summaries(session, message.id),
    }


def normalise_to(value: str, region: str) -> tuple[str, Channel | None]:
    """A `to` filter read like a send's recipient: (E.164 digits, channel if prefixed)."""
    prefixed = value.strip()[: len(WHATSAPP_PREFIX)].lower() == WHATSAPP_PREFIX
    try:
        # Parsed as WhatsApp unless prefixed: the SMS rules refuse fixed lines, but a lookup
        # without a prefix must still find a WhatsApp message sent to one.
        dest = parse_recipient(value.strip() if prefixed else WHATSAPP_PREFIX + value, region)
    except RecipientError:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise AppError(
            422, "validation_error", f"to: not a valid phone number (got {shown!r})"
        ) from None
    return dest.msisdn, (Channel.WHATSAPP if prefixed else None)


@router.get(
    "/v1/messages",
    summary="List messages (by phone, status, client_ref, time)",
    response_model=MessagePage,
    responses=error_responses(400, 401, 422, 503),
)
async def list_messages(
    *,
    state: StateDep,
    session: SessionDep,
    _caller: ApiKeyDep,
    to: Annotated[
        str | None,
        Query(
            description="Recipient, read like a send's `to` (`+60 12-324 0066`, `0123240066`, "
            "`whatsapp:60123240066` also restricts to WhatsApp)",
            max_length=64,
            examples=["60123240066"],
        ),
    ] = None,
    status: Annotated[MessageStatus | None, Query(description="Message status")] = None,
    client_ref: Annotated[StorableStr | None, Query(max_length=64, examples=["otp-7781"])] = None,
    channel: Annotated[Channel | None, Query()] = None,
    since: Annotated[
        Timestamp | None,
        Query(
            description="Created at or after (ISO 8601 with offset)",
            examples=["2026-11-24T00:00:00Z"],
        ),
    ] = None,
    until: Annotated[
        Timestamp | None,
        Query(
            description="Created before (ISO 8601 with offset)", examples=["2026-11-25T00:00:00Z"]
        ),
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page", max_length=128)
    ] = None,
) -> dict[str, Any]:
    """Messages matching every filter given, newest first, a page at a time."""
    msisdn, channel = _recipient_filter(to, channel, state.settings.default_region)
    query = message_query(
        msisdn=msisdn,
        status=status,
        client_ref=client_ref,
        channel=channel,
        since=since,
        until=until,
        after=decode_cursor(cursor) if cursor is not None else None,
        limit=limit,
    )
    rows = list(await session.scalars(query))
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return {"items": [_message_out(m) for m in page], "next_cursor": next_cursor}


def _recipient_filter(
    to: str | None, channel: Channel | None, region: str
) -> tuple[str | None, Channel | None]:
    """The `to` filter as digits, and the channel its `whatsapp:` prefix implies (422 when it
    contradicts `channel`)."""
    if to is None:
        return None, channel
    msisdn, prefixed = normalise_to(to, region)
    if prefixed is None:
        return msisdn, channel
    if channel is not None and channel != prefixed:
        raise AppError(422, "validation_error", f"channel: {channel!r} contradicts to={to!r}")
    return msisdn, prefixed


def message_query(
    *,
    msisdn: str | None = None,
    status: str | None = None,
    client_ref: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: Cursor | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Select[Message]:
    """The list query (also run by `bench/seed_messages.py` to show its plan).

    Each filter is an equality on the leading column of a `(…, created_at, id)` index, so
    Postgres reads one index range in order and stops after `limit + 1` rows.
    """
    query = select(Message)
    if msisdn is not None:
        query = query.where(Message.msisdn == msisdn)
    if status is not None:
        query = query.where(Message.status == status)
    if client_ref is not None:
        query = query.where(Message.client_ref == client_ref)
    if channel is not None:
        query = query.where(Message.channel == channel)
    if since is not None:
        query = query.where(Message.created_at >= since)
    if until is not None:
        query = query.where(Message.created_at < until)
    if after is not None:
        query = query.where(before(Message.created_at, Message.id, after))
    # One row more than asked tells whether there is a next page without a COUNT.
    return query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)
