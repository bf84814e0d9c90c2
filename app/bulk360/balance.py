"""The account balance: the latest one the provider reported (CONTRACT §4.6).

Every send answer (the relay always asks `detail=1`) carries the balance *before* that request,
as a string, with its currency. The client hands each one to `BalanceTracker.record`, which
keeps the latest per currency in memory, sets the gauge `relay_bulk360_balance{currency}`, and
logs one WARNING when the balance falls under `LOW_BALANCE_THRESHOLD` (again only after it
has been back at or above it). `/readyz` shows the latest reading and `low_balance`.

`record` runs on the send path, so it never awaits. Persistence to `provider_balances` (read by
the operator console, and by the next process at start-up to seed the tracker) is a background
writer: readings coalesce per currency (the latest wins), one write at a time, at most one per
`WRITE_INTERVAL_S`. A failed write is retried with the next one, at worst lost with the
process: the next send answer reports the balance again.

"Latest" is the order answers arrive in. Concurrent requests each report the balance before
themselves, so the last answer can carry a slightly older figure than an earlier one; the gap
is a few messages' worth and the next answer corrects it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.repository import BalanceReading, latest_balances, save_balances
from app.ops.metrics import BULK360_BALANCE

log = structlog.get_logger("app.bulk360.balance")

WRITE_INTERVAL_S = 1.0
# Start-up's read and shutdown's last write: best effort, a database that is down now must not
# hold the process (like the DN writer's warm-up).
DB_TIMEOUT_S = 5.0


class BalanceTracker:
    """The latest balance per currency, its gauge, the low-balance warning and its saving."""

    def __init__(self, low_threshold: Decimal | None = None) -> None:
        self.low_threshold = low_threshold
        self._latest: dict[str, BalanceReading] = {}
        self._newest: BalanceReading | None = None
        self._low = False
        self._writer: _BalanceWriter | None = None

    @property
    def latest(self) -> BalanceReading | None:
        """The reading seen last, whatever its currency (an account has one)."""
        return self._newest

    @property
    def low(self) -> bool:
        return self._low

    def readings(self) -> list[BalanceReading]:
        return list(self._latest.values())

    def record(self, amount: str | None, currency: str | None) -> None:
        """Take one send answer's balance (decimal text); an answer without one is ignored."""
        if amount is None or not currency:
            return
        try:
            value = Decimal(amount)
        except InvalidOperation:
            return
        if not value.is_finite():
            return
        reading = BalanceReading(value, currency, datetime.now(UTC))
        self._apply(reading)
        if self._writer is not None:
            self._writer.put(reading)

    def _apply(self, reading: BalanceReading) -> None:
        self._latest[reading.currency] = reading
        self._newest = reading
        BULK360_BALANCE.labels(reading.currency).set(float(reading.amount))
        threshold = self.low_threshold
        if threshold is None:
            return
        low = reading.amount < threshold
        if low and not self._low:
            log.warning(
                "bulk360 balance below LOW_BALANCE_THRESHOLD",
                balance=str(reading.amount),
                currency=reading.currency,
                threshold=str(threshold),
            )
        self._low = low

    async def start(self, engine: AsyncEngine) -> None:
        """Seed from `provider_balances`, then save every new reading in the background.

        A seeded balance under the threshold logs the WARNING too: this process has not said
        it yet. A database that cannot answer now only leaves the tracker empty.
        """
        try:
            async with asyncio.timeout(DB_TIMEOUT_S), engine.connect() as conn:
                saved = await latest_balances(conn)
        except Exception as exc:
            log.warning("bulk360 balance not read at start-up", error=type(exc).__name__)
            saved = []
        for reading in reversed(saved):  # oldest first: the newest ends as `latest`
            if reading.currency not in self._latest:
                self._apply(reading)
        self._writer = _BalanceWriter(engine)
        self._writer.start()

    async def stop(self) -> None:
        """Stop the writer, then save what is still pending (bounded by DB_TIMEOUT_S)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.stop()

    async def wait_saved(self) -> None:
        """Return once every reading recorded so far is written (tests await it)."""
        if self._writer is not None:
            await self._writer.wait_idle()

    @property
    def writes(self) -> int:
        """Database writes so far: readings coalesce, so far fewer than readings."""
        return self._writer.writes if self._writer is not None else 0


class _BalanceWriter:
    """One task: wait for a reading, write what is pending, pause, repeat."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: dict[str, BalanceReading] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.writes = 0

    def put(self, reading: BalanceReading) -> None:
        self._pending[reading.currency] = reading
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="balance-writer")

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DB_TIMEOUT_S):
                    await self._write()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self._write():
                self._wake.set()  # try again after the pause, with whatever is newest then
            if not self._pending:
                self._idle.set()
            # The pause bounds the write rate; readings arriving meanwhile coalesce.
            await asyncio.sleep(WRITE_INTERVAL_S)

    async def _write(self) -> bool:
        readings, self._pending = self._pending, {}
        if not readings:
            return True
        try:
            async with self._engine.begin() as conn:
                await save_balances(conn, list(readings.values()))
        except BaseException as exc:
            # Back in the queue unless a newer reading of that currency came meanwhile.
            self._pending = readings | self._pending
            if not isinstance(exc, Exception):
                raise  # cancelled: stop() writes them
            if not self._failing:  # once per outage, not once a second
                log.warning("bulk360 balance not saved; retrying", error=type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        self.writes += 1
        return True
