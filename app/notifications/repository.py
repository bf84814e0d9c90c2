"""The DN domain's SQL: the writer's batch statement and the listing's query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import APPLY_BATCH_SET, cuts_sql, dn_batch_locks, dn_lock_keys
from app.models import DeliveryNotification

# The whole batch in one round trip: the database function `dn_store_batch` (created by the
# migration 3b7e9c2d41f0 from `STORE_FUNCTION` below; tests/notifications pin the two equal),
# called outside BEGIN by the writer, so that its COMMIT comes with it. Over three round trips
# (BEGIN with the locks, the statement, COMMIT) it saves two waits for a busy event loop: under
# load the database sat idle in the transaction, waiting for the relay's next statement, about
# as long as it worked.
#
# In the function, in this order:
# 1. the advisory locks of every msgid (exclusive) and of its suffix cuts (shared), in key
#    order (`delivery.dn_batch_locks`): the locks the send path takes on a ref it records
#    (exclusive), so a DN and its message never race. The next statement takes a new
#    snapshot (plpgsql, volatile), which sees any ref committed by a send that held a lock;
# 2. `ins`: insert in arrival order, drawing ids (the receipt sequence), matched to the
#    message whose ref is the msgid, else (only for a msgid with no such message and a `-` or
#    `.`: the lateral subquery is skipped for the others) to the longest of its cuts that is a
#    ref, each cut one probe of the unique index on messages.ref;
# 3. then move each matched message to its newest DN of the batch (delivery.APPLY_BATCH_SET:
#    never backwards, counted exactly).
_STORE_HEAD = f"""
    WITH ins AS (
        INSERT INTO delivery_notifications
            (msgid, status, error_code, error_description, msisdn, raw, received_at, message_id)
        SELECT t.msgid, t.status, t.error_code, t.error_description, t.msisdn, t.raw,
               to_timestamp(t.ts), coalesce(m.id, cut.id)
        FROM unnest(p_msgid, p_status, p_error_code, p_error_description, p_msisdn, p_raw,
                    p_ts) WITH ORDINALITY
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
# The batch arrives as one JSON text, column by column (`store_batch`): asyncpg encoded nine
# array parameters at ~0.7 us more per element than orjson writes them (it checks each element
# against collections.abc.Iterable, then Sized, in Python). The function turns the columns back
# into typed arrays (in order: WITH ORDINALITY), under the names the statement reads.
# Measured (bench/dn_batch.py, 3 A/B runs): the relay's CPU per DN 25.5-25.9 -> 17.7-19.0 us
# with 64-DN batches, 20.8-21.1 -> 13.7-13.8 us with 128; the database's about +3.5 us.
_BATCH_COLUMNS = (
    ("p_lock_keys", "bigint"),
    ("p_lock_exclusive", "boolean"),
    ("p_msgid", "text"),
    ("p_status", "text"),
    ("p_error_code", "text"),
    ("p_error_description", "text"),
    ("p_msisdn", "text"),
    ("p_raw", "text"),
    ("p_ts", "double precision"),
)
_DECLARE = "".join(
    f"    {name} {kind}[] := ARRAY(SELECT c::{kind} FROM jsonb_array_elements_text("  # noqa: S608
    f"p_batch->{index}) WITH ORDINALITY AS a(c, i) ORDER BY i);\n"
    for index, (name, kind) in enumerate(_BATCH_COLUMNS)
)
STORE_FUNCTION = (
    "\nDECLARE\n"  # noqa: S608 - fixed text only
    + _DECLARE
    + """BEGIN
    PERFORM CASE WHEN s.x THEN pg_advisory_xact_lock(s.k)
                 ELSE pg_advisory_xact_lock_shared(s.k) END
    FROM (SELECT * FROM unnest(p_lock_keys, p_lock_exclusive) AS u(k, x) ORDER BY 1) AS s;
"""
    + _STORE_HEAD
    + APPLY_BATCH_SET
    + "\n    FROM d WHERE messages.id = d.message_id;\nEND\n"
)
STORE_FUNCTION_ARGS = "p_batch jsonb"
STORE_BATCH = "SELECT dn_store_batch($1)"

# What `STORE_BATCH` takes for an empty batch (the writer's warm-up prepares it this way).
EMPTY_BATCH = orjson.dumps([[]] * len(_BATCH_COLUMNS)).decode()


async def store_batch(
    apg: Any, dns: Sequence[tuple[Any, ...]], keys: Sequence[tuple[int, ...]] | None = None
) -> None:
    """The batch's function on an asyncpg connection, in one round trip: it commits unless
    the caller sent BEGIN. The ids are drawn when this returns. `dns`: rows of (msgid, status,
    error_code, error_description, msisdn, raw, received_ts); `keys`: their `dn_lock_keys`,
    if the caller has them already."""
    locks = dn_batch_locks(keys if keys is not None else [dn_lock_keys(dn[0]) for dn in dns])
    columns = list(zip(*dns, strict=True)) or [()] * (len(_BATCH_COLUMNS) - 2)
    await apg.execute(STORE_BATCH, orjson.dumps([*locks, *columns]).decode())


async def begin_and_store(apg: Any, dns: Sequence[tuple[Any, ...]]) -> None:
    """BEGIN and `store_batch`, leaving the transaction open (with its locks): the caller
    commits or rolls back."""
    await apg.execute("BEGIN")
    await store_batch(apg, dns)


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
