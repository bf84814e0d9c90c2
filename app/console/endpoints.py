"""`/console`: the operator's pages (CONTRACT §4.8). Server-rendered, no JavaScript.

Sign-in and sign-out are here with the pages; what a session is lives in `session.py`, the
route class and the templates in `web.py`, the SQL in `repository.py`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import FastAPI, Form, Path, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from app.console import repository, throttle

# Also registers the callback pages on the router.
from app.console.callback_pages import destination, events_of
from app.console.overview import WINDOWS, build_overview
from app.console.views import (
    CHANNELS,
    CSV_COLUMNS,
    STATUSES,
    csv_row,
    dn_category,
    message_category,
    read_filters,
)
from app.console.web import (
    PAGE_SIZE,
    STATIC_DIR,
    STATIC_URL,
    ConsoleDep,
    OperatorDep,
    PageError,
    decode_page_cursor,
    render,
    router,
    safe_next,
)
from app.deps import SessionDep, StateDep
from app.models import Message
from app.ops.static import CachedStaticFiles
from app.pagination import Cursor, encode_cursor

log = structlog.get_logger("app.console")

CSV_BATCH = 2_000
Text = Annotated[str, Form(max_length=512)]


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, CachedStaticFiles(directory=STATIC_DIR), name="console-static")


# ---- signing in and out ------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_page(request: Request, console: ConsoleDep, next: str = "") -> Response:
    session = console.sessions.read(request)
    if session is not None and session.key_name is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    session = session or console.sessions.anonymous()
    response = render(
        request,
        console,
        None,
        "sign_in.html",
        next=safe_next(next),
        form_token=console.sessions.csrf_token(session),
    )
    console.sessions.store(response, request, session)
    return response


@router.post("/sign-in")
async def sign_in(
    request: Request,
    console: ConsoleDep,
    state: StateDep,
    api_key: Text = "",
    csrf_token: Text = "",
    next: Text = "",
) -> Response:
    sessions = console.sessions
    visitor = sessions.read(request)
    address = request.client.host if request.client else "unknown"

    def form_again(status: int, problem: str, headers: dict[str, str] | None = None) -> Response:
        fresh = visitor or sessions.anonymous()
        response = render(
            request,
            console,
            None,
            "sign_in.html",
            status,
            problem=problem,
            next=safe_next(next),
            form_token=sessions.csrf_token(fresh),
        )
        response.headers.update(headers or {})
        sessions.store(response, request, fresh)
        return response

    if not sessions.csrf_ok(visitor, csrf_token):
        return form_again(403, "The form had expired. Please sign in again.")
    engine = state.engine
    wait = await throttle.try_now(engine, address)
    if wait is not None:  # refused without looking at the key
        retry = max(1, math.ceil(wait))
        return form_again(
            429,
            f"Too many failed sign-ins from your address: try again in {retry} s.",
            {"Retry-After": str(retry)},
        )
    session = sessions.sign_in(api_key.strip())
    if session is None:
        delay = await throttle.failed(engine, address)
        log.warning("console sign-in refused", client=address, wait_s=delay)
        return form_again(401, "That API key is not valid.")
    await throttle.succeeded(engine, address)
    log.info("console sign-in", api_key_name=session.key_name)
    response = RedirectResponse(safe_next(next), status_code=303)
    sessions.store(response, request, session)  # a new nonce: no session fixation
    return response


@router.post("/sign-out")
async def sign_out(request: Request, console: ConsoleDep, csrf_token: Text = "") -> Response:
    session = console.sessions.read(request)
    if not console.sessions.csrf_ok(session, csrf_token):
        raise PageError(403, "Not signed out", "The form had expired: sign out again.")
    response = RedirectResponse("/console/sign-in", status_code=303)
    console.sessions.clear(response)
    return response


# ---- pages -------------------------------------------------------------------------------


@router.get("")
async def overview_page(
    request: Request,
    console: ConsoleDep,
    operator: OperatorDep,
    session: SessionDep,
    window: str = "24h",
) -> Response:
    if window not in WINDOWS:
        window = "24h"
    overview = await build_overview(session, window=window, zone=console.zone)
    return render(
        request,
        console,
        operator,
        "overview.html",
        o=overview,
        statuses=STATUSES,
        windows=list(WINDOWS),
    )


@router.get("/messages")
async def messages_page(
    request: Request, console: ConsoleDep, operator: OperatorDep, session: SessionDep
) -> Response:
    form, filters = read_filters(dict(request.query_params), console.region, console.zone)
    rows: list[Message] = []
    next_link = None
    status = 200
    if filters is not None:
        after = decode_page_cursor(request.query_params.get("cursor"))
        rows = await repository.search(session, filters, after=after, limit=PAGE_SIZE)
        if len(rows) > PAGE_SIZE:
            rows = rows[:PAGE_SIZE]
            next_link = "?" + form.query_string(
                cursor=encode_cursor(rows[-1].created_at, rows[-1].id)
            )
    else:
        status = 422
    return render(
        request,
        console,
        operator,
        "messages.html",
        status,
        form=form,
        messages=rows,
        next_link=next_link,
        statuses=STATUSES,
        channels=CHANNELS,
        csv_link="/console/messages.csv?" + form.query_string(),
        paged="cursor" in request.query_params,
    )


@router.get("/messages.csv")
async def messages_csv(
    request: Request, console: ConsoleDep, _operator: OperatorDep, state: StateDep
) -> Response:
    """The current filter's messages as CSV, newest first, streamed page by page (each page
    its own short transaction: an export of a million rows holds no snapshot open)."""
    form, filters = read_filters(dict(request.query_params), console.region, console.zone)
    if filters is None:
        raise PageError(422, "Cannot export", "; ".join(form.problems))

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        after = None
        while True:
            async with state.sessionmaker() as session:
                batch = await repository.search(session, filters, after=after, limit=CSV_BATCH)
            for message in batch[:CSV_BATCH]:
                writer.writerow(csv_row(message))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(batch) <= CSV_BATCH:
                return
            last = batch[CSV_BATCH - 1]
            after = Cursor(last.created_at, last.id)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="messages-{stamp}.csv"'},
    )


@router.get("/messages/{ref}")
async def message_page(
    request: Request,
    console: ConsoleDep,
    operator: OperatorDep,
    session: SessionDep,
    ref: Annotated[str, Path(max_length=128)],
) -> Response:
    message = await repository.find_message(session, ref) if "\x00" not in ref else None
    if message is None:
        raise PageError(404, "No such message", f"No message has the ref or id {ref!r}.")
    notifications = await repository.notifications_of(session, message.id)
    others, others_total = await repository.same_send(session, message)
    events = await events_of(session, message.id)
    return render(
        request,
        console,
        operator,
        "message.html",
        m=message,
        notifications=notifications,
        others=others,
        others_total=others_total,
        category=message_category(message),
        events=events,
        callback_url=destination(message.callback_url) if message.callback_url else None,
        here=request.url.path,
        dn_category=dn_category,
    )


@router.get("/unmatched-dns")
async def unmatched_page(
    request: Request,
    console: ConsoleDep,
    operator: OperatorDep,
    session: SessionDep,
    before: int | None = None,
) -> Response:
    rows = await repository.unmatched_notifications(session, before_id=before, limit=PAGE_SIZE)
    next_link = f"?before={rows[PAGE_SIZE - 1].id}" if len(rows) > PAGE_SIZE else None
    return render(
        request,
        console,
        operator,
        "unmatched.html",
        notifications=rows[:PAGE_SIZE],
        next_link=next_link,
    )
