"""`GET /v1/callbacks` and `POST /v1/callbacks/{id}/redeliver` (CONTRACT §4.5)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from app.callbacks import repository
from app.callbacks.repository import EventFilters
from app.callbacks.schemas import (
    CallbackEventOut,
    CallbackPage,
    CallbackState,
    RedeliverOut,
    summary,
)
from app.callbacks.service import url_host
from app.deps import ApiKeyDep, SessionDep
from app.errors import AppError, error_responses
from app.models import CallbackEvent
from app.pagination import DEFAULT_LIMIT, PageLimit, decode_cursor, encode_cursor
from app.vocabulary import Timestamp

router = APIRouter(tags=["callbacks"])


def _event_out(event: CallbackEvent) -> CallbackEventOut:
    return CallbackEventOut(
        **summary(event).model_dump(),
        message_id=event.message_id,
        version=event.version,
        status=event.status,
        delivery_status=event.delivery_status,
        error_code=event.error_code,
        recorded_at=event.recorded_at,
        delivered_at=event.delivered_at,
        host=url_host(event.url),
    )


@router.get(
    "/v1/callbacks",
    summary="List status-callback events",
    response_model=CallbackPage,
    responses=error_responses(400, 401, 422, 503),
)
async def list_callbacks(
    *,
    session: SessionDep,
    _caller: ApiKeyDep,
    state: Annotated[CallbackState | None, Query(description="Event state")] = None,
    message_id: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Events of one message (its id)")
    ] = None,
    since: Annotated[
        Timestamp | None,
        Query(description="Recorded at or after (ISO 8601 with offset)"),
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="Recorded before (ISO 8601 with offset)")
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page", max_length=128)
    ] = None,
) -> dict[str, Any]:
    """Status-callback events matching every filter given, newest first, a page at a time."""
    filters = EventFilters(state, message_id, since, until)
    after = decode_cursor(cursor) if cursor is not None else None
    rows = await repository.list_events(session, filters, after, limit)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(page[-1].recorded_at, page[-1].id)
    return {"items": [_event_out(e) for e in page], "next_cursor": next_cursor}


@router.post(
    "/v1/callbacks/{event_id}/redeliver",
    status_code=202,
    summary="Queue a failed or gone callback event again",
    response_model=RedeliverOut,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def redeliver_callback(
    *,
    event_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="The event's id")],
    session: SessionDep,
    _caller: ApiKeyDep,
) -> JSONResponse:
    """A `failed` or `gone` event becomes `pending`, due now, with a fresh retry schedule
    (202). A `delivered` or `superseded` one: 409; a `pending` one is already queued: 409."""
    if await repository.requeue(session, event_id):
        await session.commit()
        return JSONResponse({"id": event_id, "state": "pending"}, status_code=202)
    event = await repository.get_event(session, event_id)
    if event is None:
        raise AppError(404, "not_found", f"no callback event {event_id}")
    raise AppError(
        409,
        "callback_not_redeliverable",
        f"callback event {event_id} is {event.state}: only failed or gone events are queued again",
    )
