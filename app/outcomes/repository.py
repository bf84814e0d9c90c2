"""Every hand-written SQL statement of the outcomes domain (sweeps, retention, statistics).

Each sweep statement works on a bounded batch in its own short transaction and claims its rows
with `FOR UPDATE SKIP LOCKED`: a row another replica (or the DN writer) holds is skipped, never
waited for, and no row is changed twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EXPIRE_BATCH = 1_000
# CONTRACT §4.7: at most 10,000 rows deleted per transaction, whatever the table.
PRUNE_ROWS_MAX = 10_000


def advisory_key(name: str) -> int:
    """A fixed 64-bit advisory lock key per sweep kind (signed, as Postgres' bigint)."""
    digest = hashlib.blake2b(f"bulk360-relay:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def try_lock(conn: AsyncConnection, name: str, *, wait: bool = False) -> bool:
    """Take this sweep kind's lock until the transaction ends: False if another process holds
    it, or (`wait`) once that process's transaction ends."""
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    locked = await conn.scalar(
        text(f"SELECT {function}(:key) IS NOT false"), {"key": advisory_key(name)}
    )
    return bool(locked)


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

# The oldest messages first (ix_messages_created_at_id), no more than fit with their DNs in one
# transaction's budget (the first one always, so a message with a huge DN history cannot stall
# the sweep). Locked, so the DN writer's late update of one of them waits for this short
# transaction rather than racing it; SKIP LOCKED never waits for a message a DN batch holds.
_PRUNE_PICK = text(
    """
SELECT id FROM (
    SELECT id, row_number() OVER (ORDER BY created_at, id) AS n,
           sum(1 + dn_count) OVER (ORDER BY created_at, id) AS rows_so_far
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
    unmatched_delivery_notifications: int = 0
    idempotency_keys: int = 0

    def add(self, other: PruneCounts) -> None:
        self.messages += other.messages
        self.delivery_notifications += other.delivery_notifications
        self.unmatched_delivery_notifications += other.unmatched_delivery_notifications
        self.idempotency_keys += other.idempotency_keys

    @property
    def total(self) -> int:
        return (
            self.messages
            + self.delivery_notifications
            + self.unmatched_delivery_notifications
            + self.idempotency_keys
        )


async def prune_messages_batch(conn: AsyncConnection, cutoff: datetime) -> PruneCounts:
    """One transaction's worth of messages created before `cutoff`, with their DNs."""
    ids = list(await conn.scalars(_PRUNE_PICK, {"cutoff": cutoff, "rows_max": PRUNE_ROWS_MAX}))
    if not ids:
        return PruneCounts()
    dns = await conn.execute(_PRUNE_DNS_OF, {"ids": ids})
    messages = await conn.execute(_PRUNE_MESSAGES, {"ids": ids})
    return PruneCounts(
        messages=int(messages.rowcount),
        delivery_notifications=int(dns.rowcount),
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
