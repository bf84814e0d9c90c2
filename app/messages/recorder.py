"""Recording the provider's answer: the one owner of every retry of an unrecorded answer.

A send records the provider's answer (refs, statuses, the stored Idempotency-Key response)
after the provider has acted: the answer is then only in memory, and resending would spend
twice. `AnswerRecorder.record()`:

1. writes it (group-committed with other sends' answers: `SendWriter.record`);
2. while the database is unreachable, tries again for ~5 s (`retry_delays_s`: a database
   restart), since repeating is safe: recording only touches rows still `unknown` without a
   ref, so an attempt whose COMMIT did land changes nothing the next time;
3. if it is still away, logs the refs at WARNING and returns, so the caller gets the
   provider's answer now, and keeps trying in the background (`late_delays_s`, then every
   `late_every_s`) until the database takes it, for at most `max_age_s`.

A failure that is not an outage (a bug) is not retried: the refs are logged for
reconciliation. Nothing depends on this process living until the database is back: the refs
are in the WARNING line; if the app stops first (`stop()`: one last try) or the answer is
older than `max_age_s`, they are logged at ERROR. One instance per app, stopped in the
lifespan before the engine is disposed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from app.errors import is_database_unavailable
from app.messages.repository import Answer
from app.ops.metrics import SEND_ANSWERS_UNRECORDED

log = structlog.get_logger("app.messages")

RETRY_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)  # in the send: ~5 s, a database restart
LATE_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 20.0)  # then in the background
LATE_EVERY_S = 30.0
MAX_AGE_S = 24 * 3600.0

Write = Callable[[Answer], Awaitable[None]]


class AnswerRecorder:
    def __init__(self, write: Write) -> None:
        self._write = write
        self._late: set[asyncio.Task[None]] = set()
        self.retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
        self.late_delays_s: tuple[float, ...] = LATE_DELAYS_S
        self.late_every_s = LATE_EVERY_S
        self.max_age_s = MAX_AGE_S

    @property
    def pending(self) -> int:
        """Answers handed to the background, not recorded yet."""
        return len(self._late)

    async def record(self, answer: Answer) -> None:
        """Record `answer`; never raises for a database failure (see the module docstring)."""
        for delay in (*self.retry_delays_s, None):
            try:
                await self._write(answer)
                return
            except Exception as exc:
                if not is_database_unavailable(exc):
                    # A bug, not an outage: answer what the provider said anyway.
                    log.warning(
                        "send answer not recorded: rows stay unknown; reconcile these refs",
                        send_id=answer.send_id,
                        refs=answer.refs,
                        error=type(exc).__name__,
                        exc_info=exc,
                    )
                    return
                if delay is None:
                    log.warning(
                        "send answer not recorded yet: rows stay unknown until the database "
                        "is back; these are the refs",
                        send_id=answer.send_id,
                        refs=answer.refs,
                        error=type(exc).__name__,
                    )
                    self.keep(answer)
                    return
                log.warning("send answer: database unavailable, retrying", send_id=answer.send_id)
                await asyncio.sleep(delay)

    def keep(self, answer: Answer) -> None:
        """Retry in the background until the database takes it."""
        task = asyncio.create_task(self._retry(answer), name=f"late-{answer.send_id}")
        self._late.add(task)
        SEND_ANSWERS_UNRECORDED.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._late.discard(task)
        SEND_ANSWERS_UNRECORDED.dec()

    async def wait(self) -> None:
        """Until every kept answer is recorded or given up (tests, shutdown)."""
        while self._late:
            await asyncio.gather(*self._late, return_exceptions=True)

    async def stop(self) -> None:
        """One last attempt for each kept answer, then give up on the rest (logged)."""
        tasks = list(self._late)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _delay(self, attempt: int) -> float:
        if attempt < len(self.late_delays_s):
            return self.late_delays_s[attempt]
        return self.late_every_s

    async def _retry(self, answer: Answer) -> None:
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                try:
                    await self._write(answer)
                except Exception as exc:
                    if not is_database_unavailable(exc):
                        log.error(
                            "late send answer failed: rows stay unknown; reconcile these refs",
                            send_id=answer.send_id,
                            refs=answer.refs,
                            error=type(exc).__name__,
                            exc_info=exc,
                        )
                        return
                    if time.monotonic() - started > self.max_age_s:
                        log.error(
                            "late send answer given up: rows stay unknown; reconcile these refs",
                            send_id=answer.send_id,
                            refs=answer.refs,
                            attempts=attempt,
                        )
                        return
                    continue
                log.info("late send answer recorded", send_id=answer.send_id, attempts=attempt)
                return
        except asyncio.CancelledError:
            await self._last_try(answer, attempt)
            raise

    async def _last_try(self, answer: Answer, attempt: int) -> None:
        # The app is stopping: one last, short try, in case the database is back.
        try:
            async with asyncio.timeout(5):
                await self._write(answer)
        except Exception as exc:
            log.error(
                "send answer not recorded at shutdown: rows stay unknown; reconcile these refs",
                send_id=answer.send_id,
                refs=answer.refs,
                error=type(exc).__name__,
            )
        else:
            log.info("late send answer recorded", send_id=answer.send_id, attempts=attempt + 1)
