"""The DN writer: group commit for the DN hook.

Each hook request validates its DN, hands it to `DNWriter.store()` and awaits the COMMIT of
the transaction that holds it; only then is it answered 200. One writer task per process
takes whatever has queued up (at most `DN_BATCH_MAX` DNs) and writes it in one transaction,
so under load one fsync covers hundreds of DNs instead of one.

In that transaction, in this order, in three round trips:
1. BEGIN and the advisory locks of every msgid (exclusive) and of its suffix cuts (shared),
   sorted, as one simple query (`delivery.begin_dn_batch_sql`): the locks the send path
   takes on a ref it records (exclusive), so a DN and its message never race;
2. one statement (`repository.STORE_BATCH`): `INSERT ... SELECT ... FROM unnest(...) WITH
   ORDINALITY ORDER BY ordinality`, which draws ids (the receipt sequence) in arrival order
   and sets `message_id` from `messages.ref` (the msgid, else its longest cut candidate: see
   `app.delivery`), and an UPDATE of the matched messages from the newest DN of the batch (only
   forward) with their DN count increased by the batch's;
3. COMMIT.

Failures:
- queue full, writer stopping, or the database recently failed (the breaker is open for
  `BREAKER_OPEN_S`, then the next batch probes it) -> `DNUnavailable` at once, the hook answers
  503 and the sender retries;
- a wait longer than `DN_ACK_TIMEOUT_S` -> `DNUnavailable` (the DN may still commit: a retry
  then stores a duplicate, which is harmless; a 200 for an unstored DN never happens);
- a batch failing for another reason is retried one DN per transaction, so one bad row cannot
  fail its neighbours; a DN that fails alone raises `DNStoreError`.

Two batches may be in flight: the next one starts once the previous one's INSERT
has drawn its ids, so ids still follow arrival order, and DNs for the same msgid still
serialise on the advisory lock. (A batch retried row by row after a non-database failure is
the exception: those rows get ids after DNs that arrived later.)

The writer goes through asyncpg directly, on a connection checked out of SQLAlchemy's pool per
batch (`db.pooled_asyncpg`, as the send path) rather than one held for ever: the checkout costs
little per batch (~2 us per DN at the batch sizes seen under load), and buys the pool's
replacement of connections killed by a database restart (`db.create_engine` checks asyncpg's
`is_closed()` at checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import NamedTuple

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import pooled_asyncpg
from app.errors import is_database_unavailable
from app.notifications.repository import EMPTY_BATCH, STORE_BATCH, begin_and_store
from app.ops.metrics import DN_BATCH_SECONDS, DN_BATCH_SIZE, DN_QUEUE_DEPTH

log = structlog.get_logger("app.dn_writer")

# After a batch fails because the database is unreachable, answer 503 at once for this long,
# then let the next batch probe the database again.
BREAKER_OPEN_S = 1.0


class InboundDN(NamedTuple):
    """One validated DN, as the hook hands it over (already normalised, within column sizes)."""

    msgid: str
    status: str
    error_code: str | None
    error_description: str | None
    msisdn: str | None
    raw: str  # every received field, JSON
    received_ts: float  # time.time() at receipt


class DNUnavailable(Exception):  # noqa: N818 - a state, not a programming error
    """The DN cannot be stored now (queue full, database down, stopping, timeout): 503."""


class DNStoreError(Exception):
    """This DN failed to store on its own, for a reason other than the database being down."""


_Item = tuple[InboundDN, "asyncio.Future[None]"]

# Batches in flight at once: while one commits, the next locks and inserts, so
# neither the event loop nor the database sits idle waiting for the other.
PIPELINE = 2


class _Turn:
    """The right to draw ids next; released once, after the INSERT or when the batch ends."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock: asyncio.Lock | None = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class DNWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue_max = settings.dn_queue_max
        self._batch_max = settings.dn_batch_max
        self._ack_timeout = settings.dn_ack_timeout_s
        # A plain list + event rather than asyncio.Queue: the writer takes everything queued
        # in one slice, and a submit costs one append.
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down_until = 0.0
        self.breaker_open_s = BREAKER_OPEN_S
        self._in_flight = 0
        self._slots = asyncio.Semaphore(PIPELINE)
        self._turn = asyncio.Lock()
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """DNs in the transaction being written now."""
        return self._in_flight

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            await self._warm_up()
            self._task = asyncio.create_task(self._run(), name="dn-writer")

    async def _warm_up(self) -> None:
        """Open the pipeline's connections and prepare its statements before the first DN.

        Otherwise the first burst after a start waits for connection set-up and planning
        (some hundred milliseconds). Best effort: a database that is down now is the
        breaker's business once DNs arrive, not a reason to refuse to start."""

        async def one() -> None:
            async with pooled_asyncpg(self._engine) as apg:
                await apg.execute(STORE_BATCH, *EMPTY_BATCH)  # stores nothing

        try:
            async with asyncio.timeout(5):
                await asyncio.gather(*(one() for _ in range(PIPELINE)))
        except Exception as exc:
            log.warning("dn_writer_warm_up_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        """Refuse new DNs, then write (or, if the database is down, fail) every queued one."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            return
        self._wakeup.set()
        try:
            await task
        finally:
            # Only reached with items left if the task itself died: never leave a caller hanging.
            self._fail(self._take_all(), DNUnavailable("the DN writer stopped"))

    async def store(self, dn: InboundDN) -> None:
        """Queue `dn` and return once its transaction has committed.

        Raises DNUnavailable (answer 503) or DNStoreError.
        """
        if self._closing or self._task is None:
            raise DNUnavailable("the DN writer is stopping")
        loop = asyncio.get_running_loop()
        if self._down_until and loop.time() < self._down_until:
            raise DNUnavailable("the database is unreachable")
        if len(self._pending) >= self._queue_max:
            raise DNUnavailable("the DN queue is full")
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((dn, fut))
        self._wakeup.set()
        # One timer, not asyncio.wait_for (which adds a future and callbacks per DN). A DN
        # whose future is done when the writer reaches it is skipped, never stored.
        timer = loop.call_later(self._ack_timeout, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()

    # ---- the writer task ------------------------------------------------------------------

    def _take_all(self) -> list[_Item]:
        items, self._pending = self._pending, []
        return items

    @staticmethod
    def _fail(items: list[_Item], exc: Exception) -> None:
        for _, fut in items:
            if not fut.done():
                fut.set_exception(exc)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._slots.acquire()
                # The next batch starts once the previous one's INSERT has drawn its ids, so
                # ids follow arrival order across batches too.
                await self._turn.acquire()
                batch = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                DN_QUEUE_DEPTH.set(len(self._pending))
                # Callers that timed out (future done) were answered 503: skip them.
                batch = [item for item in batch if not item[1].done()]
                if not batch:
                    self._turn.release()
                    self._slots.release()
                    continue
                self._in_flight += len(batch)
                task = asyncio.create_task(self._write(batch, _Turn(self._turn)))
                self._batches.add(task)
                task.add_done_callback(self._batch_done)
            DN_QUEUE_DEPTH.set(0)
            if self._closing:
                await asyncio.gather(*self._batches, return_exceptions=True)
                if not self._pending:
                    return

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._slots.release()

    async def _write(self, batch: list[_Item], turn: _Turn) -> None:
        try:
            await self._write_batch(batch, turn)
        except Exception as exc:  # a bug: answer rather than leave callers waiting
            log.error("dn_writer_error", error=type(exc).__name__, exc_info=exc)
            self._fail(batch, DNStoreError(type(exc).__name__))
        finally:
            turn.release()
            self._in_flight -= len(batch)

    async def _write_batch(self, batch: list[_Item], turn: _Turn) -> None:
        started = time.perf_counter()
        try:
            await self._commit([dn for dn, _ in batch], turn)
        except Exception as exc:
            turn.release()
            if is_database_unavailable(exc):
                self._open_breaker(exc)
                # Everything queued before the breaker opened would fail the same way.
                self._fail(batch + self._take_all(), DNUnavailable("the database is unreachable"))
                return
            log.warning(
                "dn_batch_failed_retrying_singly", size=len(batch), error=type(exc).__name__
            )
            await self._write_singly(batch)
            return
        finally:
            turn.release()
        self._down_until = 0.0
        DN_BATCH_SECONDS.observe(time.perf_counter() - started)
        DN_BATCH_SIZE.observe(len(batch))
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _write_singly(self, batch: list[_Item]) -> None:
        for index, (dn, fut) in enumerate(batch):
            try:
                await self._commit([dn], None)
            except Exception as exc:
                if is_database_unavailable(exc):
                    self._open_breaker(exc)
                    self._fail(batch[index:] + self._take_all(), DNUnavailable("database down"))
                    return
                log.error("dn_store_failed", error=type(exc).__name__, exc_info=exc)
                if not fut.done():
                    fut.set_exception(DNStoreError(type(exc).__name__))
                continue
            DN_BATCH_SIZE.observe(1)
            if not fut.done():
                fut.set_result(None)

    def _open_breaker(self, exc: BaseException) -> None:
        if not self._down_until:
            log.warning("dn_database_unavailable", error=type(exc).__name__)
        self._down_until = asyncio.get_running_loop().time() + self.breaker_open_s

    async def _commit(self, dns: list[InboundDN], turn: _Turn | None) -> None:
        """Three round trips: BEGIN with the msgids' locks (one simple query), the batch's
        statement, COMMIT."""
        # `pooled_asyncpg` discards the connection if it died.
        async with pooled_asyncpg(self._engine) as apg:
            committing = False
            try:
                await begin_and_store(apg, dns)
                if turn is not None:
                    turn.release()  # ids drawn: the next batch may start while this commits
                committing = True
                await apg.execute("COMMIT")
            except BaseException:
                if not committing:
                    with contextlib.suppress(Exception):
                        await apg.execute("ROLLBACK")
                raise


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(DNUnavailable("timed out waiting for the database"))
