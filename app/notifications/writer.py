"""The DN writer: group commit for the DN hook.

Each hook request validates its DN, hands it to `DNWriter.store()` and awaits the COMMIT of
the transaction that holds it; only then is it answered 200. One writer task per process
takes whatever has queued up (at most `DN_BATCH_MAX` DNs) and writes it in one transaction,
so under load one fsync covers hundreds of DNs instead of one.

That transaction is one call of the database function `dn_store_batch`, sent outside BEGIN
so that its COMMIT comes in the same round trip (`repository.STORE_FUNCTION`): it takes the
advisory locks of every msgid (exclusive) and of its suffix cuts (shared), in key order (the
locks the send path takes on a ref it records, so a DN and its message never race); inserts
the DNs in arrival order, drawing ids (the receipt sequence) and setting `message_id` from
`messages.ref` (the msgid, else its longest cut candidate: see `app.delivery`); and moves the
matched messages to the newest DN of the batch (only forward), their DN count increased by
the batch's.

Failures:
- queue full, writer stopping, or the database recently failed (the breaker is open for
  `BREAKER_OPEN_S`, then the next batch probes it) -> `DNUnavailable` at once, the hook answers
  503 and the sender retries;
- a wait longer than `DN_ACK_TIMEOUT_S` -> `DNUnavailable` (the DN may still commit: a retry
  then stores a duplicate, which is harmless; a 200 for an unstored DN never happens);
- a batch failing for another reason is retried one DN per transaction, so one bad row cannot
  fail its neighbours; a DN that fails alone raises `DNStoreError`.

Two batches may be in flight, and they never share a lock key: a DN whose msgid (or one of
its cuts) is in a batch in flight waits in the queue for the next batch, with every later DN
meeting its keys (`_take_batch`). So per msgid, ids follow arrival order; across msgids, a
later batch may draw lower ids than an earlier one still in flight. (A batch retried row by
row after a non-database failure is the exception: those rows get ids after DNs that arrived
later.)

The writer goes through asyncpg directly, on a connection checked out of SQLAlchemy's pool per
batch (`db.pooled_asyncpg`, as the send path) rather than one held for ever: the checkout costs
little per batch (~2 us per DN at the batch sizes seen under load), and buys the pool's
replacement of connections killed by a database restart (`db.create_engine` checks asyncpg's
`is_closed()` at checkout).
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import pooled_asyncpg
from app.delivery import dn_lock_keys
from app.errors import is_database_unavailable
from app.notifications.repository import EMPTY_BATCH, STORE_BATCH, store_batch
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

# A batch this big means DNs are pouring in: `busy` says so for BUSY_S after it (the status
# callbacks' dispatcher holds back meanwhile). At 2,000 DN/s batches hold ~16 DNs here; near
# the writer's capacity, 50-130.
BUSY_BATCH = 32
BUSY_S = 1.0

# Batches in flight at once: while one commits, the next locks and inserts, so
# neither the event loop nor the database sits idle waiting for the other. Batches in flight
# share no lock key (`_take_batch`).
PIPELINE = 2


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
        self._busy_until = 0.0
        self._slots = asyncio.Semaphore(PIPELINE)
        # The lock keys of each batch in flight (its msgids', its cuts'): `_take_batch`.
        self._batches: dict[asyncio.Task[None], tuple[set[int], set[int]]] = {}

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """DNs in the transaction being written now."""
        return self._in_flight

    @property
    def busy(self) -> bool:
        """Whether DNs are pouring in: a batch of `BUSY_BATCH` DNs or more was taken within the
        last `BUSY_S`, or as many wait now."""
        return (
            self._in_flight + len(self._pending) >= BUSY_BATCH
            or asyncio.get_running_loop().time() < self._busy_until
        )

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
                await apg.execute(STORE_BATCH, EMPTY_BATCH)  # stores nothing

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
                batch, keys = self._take_batch()
                DN_QUEUE_DEPTH.set(len(self._pending))
                if not batch:
                    self._slots.release()
                    if self._pending:  # each DN left waits for a batch in flight
                        await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._in_flight += len(batch)
                if len(batch) >= BUSY_BATCH:
                    self._busy_until = asyncio.get_running_loop().time() + BUSY_S
                task = asyncio.create_task(self._write(batch, keys))
                self._batches[task] = ({k[0] for k in keys}, {c for k in keys for c in k[1:]})
                task.add_done_callback(self._batch_done)
            DN_QUEUE_DEPTH.set(0)
            if self._closing:
                await asyncio.gather(*self._batches, return_exceptions=True)
                if not self._pending:
                    return

    def _take_batch(self) -> tuple[list[_Item], list[tuple[int, ...]]]:
        """The next batch (at most `DN_BATCH_MAX` DNs, in arrival order) and its DNs' lock
        keys (`delivery.dn_lock_keys`: the msgid's, exclusive, then its cuts', shared).

        A DN whose locks would wait for a batch in flight (its msgid's key among that batch's
        keys, or a cut's key among its msgids') stays queued for a later batch, and so does
        every later DN of its msgid: per msgid, DNs are stored in arrival order, so their ids
        follow it. Across msgids, a later batch may draw lower ids than an earlier one still
        in flight. Callers that timed out (future done) were answered 503: dropped."""
        busy_all: set[int] = set()
        busy_msgids: set[int] = set()
        for msgid_keys, cut_keys in self._batches.values():
            busy_all |= msgid_keys
            busy_all |= cut_keys
            busy_msgids |= msgid_keys
        # The same two sets for the DNs left queued, which later DNs must not overtake.
        held_all: set[int] = set()
        held_msgids: set[int] = set()
        batch: list[_Item] = []
        keys: list[tuple[int, ...]] = []
        left: list[_Item] = []
        pending = self._pending
        taken = len(pending)
        for index, item in enumerate(pending):
            if len(batch) >= self._batch_max:
                taken = index
                break
            if item[1].done():
                continue
            dn_keys = dn_lock_keys(item[0].msgid)
            if _meets(dn_keys, busy_all, busy_msgids) or _meets(dn_keys, held_all, held_msgids):
                left.append(item)
                held_all.update(dn_keys)
                held_msgids.add(dn_keys[0])
            else:
                batch.append(item)
                keys.append(dn_keys)
        self._pending = left + pending[taken:]
        return batch, keys

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.pop(task, None)
        self._slots.release()
        if self._pending:
            self._wakeup.set()

    async def _write(self, batch: list[_Item], keys: list[tuple[int, ...]]) -> None:
        try:
            await self._write_batch(batch, keys)
        except Exception as exc:  # a bug: answer rather than leave callers waiting
            log.error("dn_writer_error", error=type(exc).__name__, exc_info=exc)
            self._fail(batch, DNStoreError(type(exc).__name__))
        finally:
            self._in_flight -= len(batch)

    async def _write_batch(self, batch: list[_Item], keys: list[tuple[int, ...]]) -> None:
        started = time.perf_counter()
        try:
            await self._commit([dn for dn, _ in batch], keys)
        except Exception as exc:
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

    async def _commit(self, dns: list[InboundDN], keys: list[tuple[int, ...]] | None) -> None:
        """One round trip: the batch's function, outside BEGIN, so its COMMIT comes with it.
        If the connection fails before the answer, the batch may have committed: its callers
        get 503 and their retries store duplicates, which are harmless."""
        # `pooled_asyncpg` discards the connection if it died.
        async with pooled_asyncpg(self._engine) as apg:
            await store_batch(apg, dns, keys)


def _meets(dn_keys: tuple[int, ...], all_keys: set[int], msgid_keys: set[int]) -> bool:
    """Whether a DN's locks (`dn_keys`) would wait for locks held on `all_keys`, of which
    `msgid_keys` exclusive: its msgid's lock waits for any, its cuts' for an exclusive one."""
    return dn_keys[0] in all_keys or not msgid_keys.isdisjoint(dn_keys)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(DNUnavailable("timed out waiting for the database"))
