"""The DN writer: group commit for the DN hook.

Each hook request validates its DN, hands it to `DNWriter.store()` and awaits the COMMIT of
the transaction that holds it; only then is it answered 200. One writer task per process
takes whatever has queued up (at most `DN_BATCH_MAX` DNs) and writes it in one transaction,
so under load one fsync covers hundreds of DNs instead of one.

In that transaction, in this order (Postgres), in three round trips:
1. BEGIN and `pg_advisory_xact_lock` on every distinct msgid's key, sorted, as one simple
   query (`service.begin_and_lock_sql`): the same lock the send path takes on a ref it
   records, so a DN and its message never race;
2. one statement: `INSERT ... SELECT ... FROM unnest(...) WITH ORDINALITY ORDER BY ordinality`,
   which draws ids (the receipt sequence) in arrival order and sets `message_id` from
   `messages.ref`, and an UPDATE of the matched messages from the newest DN of the batch (only
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

Two batches may be in flight (Postgres): the next one starts once the previous one's INSERT
has drawn its ids, so ids still follow arrival order, and DNs for the same msgid still
serialise on the advisory lock. (A batch retried row by row after a non-database failure is
the exception: those rows get ids after DNs that arrived later.)

Postgres goes through asyncpg directly, on a connection checked out of SQLAlchemy's pool per
batch rather than one held for ever: the checkout costs little per batch (~2 us per DN at the
batch sizes seen under load), and buys the pool's replacement of connections killed by a
database restart (`db.create_engine` checks asyncpg's `is_closed()` at checkout). SQLite uses
SQLAlchemy Core in the same shape (one writer, BEGIN IMMEDIATE: correctness over speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import structlog
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import Settings
from app.errors import is_database_unavailable
from app.models import DeliveryNotification, Message
from app.notifications.service import APPLY_BATCH_SET, begin_and_lock_sql, refresh_messages
from app.ops.metrics import DN_BATCH_SECONDS, DN_BATCH_SIZE, DN_QUEUE_DEPTH

log = structlog.get_logger("app.dn_writer")

# After a batch fails because the database is unreachable, answer 503 at once for this long,
# then let the next batch probe the database again.
BREAKER_OPEN_S = 1.0

# The whole batch in one statement (after the locks): insert in arrival order, drawing ids
# (the receipt sequence) and matching messages.ref; then move each matched message to its
# newest DN (service.APPLY_BATCH_SET: never backwards, counted exactly).
_STORE_HEAD = """
WITH ins AS (
    INSERT INTO delivery_notifications
        (msgid, status, error_code, error_description, msisdn, raw, received_at, message_id)
    SELECT t.msgid, t.status, t.error_code, t.error_description, t.msisdn, t.raw,
           to_timestamp(t.ts), m.id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::float8[]) WITH ORDINALITY
         AS t(msgid, status, error_code, error_description, msisdn, raw, ts, ord)
    LEFT JOIN messages m ON m.ref = t.msgid
    ORDER BY t.ord
    RETURNING id, message_id, status, error_code, error_description, received_at
), d AS (
    SELECT DISTINCT ON (message_id) id, message_id, status, error_code, error_description,
           received_at, count(*) OVER (PARTITION BY message_id) AS n
    FROM ins WHERE message_id IS NOT NULL
    ORDER BY message_id, id DESC
)
UPDATE messages SET """
_STORE_TAIL = "\nFROM d WHERE messages.id = d.message_id\n"
_STORE_PG = _STORE_HEAD + APPLY_BATCH_SET + _STORE_TAIL  # fixed text only: noqa: S608


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

# Batches in flight at once (Postgres): while one commits, the next locks and inserts, so
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
        self._postgres = engine.dialect.name == "postgresql"
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
        self._slots = asyncio.Semaphore(PIPELINE if self._postgres else 1)
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
            if self._postgres:
                await self._warm_up()
            self._task = asyncio.create_task(self._run(), name="dn-writer")

    async def _warm_up(self) -> None:
        """Open the pipeline's connections and prepare its statements before the first DN.

        Otherwise the first burst after a start waits for connection set-up and planning
        (some hundred milliseconds). Best effort: a database that is down now is the
        breaker's business once DNs arrive, not a reason to refuse to start."""

        async def one() -> None:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                apg: Any = raw.driver_connection
                await apg.execute(_STORE_PG, [], [], [], [], [], [], [])  # stores nothing

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
        if self._postgres:
            await self._commit_postgres(dns, turn)
        else:
            await self._commit_sqlite(dns)  # one writer at a time: the turn ends with COMMIT

    async def _commit_postgres(self, dns: list[InboundDN], turn: _Turn | None) -> None:
        """Three round trips: BEGIN with the msgids' locks (one simple query), the batch's
        statement, COMMIT."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            apg: Any = raw.driver_connection
            committing = False
            try:
                await begin_and_store_pg(apg, dns)
                if turn is not None:
                    turn.release()  # ids drawn: the next batch may start while this commits
                committing = True
                await apg.execute("COMMIT")
            except BaseException as exc:
                if not committing:
                    with contextlib.suppress(Exception):
                        await apg.execute("ROLLBACK")
                # SQLAlchemy did not see this error: a dead connection must not go back to
                # the pool.
                if not isinstance(exc, Exception) or is_database_unavailable(exc):
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                raise

    async def _commit_sqlite(self, dns: list[InboundDN]) -> None:
        async with self._engine.begin() as conn:  # BEGIN IMMEDIATE: the one writer
            await _insert_sqlite(conn, dns)


async def begin_and_store_pg(apg: Any, dns: list[InboundDN]) -> None:
    """BEGIN, the msgids' locks and the batch's statement on an asyncpg connection, in two
    round trips; the caller commits (or rolls back). The ids are drawn when this returns."""
    # Lock before inserting: the INSERT's snapshot then sees any ref committed by a send that
    # held the lock, and a send waiting for it sees these DNs once they are committed.
    await apg.execute(begin_and_lock_sql([dn.msgid for dn in dns]))
    await apg.execute(_STORE_PG, *zip(*dns, strict=True))


async def _insert_sqlite(conn: AsyncConnection, dns: list[InboundDN]) -> None:
    msgids = sorted({dn.msgid for dn in dns})
    by_ref: dict[str, int] = {}
    for start in range(0, len(msgids), 500):
        result = await conn.execute(
            select(Message.id, Message.ref).where(Message.ref.in_(msgids[start : start + 500]))
        )
        by_ref.update({ref: mid for mid, ref in result if ref is not None})
    rows = [
        {
            "msgid": dn.msgid,
            "status": dn.status,
            "error_code": dn.error_code,
            "error_description": dn.error_description,
            "msisdn": dn.msisdn,
            "raw": dn.raw,
            "received_at": datetime.fromtimestamp(dn.received_ts, UTC),
            "message_id": by_ref.get(dn.msgid),
        }
        for dn in dns
    ]
    # executemany inserts in list order: INTEGER PRIMARY KEY ids follow arrival order.
    await conn.execute(insert(DeliveryNotification), rows)
    matched = sorted({mid for mid in (by_ref.get(dn.msgid) for dn in dns) if mid is not None})
    await refresh_messages(conn, matched)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(DNUnavailable("timed out waiting for the database"))
