"""Every hand-written SQL statement of the outcomes domain (sweeps, retention, statistics).

Each sweep statement works on a bounded batch in its own short transaction and claims its rows
with `FOR UPDATE SKIP LOCKED`: a row another replica (or the DN writer) holds is skipped, never
waited for, and no row is changed twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EXPIRE_BATCH = 1_000
# CONTRACT §4.7: at most 10,000 rows deleted per transaction. 2,000 here: a prune is a WAL
# stream, and a DN batch's COMMIT waits for the WAL written before it; smaller transactions
# (and the pause after each, retention.PAUSE_FACTOR) keep that wait short.
PRUNE_ROWS_MAX = 2_000


def advisory_key(name: str) -> int:
    """A fixed 64-bit advisory lock key per sweep kind (signed, as Postgres' bigint)."""
    digest = hashlib.blake2b(f"bulk360-relay:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def try_lock(conn: AsyncConnection, name: str, *, wait: bool = False) -> bool:
    """Take this sweep kind's lock until the transaction ends: False if another process holds
    it, or (`wait`) once that process's transaction ends."""
    key = {"key": advisory_key(name)}
    if wait:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
        return True
    return bool(await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), key))


# ---- expiry ------------------------------------------------------------------------------------

# Candidates come from ix_messages_status_created_at_id (status, created_at, id) in created_at
# order; SKIP LOCKED leaves rows a DN batch or another replica holds to a later pass. The
# outer `status = 'pending'` keeps the UPDATE to rows that really change (every change makes a
# callback event). Delivery fields (delivery_status, error_code, ...) stay as the last DN left
# them: a non-final DN (e.g. 556 buffered) is still worth reading on an expired message.
_EXPIRE = text(
    """
WITH due AS (
    SELECT id FROM messages
    WHERE status = 'pending' AND created_at < :cutoff
    ORDER BY created_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
UPDATE messages SET status = 'expired', final_at = CURRENT_TIMESTAMP,
                    updated_at = CURRENT_TIMESTAMP
FROM due
WHERE messages.id = due.id AND messages.status = 'pending'
"""
)


async def expire_batch(conn: AsyncConnection, cutoff: datetime, batch: int = EXPIRE_BATCH) -> int:
    """Expire at most `batch` pending messages created before `cutoff`; how many were."""
    result = await conn.execute(_EXPIRE, {"cutoff": cutoff, "batch": batch})
    return int(result.rowcount)


# ---- retention ---------------------------------------------------------------------------------

# The oldest messages first (ix_messages_created_at_id), no more than fit with their DNs and
# callback events in one transaction's budget (the first one always, so a message with a huge
# DN history cannot stall the sweep). Locked, so the DN writer's late update of one of them
# waits for this short transaction rather than racing it; SKIP LOCKED never waits for a message
# a DN batch holds.
_PRUNE_PICK = text(
    """
SELECT id FROM (
    SELECT id, row_number() OVER (ORDER BY created_at, id) AS n,
           sum(1 + dn_count + (SELECT count(*) FROM callback_events e WHERE e.message_id = due.id))
               OVER (ORDER BY created_at, id) AS rows_so_far
    FROM (SELECT id, created_at, dn_count FROM messages
          WHERE created_at < :cutoff
          ORDER BY created_at, id
          LIMIT :rows_max
          FOR UPDATE SKIP LOCKED) AS due
) AS budget
WHERE n = 1 OR rows_so_far <= :rows_max
"""
)
# Their DNs explicitly, before the messages: otherwise the foreign key's ON DELETE SET NULL
# would turn them into unmatched DNs (an UPDATE each) for the next statement to delete.
_PRUNE_DNS_OF = text("DELETE FROM delivery_notifications WHERE message_id = ANY(:ids)")
# Their callback events too, to count them (the trigger on messages would delete them anyway;
# their attempts go by ON DELETE CASCADE).
_PRUNE_EVENTS_OF = text("DELETE FROM callback_events WHERE message_id = ANY(:ids)")
_PRUNE_MESSAGES = text("DELETE FROM messages WHERE id = ANY(:ids)")
# Unmatched DNs in receipt order through ix_delivery_notifications_unmatched_id.
_PRUNE_UNMATCHED = text(
    """
DELETE FROM delivery_notifications WHERE id IN (
    SELECT id FROM delivery_notifications
    WHERE message_id IS NULL AND received_at < :cutoff
    ORDER BY id
    LIMIT :rows_max
    FOR UPDATE SKIP LOCKED)
"""
)
_PURGE_KEYS = text(
    """
DELETE FROM idempotency_keys WHERE (api_key_name, key) IN (
    SELECT api_key_name, key FROM idempotency_keys
    WHERE expires_at <= :now
    LIMIT :rows_max
    FOR UPDATE SKIP LOCKED)
"""
)
_COUNT_PRUNABLE = text(
    """
SELECT
    (SELECT count(*) FROM messages WHERE created_at < :cutoff) AS messages,
    (SELECT count(*) FROM delivery_notifications d JOIN messages m ON m.id = d.message_id
     WHERE m.created_at < :cutoff) AS delivery_notifications,
    (SELECT count(*) FROM callback_events e JOIN messages m ON m.id = e.message_id
     WHERE m.created_at < :cutoff) AS callback_events,
    (SELECT count(*) FROM delivery_notifications
     WHERE message_id IS NULL AND received_at < :cutoff) AS unmatched_delivery_notifications,
    (SELECT count(*) FROM idempotency_keys WHERE expires_at <= :now) AS idempotency_keys
"""
)


@dataclass
class PruneCounts:
    """Rows deleted (or, on a dry run, that would be)."""

    messages: int = 0
    delivery_notifications: int = 0  # those of the deleted messages
    callback_events: int = 0  # those of the deleted messages (with their attempts)
    unmatched_delivery_notifications: int = 0
    idempotency_keys: int = 0

    def add(self, other: PruneCounts) -> None:
        self.messages += other.messages
        self.delivery_notifications += other.delivery_notifications
        self.callback_events += other.callback_events
        self.unmatched_delivery_notifications += other.unmatched_delivery_notifications
        self.idempotency_keys += other.idempotency_keys

    @property
    def total(self) -> int:
        return (
            self.messages
            + self.delivery_notifications
            + self.callback_events
            + self.unmatched_delivery_notifications
            + self.idempotency_keys
        )


async def prune_messages_batch(conn: AsyncConnection, cutoff: datetime) -> PruneCounts:
    """One transaction's worth of messages created before `cutoff`, with their DNs."""
    ids = list(await conn.scalars(_PRUNE_PICK, {"cutoff": cutoff, "rows_max": PRUNE_ROWS_MAX}))
    if not ids:
        return PruneCounts()
    dns = await conn.execute(_PRUNE_DNS_OF, {"ids": ids})
    events = await conn.execute(_PRUNE_EVENTS_OF, {"ids": ids})
    messages = await conn.execute(_PRUNE_MESSAGES, {"ids": ids})
    return PruneCounts(
        messages=int(messages.rowcount),
        delivery_notifications=int(dns.rowcount),
        callback_events=int(events.rowcount),
    )


async def prune_unmatched_batch(conn: AsyncConnection, cutoff: datetime) -> int:
    result = await conn.execute(_PRUNE_UNMATCHED, {"cutoff": cutoff, "rows_max": PRUNE_ROWS_MAX})
    return int(result.rowcount)


async def purge_keys_batch(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(_PURGE_KEYS, {"now": now, "rows_max": PRUNE_ROWS_MAX})
    return int(result.rowcount)


async def count_prunable(conn: AsyncConnection, cutoff: datetime, now: datetime) -> PruneCounts:
    row = (await conn.execute(_COUNT_PRUNABLE, {"cutoff": cutoff, "now": now})).one()
    return PruneCounts(*(int(v) for v in row))


# ---- statistics ------------------------------------------------------------------------------

# Fold the appended deltas into the hourly rollup (one process at a time: the caller holds the
# stats lock). DELETE ... RETURNING takes exactly the deltas this snapshot sees; a writer's
# uncommitted deltas stay for the next pass. Returns the hours left with all-zero rows.
_COMPACT = text(
    """
WITH moved AS (
    DELETE FROM message_stats_deltas
    RETURNING hour, api_key_name, channel, status, error_code, submit_code, currency,
              messages, spend
), folded AS (
    INSERT INTO message_stats_hourly AS h
        (hour, api_key_name, channel, status, error_code, submit_code, currency, messages, spend)
    SELECT hour, api_key_name, channel, status, error_code, submit_code, currency,
           sum(messages), sum(spend)
    FROM moved
    GROUP BY hour, api_key_name, channel, status, error_code, submit_code, currency
    ON CONFLICT (hour, api_key_name, channel, status, error_code, submit_code, currency)
    DO UPDATE SET messages = h.messages + excluded.messages, spend = h.spend + excluded.spend
    RETURNING h.hour, h.messages, h.spend
)
SELECT (SELECT count(*) FROM moved) AS deltas,
       ARRAY(SELECT DISTINCT hour FROM folded WHERE messages = 0 AND spend = 0) AS empty_hours
"""
)
_DROP_EMPTY = text(
    "DELETE FROM message_stats_hourly WHERE hour = ANY(:hours) AND messages = 0 AND spend = 0"
)


async def compact_stats(conn: AsyncConnection) -> int:
    """Fold the deltas into the hourly rollup; how many delta rows were folded."""
    deltas, empty_hours = (await conn.execute(_COMPACT)).one()
    if empty_hours:
        await conn.execute(_DROP_EMPTY, {"hours": list(empty_hours)})
    return int(deltas)


# Whole hours from the rollup (and the deltas not folded yet), the partial hours at either
# end from the messages themselves; one statement, so one snapshot: a delta being folded is
# counted once, before or after. Grouped by bucket start (date_bin from `origin`).
_STATS_FILTERS = """
      AND (CAST(:api_key_name AS text) IS NULL OR api_key_name = :api_key_name)
      AND (CAST(:channel AS text) IS NULL OR channel = :channel)"""
_STATS = text(
    f"""
SELECT date_bin(:stride, at, :origin) AS bucket, status, error_code,
       submit_code, currency, sum(n) AS messages, sum(amount) AS spend
FROM (
    SELECT hour AS at, status, error_code, submit_code, currency, messages AS n, spend AS amount
    FROM message_stats_hourly
    WHERE hour >= :hours_from AND hour < :hours_to{_STATS_FILTERS}
    UNION ALL
    SELECT hour, status, error_code, submit_code, currency, messages, spend
    FROM message_stats_deltas
    WHERE hour >= :hours_from AND hour < :hours_to{_STATS_FILTERS}
    UNION ALL
    SELECT created_at, status, error_code, submit_code, currency, 1, message_stats_rate(rate)
    FROM messages
    WHERE ((created_at >= :head_from AND created_at < :head_to)
           OR (created_at >= :tail_from AND created_at < :tail_to)){_STATS_FILTERS}
) AS counted
GROUP BY 1, 2, 3, 4, 5
HAVING sum(n) <> 0
"""  # noqa: S608 - fixed text only
)


@dataclass(frozen=True)
class StatsRow:
    bucket: datetime
    status: str
    error_code: str | None
    submit_code: int | None
    currency: str | None
    messages: int
    spend: Decimal


@dataclass(frozen=True)
class StatsSpans:
    """[since, until) cut into whole UTC hours (the rollup) and the partial hours at each end."""

    hours_from: datetime
    hours_to: datetime
    head_from: datetime
    head_to: datetime
    tail_from: datetime
    tail_to: datetime


async def stats_rows(
    conn: AsyncConnection,
    spans: StatsSpans,
    *,
    stride: timedelta,
    origin: datetime,
    api_key_name: str | None,
    channel: str | None,
) -> list[StatsRow]:
    params = {
        **spans.__dict__,
        "stride": stride,
        "origin": origin,
        "api_key_name": api_key_name,
        "channel": channel,
    }
    result = await conn.execute(_STATS, params)
    return [StatsRow(*row) for row in result]
