"""Retention (CONTRACT §4.7): delete what is older than a cutoff, in small transactions.

Used by the periodic sweep (`RETENTION_DAYS`) and by `bulk360-relay prune --older-than DAYS`.
What goes: messages created before the cutoff with their DNs and callback events (and those
events' attempts), DNs received before the cutoff that never matched a
message, and Idempotency-Keys past their expiry. Each transaction deletes at most
`PRUNE_ROWS_MAX` rows (2,000; the contract allows 10,000) and claims them with SKIP LOCKED, and
a pause as long as the transaction follows it, so the DN writer and the send path never wait
on a long delete (nor on a long stream of WAL), and two replicas (or a replica and the
command) never delete the same rows. Each kind of work also takes its advisory lock per
transaction: while one process prunes, the others skip that kind for the pass instead of
competing for the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.console import throttle
from app.outcomes import repository as repo
from app.outcomes.repository import PruneCounts

RETENTION_LOCK = "sweep:retention"
# After each batch, a pause as long as the batch took: deleting is background work, and at
# most half of one connection's time goes to it (bench/dn_ingest.py --prune-during).
PAUSE_FACTOR = 1.0
KEYS_LOCK = "sweep:idempotency-keys"


def cutoff_for(now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)


async def preview(engine: AsyncEngine, cutoff: datetime, now: datetime) -> PruneCounts:
    """What `prune(…, cutoff, now)` would delete now (the dry run)."""
    async with engine.connect() as conn:
        return await repo.count_prunable(conn, cutoff, now)


async def prune(
    engine: AsyncEngine, cutoff: datetime, now: datetime, *, wait: bool = False
) -> PruneCounts:
    """Delete everything `preview` counts, batch by batch; the totals deleted. `wait`: wait
    for a replica's batch to end instead of leaving the work to it (the command)."""
    counts = PruneCounts()
    counts.add(await purge_expired_keys(engine, now, wait=wait))

    async def messages(conn: AsyncConnection) -> int:
        batch = await repo.prune_messages_batch(conn, cutoff)
        counts.add(batch)
        return batch.messages

    async def unmatched(conn: AsyncConnection) -> int:
        n = await repo.prune_unmatched_batch(conn, cutoff)
        counts.unmatched_delivery_notifications += n
        return n

    await _in_batches(engine, RETENTION_LOCK, messages, wait)
    await _in_batches(engine, RETENTION_LOCK, unmatched, wait)
    return counts


async def purge_expired_keys(
    engine: AsyncEngine, now: datetime, *, wait: bool = False
) -> PruneCounts:
    """Idempotency-Keys past their expiry (the send path replaces an expired claim itself;
    this keeps the table from growing)."""
    counts = PruneCounts()

    async def keys(conn: AsyncConnection) -> int:
        n = await repo.purge_keys_batch(conn, now)
        counts.idempotency_keys += n
        return n

    await _in_batches(engine, KEYS_LOCK, keys, wait)
    return counts


async def purge_sign_in_failures(engine: AsyncEngine) -> int:
    """Console sign-in failures forgotten (no failure for 15 minutes): their rows go."""
    total = 0
    while True:
        n = await throttle.purge_batch(engine)
        total += n
        if n < throttle.PURGE_ROWS_MAX:
            return total


async def _in_batches(
    engine: AsyncEngine,
    lock: str,
    batch: Callable[[AsyncConnection], Awaitable[int]],
    wait: bool,
) -> None:
    """Run `batch` one transaction at a time until it finds nothing left, or until another
    process holds `lock` (it is doing the same work: leave it to that process)."""
    while True:
        started = time.perf_counter()
        async with engine.begin() as conn:
            if not await repo.try_lock(conn, lock, wait=wait):
                return
            if not await batch(conn):
                return
        await asyncio.sleep((time.perf_counter() - started) * PAUSE_FACTOR)


def render(counts: PruneCounts, *, dry_run: bool, cutoff: datetime, days: float) -> str:
    """What `bulk360-relay prune` prints: the same lines for a dry run and the real one."""
    lines = [
        f"{'would delete' if dry_run else 'deleted'} (messages created and unmatched DNs "
        f"received before {cutoff.isoformat()}, older than {days:g} days; expired "
        "Idempotency-Keys):",
        f"  messages: {counts.messages}",
        f"  delivery notifications of those messages: {counts.delivery_notifications}",
        f"  callback events of those messages: {counts.callback_events}",
        f"  unmatched delivery notifications: {counts.unmatched_delivery_notifications}",
        f"  expired idempotency keys: {counts.idempotency_keys}",
    ]
    return "\n".join(lines)


async def prune_command(database_url: str, days: float, *, dry_run: bool) -> str:
    """`bulk360-relay prune --older-than DAYS [--dry-run]`: what it deleted (or would)."""
    from app.db import create_engine, utcnow

    engine = create_engine(database_url, pool_size=1)
    try:
        now = utcnow()
        cutoff = cutoff_for(now, days)
        if dry_run:
            counts = await preview(engine, cutoff, now)
        else:
            counts = await prune(engine, cutoff, now, wait=True)
        return render(counts, dry_run=dry_run, cutoff=cutoff, days=days)
    finally:
        await engine.dispose()
