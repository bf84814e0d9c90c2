"""The callback dispatcher: one per serve process, coordinated only through PostgreSQL.

Events are written by the database in the transaction of the change they report (the trigger
of migration `callback_events`), which then NOTIFYs `callback_events` at COMMIT. Here:

1. a dedicated asyncpg connection LISTENs for that wake-up (a new event is claimed within a
   round trip of its commit); a poll every `POLL_S` finds what no wake-up announces: retries
   scheduled by other processes, leases of a dead process that ran out; this process's own
   retries wake it on time through a heap of due times;
2. one statement claims up to the free attempt slots (`repository.CLAIM_SQL`: SKIP LOCKED, a
   lease, the newest event of a message only, older ones superseded);
3. each claimed event is one task: the body built from the event's snapshot, signed per
   Standard Webhooks with every secret, POSTed on one long-lived aiohttp session with
   `CALLBACK_TIMEOUT_S`; 2xx → delivered, 410 → gone, anything else → pending again after the
   next delay of `CALLBACK_RETRY_S` (+0-10% jitter, or the 429/503 `Retry-After` when longer),
   or failed when the schedule is used up;
4. results are written in batches (`RECORD_RESULTS_SQL`: the attempt rows and the new states,
   one statement for whatever finished meanwhile), only where the lease is still ours.

DN ingest comes first: while DNs pour in (`ingest_busy`: the DN writer's `busy`), one claim
per `YIELD_S` of `YIELD_CLAIM_MAX` events at most (64 a second). Measured with
bench/dn_ingest.py --callbacks: delivering as fast as possible doubled the relay's CPU per DN
(0.097 -> 0.188 ms: an aiohttp request costs more than ingesting a DN) and took DN ingest from
3.1x to 1.8x the naive baseline; with no claim at all during the burst it ran ~4% faster than
with this trickle (alternating runs), not worth callbacks waiting out a whole burst. The
callbacks are as durable waiting in the table, and go out at full speed once the burst is over.

A slow or dead receiver cannot hold the others up: every attempt is bounded by the timeout,
and one receiver (scheme, host and port) has about half of the slots in flight at most: claims
skip the events of a receiver at its share, which wait in the table (the share is soft by less
than one claim, a quarter of the slots).

Failures: the database away → claims and result writes wait and retry (results are kept in
memory meanwhile; if the process dies first, the leases run out and the events are attempted
again: delivery is at least once). A dead LISTEN connection is reconnected from the loop; the
poll covers the gap. At stop, in-flight attempts get up to the timeout to finish and their
results are written; an attempt cut short leaves its lease to run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import structlog
from sqlalchemy.engine import make_url

from app.callbacks.attempt import NoLinkLocalResolver, Outcome, next_state, post
from app.callbacks.attempt import origin as receiver_origin
from app.callbacks.repository import (
    ANALYZE_SQL,
    CLAIM_SQL,
    NOTIFY_CHANNEL,
    QUEUE_STATS_SQL,
    RECORD_RESULTS_SQL,
    SERVER_SETTINGS,
)
from app.callbacks.service import event_body, url_host
from app.callbacks.signing import secret_key, webhook_headers
from app.config import Settings
from app.db import utcnow
from app.errors import is_database_unavailable
from app.ops.metrics import (
    CALLBACK_ATTEMPTS,
    CALLBACK_EVENTS,
    CALLBACK_LATENCY,
    CALLBACK_OLDEST_PENDING,
    CALLBACK_QUEUE_DEPTH,
    labelled,
)

log = structlog.get_logger("app.callbacks")

POLL_S = 1.0  # the fallback poll; new events come with a NOTIFY
STATS_S = 5.0  # queue depth / oldest pending age refresh
DB_RETRY_S = 1.0
ANALYZE_EVERY_S = 60.0  # at most this often, when a claim meets a backlog
YIELD_S = 0.25  # while the DN hook is busy, one claim this often at most
YIELD_CLAIM_MAX = 16  # ... of this many events at most


@dataclass(slots=True)
class _Result:
    id: int
    lease: datetime
    state: str
    next_at: datetime | None
    code: int | None
    error: str | None
    attempted_at: datetime
    duration_ms: float


class CallbackDispatcher:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        ingest_busy: Callable[[], bool] | None = None,
    ) -> None:
        self._ingest_busy = ingest_busy
        self._dsn = make_url(database_url).set(drivername="postgresql")
        self._keys = [secret_key(s) for s in settings.callback_secrets]
        self._timeout = settings.callback_timeout_s
        self._schedule = settings.callback_retry_schedule
        # Past the lease another process may attempt the event again: it must outlast an
        # attempt (the timeout) and the wait for the result's write.
        self._lease_s = 2 * self._timeout + 2
        self._slots = settings.callback_concurrency
        self._origin_slots = max(1, self._slots // 2)
        self._claim_max = max(1, self._slots // 4)
        self._claim_min = max(1, self._slots // 8)
        self._last_claim = 0.0
        self.poll_s = POLL_S
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._by_origin: Counter[str] = Counter()
        self._retry_at: list[float] = []  # loop times of this process's scheduled retries
        self._attempts: set[asyncio.Task[None]] = set()
        self._results: list[_Result] = []
        self._results_ready = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._conns: dict[str, Any] = {}  # role -> asyncpg.Connection
        self._listener: Any = None  # asyncpg.Connection
        self._analyze_after = 0.0
        self._listener_retry_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._slots, resolver=NoLinkLocalResolver()),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._run(), name="callbacks-claim"),
            asyncio.create_task(self._write_results(), name="callbacks-results"),
        ]

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._tasks:
            await self._tasks[0]
        if self._attempts:  # bounded by the attempt timeout
            await asyncio.wait(set(self._attempts), timeout=self._timeout + 1)
            for task in self._attempts:
                task.cancel()  # its lease runs out; the event is attempted again
            await asyncio.gather(*self._attempts, return_exceptions=True)
        self._results_ready.set()
        if self._tasks:
            await self._tasks[1]
        self._tasks = []
        if self._session is not None:
            await self._session.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    # ---- wake-ups --------------------------------------------------------------------------

    async def _listen(self) -> None:
        """(Re)connect the LISTEN connection; best effort, the poll covers its absence."""
        self._listener_retry_at = time.monotonic() + 5
        try:
            conn = await asyncpg.connect(self._dsn.render_as_string(hide_password=False), timeout=5)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("callbacks_listen_failed", error=type(exc).__name__)
            return
        self._listener = conn
        self._wake.set()  # events may have committed while nobody listened

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def _wait(self, at_most: float | None) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._retry_at and self._retry_at[0] <= now:
            heapq.heappop(self._retry_at)
        timeout = at_most or self.poll_s
        if self._retry_at:
            timeout = min(timeout, self._retry_at[0] - now + 0.001)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # ---- claiming --------------------------------------------------------------------------

    async def _run(self) -> None:
        next_stats = 0.0
        while not self._closing:
            self._wake.clear()  # before the claim: a NOTIFY during it wakes the next wait
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_S
                await self._refresh_stats()
            if (
                self._listener is None or self._listener.is_closed()
            ) and time.monotonic() >= self._listener_retry_at:
                await self._listen()
            free = self._slots - self._in_flight
            now = time.monotonic()
            busy = self._ingest_busy is not None and self._ingest_busy()
            if busy and now < self._last_claim + YIELD_S:
                await asyncio.sleep(self._last_claim + YIELD_S - now)
                continue
            if busy:
                free = min(free, YIELD_CLAIM_MAX)
            # Attempts finishing free slots one at a time: gather a few before paying a
            # round trip, unless nothing is in flight or the last claim was a while ago.
            gather = self._in_flight and free < self._claim_min and now < self._last_claim + 0.02
            if free > 0 and not gather:
                self._last_claim = now
                try:
                    claimed = await self._claim(free)
                except Exception as exc:
                    self._log_db_error("callbacks_claim_failed", exc)
                    await asyncio.sleep(DB_RETRY_S)
                    continue
                if claimed >= free:
                    continue  # maybe more due: claim again at once
            await self._wait(0.02 if gather else None)

    async def _claim(self, free: int) -> int:
        # A receiver at its share is left out of the claim. The share is soft by less than one
        # claim (`_claim_max`): what a claim returns for a receiver below it is all attempted.
        full = [origin for origin, n in self._by_origin.items() if n >= self._origin_slots]
        limit = min(free, self._claim_max)
        async with self._connection("claim") as apg:
            rows = await apg.fetch(CLAIM_SQL, limit, self._lease_s, full)
            if rows[0]["due"] >= limit and time.monotonic() >= self._analyze_after:
                self._analyze_after = time.monotonic() + ANALYZE_EVERY_S
                await apg.execute(ANALYZE_SQL)  # a backlog: see repository.ANALYZE_SQL
        if rows[0]["superseded"]:
            labelled(CALLBACK_EVENTS, "superseded").inc(rows[0]["superseded"])
        claimed = [row for row in rows if row["id"] is not None]
        for row in claimed:
            origin = receiver_origin(row["url"])
            self._in_flight += 1
            self._by_origin[origin] += 1
            task = asyncio.create_task(self._attempt(row, origin))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
        # More may be due when the claim's due set was full and it got somewhere (claimed or
        # superseded events): after a DN burst most due events are older versions, superseded
        # rather than claimed, and waiting for the next poll between claims took minutes to
        # drain 10,000 events. Without progress (every due event waits for an older one in
        # flight), the next claim waits for a slot or a NOTIFY.
        if rows[0]["due"] >= limit and (claimed or rows[0]["superseded"]):
            return free
        return len(claimed)

    # ---- one attempt -----------------------------------------------------------------------

    async def _attempt(self, event: Any, origin: str) -> None:
        assert self._session is not None
        body = event_body(event)
        headers = webhook_headers(self._keys, f"msg_{event['id']}", int(time.time()), body)
        attempted_at = utcnow()
        try:
            outcome = await post(self._session, event["url"], body, headers)
        finally:
            self._in_flight -= 1
            self._by_origin[origin] -= 1
            self._wake.set()  # a slot is free
        state, delay = next_state(event["attempts"], outcome, self._schedule)
        next_at = None
        if delay is not None:
            next_at = attempted_at + timedelta(seconds=outcome.duration_s + delay)
            heapq.heappush(self._retry_at, asyncio.get_running_loop().time() + delay)
        self._results.append(
            _Result(
                event["id"],
                event["claimed_until"],
                state,
                next_at,
                outcome.code,
                outcome.error,
                attempted_at,
                outcome.duration_s * 1000,
            )
        )
        self._results_ready.set()
        self._report(event, outcome, state, delay, attempted_at)

    @staticmethod
    def _report(
        event: Any, outcome: Outcome, state: str, delay: float | None, attempted_at: datetime
    ) -> None:
        """Metrics and the log line of one attempt (the receiver's host only, never its URL)."""
        labelled(CALLBACK_ATTEMPTS, outcome.label).inc()
        labelled(CALLBACK_EVENTS, "retry" if state == "pending" else state).inc()
        host = url_host(event["url"])
        if state == "delivered":
            recorded: datetime = event["recorded_at"]
            waited = (attempted_at - recorded).total_seconds() + outcome.duration_s
            CALLBACK_LATENCY.observe(waited)
            log.debug("callback_delivered", event_id=event["id"], host=host, status=outcome.code)
            return
        log.info(
            "callback_attempt_failed",
            event_id=event["id"],
            message_id=event["message_id"],
            host=host,
            attempt=event["attempts"],
            status=outcome.code,
            error=outcome.error,
            next_state=state,
            retry_in_s=round(delay, 3) if delay is not None else None,
        )

    # ---- results ---------------------------------------------------------------------------

    async def _write_results(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            if self._results:
                batch, self._results = self._results, []
                try:
                    await self._record(batch)
                except Exception as exc:
                    self._log_db_error("callbacks_results_not_written", exc)
                    if is_database_unavailable(exc) and not self._closing:
                        self._results[:0] = batch  # kept; written once the database is back
                        await asyncio.sleep(DB_RETRY_S)
                        self._results_ready.set()
                        continue
                self._wake.set()  # a message's next event may be claimable now
            if self._closing and not self._attempts and not self._results:
                return

    async def _record(self, batch: list[_Result]) -> None:
        async with self._connection("results") as apg:
            await apg.execute(
                RECORD_RESULTS_SQL,
                [r.id for r in batch],
                [r.lease for r in batch],
                [r.state for r in batch],
                [r.next_at for r in batch],
                [r.code for r in batch],
                [r.error for r in batch],
                [r.attempted_at for r in batch],
                [r.duration_ms for r in batch],
            )

    # ---- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, role: str) -> AsyncIterator[Any]:
        """The claim loop's or the result writer's own connection, (re)opened on demand."""
        conn = self._conns.get(role)
        if conn is None or conn.is_closed():
            conn = self._conns[role] = await asyncpg.connect(
                self._dsn.render_as_string(hide_password=False),
                timeout=5,
                command_timeout=30,
                server_settings=SERVER_SETTINGS,
            )
        try:
            yield conn
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                conn.terminate()  # cut mid-statement: never reuse it half-way
            raise

    async def _refresh_stats(self) -> None:
        try:
            async with self._connection("claim") as apg:
                depth, oldest = await apg.fetchrow(QUEUE_STATS_SQL)
        except Exception as exc:
            self._log_db_error("callbacks_stats_failed", exc)
            return
        CALLBACK_QUEUE_DEPTH.set(depth)
        CALLBACK_OLDEST_PENDING.set(oldest)

    @staticmethod
    def _log_db_error(event: str, exc: Exception) -> None:
        if is_database_unavailable(exc):
            log.warning(event, error=type(exc).__name__)
        else:
            log.error(event, error=type(exc).__name__, exc_info=exc)
