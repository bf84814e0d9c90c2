"""The DN listing (`GET /v1/delivery-notifications`) and the provider's code tables
(`GET /v1/error-codes`). The hook Bulk360 calls is in hook.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.bulk360.codes import error_code_tables
from app.deps import ApiKeyDep, SessionDep
from app.errors import error_responses
from app.notifications.repository import list_dns
from app.notifications.schemas import (
    DeliveryNotificationOut,
    DeliveryNotificationPage,
    ErrorCodeTables,
)
from app.pagination import DELIVERY_NOTIFICATIONS, PageLimit, decode_cursor, encode_cursor
from app.vocabulary import StorableStr

router = APIRouter(tags=["delivery notifications"])


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
    msgid: Annotated[
        StorableStr | None, Query(max_length=128, description="Only this msgid (as received).")
    ] = None,
    limit: PageLimit = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> DeliveryNotificationPage:
    """Every DN received (duplicates included), newest first, keyset-paginated."""
    # Newest first is by receipt sequence alone (stricter than a clock): the cursor's id is
    # the position, its timestamp only rides along.
    after = decode_cursor(cursor, DELIVERY_NOTIFICATIONS) if cursor is not None else None
    rows = await list_dns(
        session,
        unmatched=unmatched,
        msgid=msgid,
        before_seq=after.id if after else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    last = page[-1] if len(rows) > limit else None
    return DeliveryNotificationPage(
        items=[DeliveryNotificationOut.from_row(row) for row in page],
        next_cursor=(
            encode_cursor(last.received_at, last.id, DELIVERY_NOTIFICATIONS)
            if last is not None
            else None
        ),
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
