"""The console's status-callback pages: a message's events and attempts (shown on its page),
the failed (or gone) events, and the redeliver button, which queues an event again through
the callbacks domain (`app.callbacks.repository.requeue`, as `POST /v1/callbacks/{id}/
redeliver` does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import structlog
from fastapi import Form, Path, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import RedirectResponse, Response

from app.callbacks import repository as callbacks
from app.console.web import (
    PAGE_SIZE,
    ConsoleDep,
    OperatorDep,
    PageError,
    decode_page_cursor,
    render,
    router,
    safe_next,
)
from app.deps import SessionDep
from app.models import CallbackAttempt, CallbackEvent
from app.pagination import encode_cursor

log = structlog.get_logger("app.console")

REDELIVERABLE = ("failed", "gone")


@dataclass
class EventView:
    event: CallbackEvent
    attempts: list[CallbackAttempt]
    destination: str  # the URL without its query string (it may carry a token)


def destination(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


async def events_of(session: AsyncSession, message_id: int) -> list[EventView]:
    """A message's callback events, oldest first, each with its attempts."""
    events = await callbacks.events_of_message(session, message_id)
    attempts = await callbacks.attempts_of_events(session, [e.id for e in events])
    return [EventView(e, attempts[e.id], destination(e.url)) for e in events]


async def count_failed(session: AsyncSession) -> int:
    """Events that gave up (an index-only count on `(state, recorded_at, id)`)."""
    query = select(func.count()).where(CallbackEvent.state == "failed")
    return int(await session.scalar(query) or 0)


@router.get("/callbacks")
async def failed_callbacks_page(
    *,
    request: Request,
    console: ConsoleDep,
    operator: OperatorDep,
    session: SessionDep,
    state: str = "failed",
    cursor: str | None = None,
) -> Response:
    if state not in REDELIVERABLE:
        raise PageError(422, "Not understood", f"state: one of {', '.join(REDELIVERABLE)}")
    filters = callbacks.EventFilters(state=state)
    rows = await callbacks.list_events(session, filters, decode_page_cursor(cursor), PAGE_SIZE)
    next_link = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        last = rows[-1]
        next_link = f"?state={state}&cursor={encode_cursor(last.recorded_at, last.id)}"
    return render(
        request,
        console,
        operator,
        "callbacks.html",
        state=state,
        events=[EventView(e, [], destination(e.url)) for e in rows],
        next_link=next_link,
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    )


@router.post("/callbacks/{event_id}/redeliver")
async def redeliver(
    *,
    request: Request,
    console: ConsoleDep,
    operator: OperatorDep,
    session: SessionDep,
    event_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    csrf_token: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=512)] = "",
) -> Response:
    if not console.sessions.csrf_ok(operator, csrf_token):
        raise PageError(403, "Not queued", "The form had expired: go back and try again.")
    if not await callbacks.requeue(session, event_id):
        event = await callbacks.get_event(session, event_id)
        if event is None:
            raise PageError(404, "No such callback", f"There is no callback event {event_id}.")
        raise PageError(
            409,
            "Not queued",
            f"Callback event {event_id} is {event.state}: only failed or gone events are "
            "queued again.",
        )
    await session.commit()
    log.info("console callback redelivered", event_id=event_id, api_key_name=operator.key_name)
    return RedirectResponse(safe_next(next), status_code=303)
