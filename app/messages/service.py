"""Sending: record first, then ask the provider, then record its answer.

The order is the money-safety guarantee (CONTRACT §4.1):

1. One transaction inserts a row per recipient (status `unknown`, no ref), together with the
   Idempotency-Key claim, and COMMITS before any byte goes upstream. A crash after the
   provider accepted leaves visible `unknown` rows, never a silent gap. If the database is
   unreachable here the answer is 503 and nothing is sent.
2. The upstream requests (as few as the 150-character `to` allows, concurrently, bounded).
3. One transaction fills in refs and statuses: `lock_refs` first (a DN writer may be recording
   a DN for one of these refs), the updates, `attach_dns` (a DN may have beaten the answer),
   the stored Idempotency-Key response, then COMMIT, then the answer. While the database is
   unreachable it is retried for ~5 s (it only updates rows still `unknown` without a ref,
   so repeating a COMMIT that did land changes nothing); if it is still away, the caller gets
   the provider's answer now, the refs are logged at WARNING, and `LateAnswers` records it in
   the background once the database is back (late_answers.py).

The relay never resends on its own: when the provider may have acted (timeout, dropped
connection, 5xx, unreadable answer) the rows stay `unknown` and the caller gets 502/504.

With several upstream requests the answer is 201 only when every recipient got a definite
answer (accepted or rejected). Otherwise the HTTP status is that of the worst failure
(ambiguous 504/502 first, then 402, then the account/credential 502s) and the error body still
lists every entry with its own status, so any accepted parts and their refs are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import orjson
import structlog
from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from app.bulk360.client import (
    AccountProblemError,
    AmbiguousError,
    BatchResult,
    Bulk360Client,
    Bulk360Error,
    CredentialsRejectedError,
    Destination,
    InsufficientCreditError,
    RequestRefusedError,
    UnauthorizedError,
    UpstreamTimeoutError,
)
from app.bulk360.segments import count_segments, provider_prefix
from app.db import utcnow
from app.errors import AppError, is_database_unavailable
from app.messages.idempotency import (
    CLAIM_CTE_PG,
    REPLAY_HEADER,
    Claimed,
    ClaimResult,
    IdempotencyStore,
    InFlight,
    Mismatch,
    Replay,
    request_hash,
)
from app.messages.late_answers import LateAnswers
from app.messages.schemas import SendRequest
from app.models import Message
from app.notifications.service import attach_dns as attach_dns_session
from app.notifications.service import begin_and_lock_sql, lock_refs, refresh_messages_pg
from app.ops.metrics import SENDS

log = structlog.get_logger("app.messages")

_messages = cast(Table, Message.__table__)
_DESC_MAX = 255
# Backoff between attempts to record the provider's answer while the database is away.
_RECORD_RETRY_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)  # ~5 s: a database restart


@dataclass(slots=True)
class SendAnswer:
    """What the endpoint answers: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Entry:
    dest: Destination
    encoding: str | None
    segments: int | None
    id: int = 0
    status: str = "unknown"
    ref: str | None = None
    code: int | None = None
    desc: str | None = None
    rate: str | None = None
    currency: str | None = None
    answered: bool = False
    outcome: str = "unknown"


# Order decides which failure names the whole answer when upstream requests fail differently.
_FAILURES: tuple[tuple[type[Bulk360Error], int, str], ...] = (
    (UpstreamTimeoutError, 504, "upstream_timeout"),
    (AmbiguousError, 502, "upstream_error"),
    (InsufficientCreditError, 402, "insufficient_credit"),
    (AccountProblemError, 502, "upstream_account_problem"),
    (CredentialsRejectedError, 502, "upstream_credentials_rejected"),
    (UnauthorizedError, 502, "upstream_unauthorized"),
    (RequestRefusedError, 502, "upstream_refused"),
    (Bulk360Error, 502, "upstream_unavailable"),
)


class SendService:
    def __init__(self) -> None:
        self.idempotency = IdempotencyStore()

    async def send(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        client: Bulk360Client,
        request: SendRequest,
        destinations: list[Destination],
        api_key_name: str,
        idempotency_key: str | None,
        idempotency_ttl_h: float,
        sandbox: bool,
        late: LateAnswers,
    ) -> SendAnswer:
        entries = _prepare(request.text, destinations)
        send_id = str(uuid.uuid4())
        body_hash = None
        if idempotency_key is not None:
            body_hash = request_hash(_canonical(request, destinations))
        # Postgres: asyncpg on pooled connections, few round trips. Others: ORM sessions.
        postgres = engine.dialect.name == "postgresql"

        # 1. Claim the key and record the rows, committed before anything goes upstream.
        try:
            if postgres:
                claim = await self._record_rows_pg(
                    engine,
                    entries,
                    request,
                    api_key_name=api_key_name,
                    send_id=send_id,
                    key=idempotency_key,
                    body_hash=body_hash,
                    ttl_h=idempotency_ttl_h,
                )
            else:
                claim = await self._record_rows(
                    sessions,
                    entries,
                    request,
                    api_key_name=api_key_name,
                    send_id=send_id,
                    key=idempotency_key,
                    body_hash=body_hash,
                    ttl_h=idempotency_ttl_h,
                )
        except Exception as exc:
            if is_database_unavailable(exc):
                log.warning("send refused: database unavailable", error=type(exc).__name__)
                raise AppError(
                    503, "database_unavailable", "the database is unreachable; nothing was sent"
                ) from None
            raise
        if not isinstance(claim, Claimed):
            return _claim_answer(claim)

        # 2. The provider.
        batches = await client.send(destinations, text=request.text, sender=request.sender)
        failure = _apply(entries, batches)
        balance, currency = _balance(batches)
        status, body = _answer(
            entries,
            failure=failure,
            balance=balance,
            currency=currency,
            detail=request.detail,
            sandbox=sandbox,
        )

        # 3. Record the answer: one transaction, then respond.
        response = None
        if idempotency_key is not None:
            response = (api_key_name, idempotency_key, status, body)

        # The provider has acted and its answer is only in memory: if the database is away,
        # try again for a little while (safe: the row updates only touch rows still as step 1
        # left them, so a COMMIT that did land before the connection died is not undone).
        async def record() -> None:
            if postgres:
                await _record_answer_pg(engine, entries, response)
            else:
                await self._record_answer(sessions, entries, response)

        refs = {str(e.id): e.ref for e in entries if e.ref}  # message id -> ref
        for delay in (*_RECORD_RETRY_DELAYS_S, None):
            try:
                await record()
                break
            except Exception as exc:
                if not is_database_unavailable(exc):
                    # A bug, not an outage: answer what the provider said anyway.
                    log.warning(
                        "send answer not recorded: rows stay unknown; reconcile these refs",
                        send_id=send_id,
                        refs=refs,
                        error=type(exc).__name__,
                        exc_info=exc,
                    )
                    break
                if delay is not None:
                    log.warning("send answer: database unavailable, retrying", send_id=send_id)
                    await asyncio.sleep(delay)
                    continue
                # Still away: answer now, and record it in the background once it is back.
                log.warning(
                    "send answer not recorded yet: rows stay unknown until the database is "
                    "back; these are the refs",
                    send_id=send_id,
                    refs=refs,
                    error=type(exc).__name__,
                )
                late.keep(send_id, refs, record)
                break
        for e in entries:
            SENDS.labels(e.outcome).inc()
        log.info(
            "send",
            send_id=send_id,
            status=status,
            recipients=len(entries),
            upstream_requests=len(batches),
            pending=sum(e.status == "pending" for e in entries),
            rejected=sum(e.status == "rejected" for e in entries),
            unknown=sum(e.status == "unknown" for e in entries),
        )
        return SendAnswer(status, body)

    # -- SQLite (and any other database): the ORM session, one transaction per step -------------

    async def _record_rows(
        self,
        sessions: async_sessionmaker[AsyncSession],
        entries: list[_Entry],
        request: SendRequest,
        *,
        api_key_name: str,
        send_id: str,
        key: str | None,
        body_hash: str | None,
        ttl_h: float,
    ) -> ClaimResult:
        async with sessions() as session:
            try:
                if key is not None and body_hash is not None:
                    claim = await self.idempotency.claim(
                        session,
                        api_key_name=api_key_name,
                        key=key,
                        body_hash=body_hash,
                        ttl_h=ttl_h,
                    )
                    if not isinstance(claim, Claimed):
                        await session.commit()  # keeps any purge of expired keys
                        return claim
                await _insert_rows(session, entries, request, api_key_name, send_id)
                await session.commit()
            except Exception:
                await session.rollback()
                raise
        return Claimed()

    async def _record_answer(
        self,
        sessions: async_sessionmaker[AsyncSession],
        entries: list[_Entry],
        response: tuple[str, str, int, bytes] | None,
    ) -> None:
        async with sessions() as session:
            try:
                await _update_rows(session, entries)
                if response is not None:
                    name, key, status, body = response
                    await self.idempotency.store_response(
                        session, api_key_name=name, key=key, status=status, body=body
                    )
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    # -- Postgres: asyncpg on a pooled connection, as few round trips as the order allows -------

    async def _record_rows_pg(
        self,
        engine: AsyncEngine,
        entries: list[_Entry],
        request: SendRequest,
        *,
        api_key_name: str,
        send_id: str,
        key: str | None,
        body_hash: str | None,
        ttl_h: float,
    ) -> ClaimResult:
        """One statement, committed on its own (no BEGIN/COMMIT round trips): the claim and
        the rows together, or neither."""
        now = utcnow()
        args: list[Any] = [
            send_id,
            api_key_name,
            request.client_ref,
            request.sender,
            now,
            [e.dest.channel for e in entries],
            [e.dest.msisdn for e in entries],
            [e.encoding for e in entries],
            [e.segments for e in entries],
        ]
        sql = _INSERT_ROWS_PG
        if key is not None:
            sql = _CLAIM_AND_INSERT_ROWS_PG
            args += [key, body_hash, now + timedelta(hours=ttl_h)]
        async with _raw_pg(engine) as apg:
            if key is not None:
                await self.idempotency.purge_pg(apg, now)
            ids = sorted(row[0] for row in await apg.fetch(sql, *args))
            if not ids:
                if key is None or body_hash is None:
                    raise RuntimeError("the rows INSERT returned no ids")
                return await self.idempotency.existing_pg(
                    apg, api_key_name=api_key_name, key=key, body_hash=body_hash, now=now
                )
        # Identity values are drawn in the INSERT's ORDER BY order (SQLAlchemy's own
        # sort_by_parameter_order relies on the same): the sorted ids follow the entries.
        for e, message_id in zip(entries, ids, strict=True):
            e.id = message_id
        return Claimed()


send_service = SendService()


def _prepare(text: str, destinations: list[Destination]) -> list[_Entry]:
    # Segments depend only on the provider's prefix: count once per distinct prefix.
    by_prefix: dict[str, tuple[str, int]] = {}
    entries = []
    for dest in destinations:
        if dest.channel == "whatsapp":
            entries.append(_Entry(dest, None, None))
            continue
        prefix = provider_prefix(dest.msisdn, dest.channel)
        if prefix not in by_prefix:
            by_prefix[prefix] = count_segments(text, prefix=prefix)
        encoding, segments = by_prefix[prefix]
        entries.append(_Entry(dest, encoding, segments))
    return entries


def _canonical(request: SendRequest, destinations: list[Destination]) -> dict[str, Any]:
    return {
        "to": [d.provider_to for d in destinations],
        "text": request.text,
        "from": request.sender,
        "client_ref": request.client_ref,
        "detail": request.detail,
    }


def _claim_answer(claim: Replay | InFlight | Mismatch) -> SendAnswer:
    if isinstance(claim, Replay):
        return SendAnswer(claim.status, claim.body, {REPLAY_HEADER: "true"})
    if isinstance(claim, Mismatch):
        raise AppError(
            422,
            "idempotency_key_reused",
            "Idempotency-Key: already used with a different request body",
        )
    raise AppError(
        409,
        "idempotency_key_in_flight",
        "Idempotency-Key: a request with this key is still in progress (or did not finish; "
        f"started {claim.since.isoformat()}); look its messages up instead of resending",
    )


async def _insert_rows(
    session: AsyncSession,
    entries: list[_Entry],
    request: SendRequest,
    api_key_name: str,
    send_id: str,
) -> None:
    now = utcnow()
    rows = [
        {
            "send_id": send_id,
            "api_key_name": api_key_name,
            "client_ref": request.client_ref,
            "channel": e.dest.channel,
            "msisdn": e.dest.msisdn,
            "sender": request.sender,
            "encoding": e.encoding,
            "segments": e.segments,
            "status": "unknown",
            "created_at": now,
            "updated_at": now,
        }
        for e in entries
    ]
    result = await session.execute(
        insert(_messages).returning(_messages.c.id, sort_by_parameter_order=True), rows
    )
    for e, message_id in zip(entries, result.scalars(), strict=True):
        e.id = message_id


def _apply(entries: list[_Entry], batches: list[BatchResult]) -> Bulk360Error | None:
    """Fill the entries from the provider's answers; return the failure naming the answer."""
    failures: list[Bulk360Error] = []
    for batch in batches:
        if batch.error is not None:
            failures.append(batch.error)
            for i in batch.indices:
                e = entries[i]
                e.desc = batch.error.desc
                if isinstance(batch.error, AmbiguousError):
                    continue  # stays unknown: the provider may have sent it
                e.status, e.code, e.answered = "rejected", batch.error.code, True
                e.outcome = (
                    "insufficient_credit"
                    if isinstance(batch.error, InsufficientCreditError)
                    else "rejected"
                )
            continue
        for i, sub in zip(batch.indices, batch.submissions, strict=True):
            e = entries[i]
            if sub is None:
                e.desc = "Bulk360's answer did not mention this recipient; it may have sent"
                failures.append(AmbiguousError(e.desc))
                continue
            e.answered, e.code, e.desc = True, sub.code, sub.desc
            e.rate, e.currency = sub.rate, sub.currency
            if sub.accepted:
                e.status, e.ref, e.outcome = "pending", sub.ref, "pending"
            else:
                e.status, e.outcome = "rejected", "rejected"
    if not failures:
        return None
    for kind, _, _ in _FAILURES:
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    return failures[0]


def _balance(batches: list[BatchResult]) -> tuple[str | None, str | None]:
    # Concurrent requests each report the balance before themselves: the lowest is the latest.
    reported = [b for b in batches if b.balance is not None]
    currency = next((b.currency for b in batches if b.currency), None)
    if not reported:
        return None, currency
    return min(reported, key=lambda b: Decimal(str(b.balance))).balance, currency


def _answer(
    entries: list[_Entry],
    *,
    failure: Bulk360Error | None,
    balance: str | None,
    currency: str | None,
    detail: bool,
    sandbox: bool,
) -> tuple[int, bytes]:
    messages = [
        {
            "id": e.id,
            "to": e.dest.provider_to,
            "channel": e.dest.channel,
            "ref": e.ref,
            "status": e.status,
            "code": e.code,
            "desc": e.desc,
            "rate": e.rate if detail else None,
            "currency": e.currency if detail else None,
            "encoding": e.encoding,
            "segments": e.segments,
        }
        for e in entries
    ]
    body: dict[str, Any] = {}
    status = 201
    if failure is not None:
        status, code = next((s, c) for kind, s, c in _FAILURES if isinstance(failure, kind))
        body = {"error": code, "detail": failure.desc}
    body |= {
        "messages": messages,
        "balance": balance if detail else None,
        "currency": currency if detail else None,
        "sandbox": sandbox,
    }
    return status, orjson.dumps(body)


# Guarded on the row still being as step 1 left it, so that running the answer again (after a
# COMMIT whose outcome was lost with the connection) can never undo a later DN's status.
_UPDATE = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("b_id"),
        _messages.c.status == "unknown",
        _messages.c.ref.is_(None),
    )
    .values(
        status=bindparam("b_status"),
        ref=bindparam("b_ref"),
        submit_code=bindparam("b_code"),
        submit_desc=bindparam("b_desc"),
        rate=bindparam("b_rate"),
        currency=bindparam("b_currency"),
        submitted_at=bindparam("b_submitted_at"),
        updated_at=bindparam("b_updated_at"),
    )
)


async def _update_rows(session: AsyncSession, entries: list[_Entry]) -> None:
    refs = {e.id: e.ref for e in entries if e.ref}
    await lock_refs(session, sorted(refs.values()))
    now = utcnow()
    await session.execute(
        _UPDATE,
        [
            {
                "b_id": e.id,
                "b_status": e.status,
                "b_ref": e.ref,
                "b_code": e.code,
                "b_desc": e.desc[:_DESC_MAX] if e.desc else None,
                "b_rate": e.rate,
                "b_currency": e.currency,
                "b_submitted_at": now if e.answered else None,
                "b_updated_at": now,
            }
            for e in entries
        ],
    )
    # A DN for one of these refs may have been stored before we knew the ref.
    await attach_dns(session, refs)


# ---- Postgres --------------------------------------------------------------------------------

_INSERT_ROWS = """
INSERT INTO messages (send_id, api_key_name, client_ref, channel, msisdn, sender, encoding,
                      segments, status, created_at, updated_at)
SELECT $1, $2, $3, u.channel, u.msisdn, $4, u.encoding, u.segments, 'unknown', $5, $5
FROM unnest($6::text[], $7::text[], $8::text[], $9::int[])
     WITH ORDINALITY AS u(channel, msisdn, encoding, segments, n)
{where}
ORDER BY u.n
RETURNING id
"""
_INSERT_ROWS_PG = _INSERT_ROWS.format(where="")
_CLAIM_AND_INSERT_ROWS_PG = CLAIM_CTE_PG + _INSERT_ROWS.format(
    where="WHERE EXISTS (SELECT 1 FROM claim)"
)

# The answer in one statement, after the ref locks: the rows and the stored Idempotency-Key
# response ($11 NULL: no key). It returns, per recorded ref, whether a DN for it is waiting to
# be attached (it beat the answer): then `attach_dns`, in the same transaction.
_RECORD_ANSWER_PG = """
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[],
                         $6::text[], $7::text[], $8::timestamptz[])
         AS v(id, status, ref, code, descr, rate, currency, submitted_at)
), stored AS (
    UPDATE idempotency_keys SET response_status = $12, response_body = $13
    WHERE $11::text IS NOT NULL AND api_key_name = $10 AND key = $11
)
UPDATE messages m SET status = v.status, ref = v.ref, submit_code = v.code,
    submit_desc = v.descr, rate = v.rate, currency = v.currency,
    submitted_at = v.submitted_at, updated_at = $9
FROM v WHERE m.id = v.id AND m.status = 'unknown' AND m.ref IS NULL
RETURNING m.id, m.ref, EXISTS (
    SELECT 1 FROM delivery_notifications d WHERE d.msgid = m.ref AND d.message_id IS NULL
)
"""
# `attach_dns` for every ref at once: DNs stored before their message had a ref.
_ATTACH_DNS_PG = """
UPDATE delivery_notifications d SET message_id = v.id
FROM unnest($1::bigint[], $2::text[]) AS v(id, ref)
WHERE d.msgid = v.ref AND d.message_id IS NULL
RETURNING d.message_id
"""


async def attach_dns(db: AsyncSession | Any, refs_by_message: dict[int, str]) -> None:
    """Attach DNs that arrived before their message had a ref, then refresh those messages
    (`app.notifications.service.attach_dns`); on an asyncpg connection in one statement for
    all refs. Call inside the transaction that records the refs, after the ref locks."""
    if isinstance(db, AsyncSession):
        await attach_dns_session(db, refs_by_message)
        return
    if not refs_by_message:
        return
    ids, refs = list(refs_by_message), list(refs_by_message.values())
    attached = await db.fetch(_ATTACH_DNS_PG, ids, refs)
    await refresh_messages_pg(db, sorted({row[0] for row in attached}))


@asynccontextmanager
async def _raw_pg(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection of a pooled connection (the pool's raw checkout: no Connection
    objects around it, which cost more CPU than the statements' own Python)."""
    raw = await engine.raw_connection()
    try:
        yield raw.driver_connection
    except BaseException as exc:
        # SQLAlchemy did not see this error: a dead connection must not go back to the pool.
        if not isinstance(exc, Exception) or is_database_unavailable(exc):
            with contextlib.suppress(Exception):
                await greenlet_spawn(raw.invalidate, exc if isinstance(exc, Exception) else None)
        raise
    finally:
        # Back to the pool; in a greenlet because the pool may close it (overflow, invalidated).
        await greenlet_spawn(raw.close)


async def _record_answer_pg(
    engine: AsyncEngine,
    entries: list[_Entry],
    response: tuple[str, str, int, bytes] | None,
) -> None:
    now = utcnow()
    refs = {e.id: e.ref for e in entries if e.ref}
    name, key, status, body = response if response is not None else (None, None, None, None)
    args = (
        [e.id for e in entries],
        [e.status for e in entries],
        [e.ref for e in entries],
        [e.code for e in entries],
        [e.desc[:_DESC_MAX] if e.desc else None for e in entries],
        [e.rate for e in entries],
        [e.currency for e in entries],
        [now if e.answered else None for e in entries],
        now,
        name,
        key,
        status,
        body.decode() if body is not None else None,
    )
    async with _raw_pg(engine) as apg:
        if not refs:  # nothing to lock or attach: one statement, committed on its own
            await apg.execute(_RECORD_ANSWER_PG, *args)
            return
        # Three round trips: BEGIN with the locks, the statement, COMMIT (a fourth, rarely,
        # for DNs that beat the answer).
        committing = False
        try:
            await apg.execute(begin_and_lock_sql(list(refs.values())))
            recorded = await apg.fetch(_RECORD_ANSWER_PG, *args)
            await attach_dns(apg, {row[0]: row[1] for row in recorded if row[2]})
            committing = True
            await apg.execute("COMMIT")
        except BaseException:
            if not committing:
                with contextlib.suppress(Exception):
                    await apg.execute("ROLLBACK")
            raise
