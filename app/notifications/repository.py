"""The DN domain's SQL: the writer's batch statement and the listing's query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import APPLY_BATCH_SET, begin_dn_batch_sql, cuts_sql
from app.models import DeliveryNotification

# The whole batch in one statement (after the locks):
# - `ins`: insert in arrival order, drawing ids (the receipt sequence), matched to the message
#   whose ref is the msgid, else (only for a msgid with no such message and a `-` or `.`: the
#   lateral subquery is skipped for the others) to the longest of its cuts that is a ref, each
#   cut one probe of the unique index on messages.ref;
# - then move each matched message to its newest DN of the batch (delivery.APPLY_BATCH_SET:
#   never backwards, counted exactly).
_STORE_HEAD = f"""
WITH ins AS (
    INSERT INTO delivery_notifications
        (msgid, status, error_code, error_description, msisdn, raw, received_at, message_id)
    SELECT t.msgid, t.status, t.error_code, t.error_description, t.msisdn, t.raw,
           to_timestamp(t.ts), coalesce(m.id, cut.id)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::float8[]) WITH ORDINALITY
         AS t(msgid, status, error_code, error_description, msisdn, raw, ts, ord)
    LEFT JOIN messages m ON m.ref = t.msgid
    LEFT JOIN LATERAL (
        SELECT c.id FROM messages c
        WHERE m.id IS NULL AND (strpos(t.msgid, '-') > 0 OR strpos(t.msgid, '.') > 0)
          AND c.ref = ANY ({cuts_sql("t.msgid")})
        ORDER BY length(c.ref) DESC LIMIT 1
    ) AS cut ON true
    ORDER BY t.ord
    RETURNING id, message_id, status, error_code, error_description, received_at
), d AS (
    SELECT DISTINCT ON (message_id) id, message_id, status, error_code, error_description,
           received_at, count(*) OVER (PARTITION BY message_id) AS n
    FROM ins WHERE message_id IS NOT NULL
    ORDER BY message_id, id DESC
)
UPDATE messages SET """  # noqa: S608 - fixed text only
_STORE_TAIL = "\nFROM d WHERE messages.id = d.message_id\n"
STORE_BATCH = _STORE_HEAD + APPLY_BATCH_SET + _STORE_TAIL  # fixed text only

# What `STORE_BATCH` takes for an empty batch (the writer's warm-up prepares it this way).
EMPTY_BATCH: tuple[list[Any], ...] = ([],) * 7


async def begin_and_store(apg: Any, dns: Sequence[tuple[Any, ...]]) -> None:
    """BEGIN, the locks of every candidate ref of the DNs' msgids, and the batch's statement on
    an asyncpg connection, in two round trips; the caller commits (or rolls back). The ids are
    drawn when this returns. `dns`: rows of (msgid, status, error_code, error_description,
    msisdn, raw, received_ts)."""
    # Lock before inserting: the INSERT's snapshot then sees any ref committed by a send that
    # held the lock, and a send waiting for it sees these DNs once they are committed.
    await apg.execute(begin_dn_batch_sql(dn[0] for dn in dns))
    await apg.execute(STORE_BATCH, *zip(*dns, strict=True))


async def list_dns(
    session: AsyncSession,
    *,
    unmatched: bool,
    msgid: str | None,
    before_seq: int | None,
    limit: int,
) -> Sequence[DeliveryNotification]:
    """Newest first by receipt sequence; `limit` rows at most. Every filter walks an index
    ending in `id`: the primary key, `(msgid, id)`, or the unmatched DNs' partial index."""
    dn = DeliveryNotification
    query = select(dn).order_by(dn.id.desc()).limit(limit)
    if unmatched:
        query = query.where(dn.message_id.is_(None))
    if msgid is not None:
        query = query.where(dn.msgid == msgid)
    if before_seq is not None:
        query = query.where(dn.id < before_seq)
    return (await session.scalars(query)).all()
