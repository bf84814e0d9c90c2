"""The periodic sweeps, run by every serve process every `SWEEP_INTERVAL_S`.

One pass, in this order, each piece in its own short transactions:
1. expiry: `pending` messages created more than `DN_DEADLINE_H` ago become `expired`, 1,000
   per transaction, claimed with `FOR UPDATE SKIP LOCKED` (repository._EXPIRE). Replicas may
   sweep at the same moment: each claims different rows, so a message expires once, and a row
   a DN batch holds is left for the next pass instead of being waited for. A DN that arrives
   later still decides: the DN writer moves a message to its last DN whatever its status;
2. the statistics rollup (stats.compact), under an advisory lock: one replica at a time;
3. retention (`RETENTION_DAYS`, when set) and expired Idempotency-Keys (retention.py):
   ≤ 2,000 rows per transaction (the contract allows 10,000), an advisory lock per kind;
4. the console's sign-in failures forgotten 15 minutes after the last one
   (app/console/throttle.py), ≤ 2,000 rows per transaction, claimed with SKIP LOCKED.

A pass that fails (the database is down) is logged and the next one tries again; nothing is
lost by skipping a pass. The first pass comes after a random part of the interval, so replicas
started together do not sweep in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import utcnow
from app.errors import is_database_unavailable
from app.ops.metrics import SWEEP_ROWS, SWEEP_SECONDS
from app.outcomes import repository as repo
from app.outcomes import retention, stats
from app.outcomes.repository import PruneCounts

log = structlog.get_logger("app.sweeps")


@dataclass
class SweepReport:
    """What one pass did."""

    expired: int = 0
    stats_deltas: int = 0  # delta rows folded into the statistics rollup
    pruned: PruneCounts = field(default_factory=PruneCounts)
    sign_in_failures: int = 0  # console addresses forgotten


class Sweeper:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._engine = engine
        self._interval = settings.sweep_interval_s
        self._deadline = timedelta(hours=settings.dn_deadline_h)
        self._retention_days = settings.retention_days
        self._task: asyncio.Task[None] | None = None
        self._pass_lock = asyncio.Lock()  # a direct run_once never overlaps the periodic one

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self._interval * random.random())
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                if is_database_unavailable(exc):
                    log.warning("sweep_skipped_database_unavailable", error=type(exc).__name__)
                else:
                    log.error("sweep_failed", error=type(exc).__name__, exc_info=exc)
            await asyncio.sleep(self._interval)

    async def run_once(self) -> SweepReport:
        """One pass of every sweep (also what a test calls instead of waiting)."""
        async with self._pass_lock:
            report = SweepReport()
            report.expired = await self._timed("expiry", self.expire)
            report.stats_deltas = await self._timed("stats", lambda: stats.compact(self._engine))
            now = utcnow()
            if self._retention_days is not None:
                cutoff = retention.cutoff_for(now, self._retention_days)
                report.pruned = await self._timed_prune(
                    "retention", retention.prune(self._engine, cutoff, now)
                )
            else:
                report.pruned = await self._timed_prune(
                    "idempotency_keys", retention.purge_expired_keys(self._engine, now)
                )
            report.sign_in_failures = await self._timed(
                "sign_in_failures", lambda: retention.purge_sign_in_failures(self._engine)
            )
            SWEEP_ROWS.labels("purged_sign_in_failures").inc(report.sign_in_failures)
            if report.expired or report.pruned.total or report.sign_in_failures:
                log.info(
                    "sweep",
                    expired=report.expired,
                    messages_pruned=report.pruned.messages,
                    dns_pruned=report.pruned.delivery_notifications,
                    callback_events_pruned=report.pruned.callback_events,
                    unmatched_dns_pruned=report.pruned.unmatched_delivery_notifications,
                    idempotency_keys_purged=report.pruned.idempotency_keys,
                    sign_in_failures_purged=report.sign_in_failures,
                )
            return report

    async def expire(self) -> int:
        """Expire every pending message past the deadline, a batch per transaction."""
        cutoff = utcnow() - self._deadline
        total = 0
        while True:
            started = time.perf_counter()
            async with self._engine.begin() as conn:
                n = await repo.expire_batch(conn, cutoff)
            SWEEP_SECONDS.labels("expiry_batch").observe(time.perf_counter() - started)
            SWEEP_ROWS.labels("expired").inc(n)
            total += n
            if n < repo.EXPIRE_BATCH:
                return total

    async def _timed(self, kind: str, work: Callable[[], Awaitable[int]]) -> int:
        started = time.perf_counter()
        try:
            return await work()
        finally:
            SWEEP_SECONDS.labels(kind).observe(time.perf_counter() - started)

    async def _timed_prune(self, kind: str, work: Awaitable[PruneCounts]) -> PruneCounts:
        started = time.perf_counter()
        try:
            counts = await work
        finally:
            SWEEP_SECONDS.labels(kind).observe(time.perf_counter() - started)
        SWEEP_ROWS.labels("pruned_messages").inc(counts.messages)
        SWEEP_ROWS.labels("pruned_delivery_notifications").inc(counts.delivery_notifications)
        SWEEP_ROWS.labels("pruned_callback_events").inc(counts.callback_events)
        SWEEP_ROWS.labels("pruned_unmatched_delivery_notifications").inc(
            counts.unmatched_delivery_notifications
        )
        SWEEP_ROWS.labels("purged_idempotency_keys").inc(counts.idempotency_keys)
        return counts
