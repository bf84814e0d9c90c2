"""Provider answers the database could not take in time, recorded as soon as it can.

A send records the provider's answer (refs, statuses, the stored Idempotency-Key response)
after the provider has acted. If the database is unreachable then, the send retries for a few
seconds and answers its caller anyway: the provider's outcome is what the caller must know,
and resending would spend twice. Without more, the rows would stay `unknown` with no ref, and
the DNs for those refs would stay unmatched.

`LateAnswers` keeps those answers and tries again in the background (`RETRY_DELAYS_S`, then
every `RETRY_EVERY_S`) until the database takes them, for at most `MAX_AGE_S`. Repeating is
safe: recording only touches rows still `unknown` without a ref, so an attempt whose COMMIT did
land changes nothing the next time. The refs are logged at WARNING when an answer is handed
over, so nothing depends on this process living until the database is back. If the app stops
first, or the answer is older than `MAX_AGE_S`, they are logged at ERROR. One instance per app,
stopped in the lifespan before the engine is disposed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from app.errors import is_database_unavailable
from app.ops.metrics import SEND_ANSWERS_UNRECORDED

log = structlog.get_logger("app.messages")

RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 20.0)
RETRY_EVERY_S = 30.0
MAX_AGE_S = 24 * 3600.0

Record = Callable[[], Awaitable[None]]


class LateAnswers:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
        self.retry_every_s = RETRY_EVERY_S
        self.max_age_s = MAX_AGE_S

    @property
    def pending(self) -> int:
        """Answers not recorded yet."""
        return len(self._tasks)

    def keep(self, send_id: str, refs: dict[str, str], record: Record) -> None:
        """Retry `record()` in the background until the database takes it."""
        task = asyncio.create_task(self._retry(send_id, refs, record), name=f"late-{send_id}")
        self._tasks.add(task)
        SEND_ANSWERS_UNRECORDED.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        SEND_ANSWERS_UNRECORDED.dec()

    async def wait(self) -> None:
        """Until every kept answer is recorded or given up (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """One last attempt for each kept answer, then give up on the rest (logged)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _retry(self, send_id: str, refs: dict[str, str], record: Record) -> None:
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                delay = (
                    self.retry_delays_s[attempt]
                    if attempt < len(self.retry_delays_s)
                    else self.retry_every_s
                )
                attempt += 1
                await asyncio.sleep(delay)
                try:
                    await record()
                except Exception as exc:
                    if not is_database_unavailable(exc):
                        log.error(
                            "late send answer failed: rows stay unknown; reconcile these refs",
                            send_id=send_id,
                            refs=refs,
                            error=type(exc).__name__,
                            exc_info=exc,
                        )
                        return
                    if time.monotonic() - started > self.max_age_s:
                        log.error(
                            "late send answer given up: rows stay unknown; reconcile these refs",
                            send_id=send_id,
                            refs=refs,
                            attempts=attempt,
                        )
                        return
                    continue
                log.info("late send answer recorded", send_id=send_id, attempts=attempt)
                return
        except asyncio.CancelledError:
            # The app is stopping: one last, short try, in case the database is back.
            try:
                async with asyncio.timeout(5):
                    await record()
            except Exception as exc:
                log.error(
                    "send answer not recorded at shutdown: rows stay unknown; reconcile these refs",
                    send_id=send_id,
                    refs=refs,
                    error=type(exc).__name__,
                )
            else:
                log.info("late send answer recorded", send_id=send_id, attempts=attempt + 1)
            raise
