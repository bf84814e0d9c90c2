"""Every SQL statement of status callbacks.

The events themselves are written by the database (the trigger of migration
`7c1b5e0a9d42_callback_events`); this module claims them, records attempts, and reads them for
the API. The dispatcher's statements run on a raw asyncpg connection (one round trip each);
the API's go through the request's session.

How a claim keeps the order promise (CONTRACT §4.5: per message, never an older event after a
newer one was delivered) with N processes:
- only the newest event of a message is ever sent: a due event with a newer event of the same
  message is `superseded` instead, in the claim statement itself, as are the older pending
  events (not in flight) of every message it claims;
- an event is not claimed while an older event of its message is in flight (leased), so the
  two can never race on the wire; it is claimed once that attempt is over;
- rows are taken `FOR UPDATE SKIP LOCKED`, so two processes never claim the same event, and a
  claim is a lease (`claimed_until`): a process that dies mid-attempt leaves events that any
  process claims again once the lease has passed. An attempt's result is written only if the
  lease is still the one it claimed with.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import CallbackAttempt, CallbackEvent
from app.pagination import Cursor, before

NOTIFY_CHANNEL = "callback_events"

# The settings of the dispatcher's connections (claims, results).
# - synchronous_commit off: a claim or a result lost with the last milliseconds of WAL in a
#   server crash means the event is attempted again (at least once, as promised); not waiting
#   for a WAL flush per claim and per batch of results is what lets one process keep up with a
#   burst. The events themselves are committed by the change's own transaction, with the
#   database's durability.
# - every statement planned for the table as it is now, never a cached generic plan: one made
#   while callback_events was empty (a relay at rest) scanned and sorted every pending event in
#   each claim once a burst came (36 s a claim of 16 with 3,000 pending, before the claim's
#   superseding step took its ids as an array; 29 ms after), and took 20.5 ms a claim of ~20 in
#   a steady flow. Planned each time: 3.1-3.7 ms, against 2.6 ms for a generic plan made on
#   fresh statistics (the machine 3-4x slower than usual; throw-away database, 40,000 messages).
SERVER_SETTINGS = {"synchronous_commit": "off", "plan_cache_mode": "force_custom_plan"}

# $1 how many, $2 the lease in seconds, $3 the origins (`scheme://host:port`) that have their
# share of this process's attempts in flight: their events wait in the table. Returns what the
# body needs (the event's snapshot and the message's fields that never change) and the lease to
# present with the result; always at least one row, with `superseded` (how many events this
# claim superseded) and the claimed event's columns (NULL when none).
CLAIM_SQL = """
WITH due AS (
    SELECT id, message_id FROM callback_events
    WHERE state = 'pending' AND next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM unnest($3::text[]) AS full_(origin)
                      WHERE starts_with(url, full_.origin))
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), judged AS (
    SELECT d.id, d.message_id,
        EXISTS (SELECT 1 FROM callback_events n
                WHERE n.message_id = d.message_id AND n.id > d.id) AS stale,
        EXISTS (SELECT 1 FROM callback_events b  -- only a pending event has a lease
                WHERE b.message_id = d.message_id AND b.id < d.id
                  AND b.claimed_until > now()) AS busy
    FROM due d
), superseded AS (
    -- Per claimed message through (message_id, id), its state checked on the row: a state
    -- condition inside would let the planner scan the partial due index, whose dead entries
    -- (events sent since the last vacuum) made each claim of a 20,000-event burst O(burst).
    -- The ids come as one array (computed once), looked up by primary key: as `s.id IN
    -- (...)`, statistics taken while the table was empty had the planner scan every pending
    -- event and run the subquery for each (218 ms a claim with 3,000 pending, quadratic).
    UPDATE callback_events s
    SET state = 'superseded', next_attempt_at = NULL, claimed_until = NULL
    WHERE s.state = 'pending' AND s.id = ANY (ARRAY(
        SELECT o.id
        FROM (SELECT DISTINCT message_id FROM judged) AS j,
             LATERAL (SELECT x.id FROM callback_events x
                      WHERE x.message_id = j.message_id
                        AND (x.claimed_until IS NULL OR x.claimed_until <= now())
                        AND EXISTS (SELECT 1 FROM callback_events n
                                    WHERE n.message_id = x.message_id AND n.id > x.id)
                      FOR UPDATE SKIP LOCKED) AS o))
    RETURNING s.id
), claimed AS (
    UPDATE callback_events c
    SET claimed_until = now() + make_interval(secs => $2),
        next_attempt_at = now() + make_interval(secs => $2),
        attempts = c.attempts + 1
    FROM judged j
    WHERE c.id = j.id AND NOT j.stale AND NOT j.busy
    RETURNING c.*
)
SELECT c.id, c.message_id, c.version, c.url, c.ref, c.status, c.submit_code,
       c.delivery_status, c.error_code, c.error_description, c.dn_count, c.submitted_at,
       c.final_at, c.recorded_at, c.attempts, c.claimed_until,
       m.send_id, m.msisdn, m.channel, m.client_ref, m.api_key_name,
       (SELECT count(*) FROM superseded) AS superseded, (SELECT count(*) FROM due) AS due
FROM (SELECT 1) AS one  -- one row even when nothing is claimed: the counts
LEFT JOIN (claimed c JOIN messages m ON m.id = c.message_id) ON true
"""

# Statistics for the claim's planner: taken when a claim meets a backlog (`dispatcher`), so
# that a burst which found callback_events empty (as autovacuum last saw it) is claimed with
# plans for its real size; autovacuum may take a minute to get there.
ANALYZE_SQL = "ANALYZE callback_events"

# Attempt results, many at once: the attempt rows, and each event's new state where its lease
# is still ours. $1 ids, $2 leases, $3 states, $4 next attempt times, $5 status codes,
# $6 errors, $7 attempt times, $8 durations (ms).
RECORD_RESULTS_SQL = """
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::timestamptz[],
                         $5::int[], $6::text[], $7::timestamptz[], $8::float8[])
         AS r(id, lease, state, next_at, code, error, attempted_at, duration_ms)
), attempts AS (
    INSERT INTO callback_attempts (event_id, attempted_at, status_code, error, duration_ms)
    SELECT r.id, r.attempted_at, r.code, r.error, r.duration_ms
    FROM r JOIN callback_events e ON e.id = r.id  -- gone if retention deleted its message
)
UPDATE callback_events e
SET state = r.state, next_attempt_at = r.next_at, claimed_until = NULL,
    last_status_code = r.code, last_error = r.error,
    delivered_at = CASE WHEN r.state = 'delivered' THEN r.attempted_at END
FROM r
WHERE e.id = r.id AND e.claimed_until = r.lease
RETURNING e.id, e.state, extract(epoch FROM e.recorded_at)::float8
"""

# Queue depth and the age of the oldest pending event (the partial index holds only pending).
QUEUE_STATS_SQL = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8
FROM callback_events WHERE state = 'pending'
"""


# ---- the API (a request's session) ------------------------------------------------------------


@dataclass(frozen=True)
class EventFilters:
    state: str | None = None
    message_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_query(filters: EventFilters, after: Cursor | None, limit: int) -> Select[Any]:
    """Newest first by (recorded_at, id), one row more than asked (is there a next page?).

    `state` and no filter walk their `(…, recorded_at, id)` index; `message_id` reads the few
    events of one message through `(message_id, id)`."""
    query = select(CallbackEvent)
    if filters.state is not None:
        query = query.where(CallbackEvent.state == filters.state)
    if filters.message_id is not None:
        query = query.where(CallbackEvent.message_id == filters.message_id)
    if filters.since is not None:
        query = query.where(CallbackEvent.recorded_at >= filters.since)
    if filters.until is not None:
        query = query.where(CallbackEvent.recorded_at < filters.until)
    if after is not None:
        query = query.where(before(CallbackEvent.recorded_at, CallbackEvent.id, after))
    return query.order_by(CallbackEvent.recorded_at.desc(), CallbackEvent.id.desc()).limit(
        limit + 1
    )


async def list_events(
    session: AsyncSession, filters: EventFilters, after: Cursor | None, limit: int
) -> list[CallbackEvent]:
    return list(await session.scalars(list_query(filters, after, limit)))


async def events_of_message(session: AsyncSession, message_id: int) -> list[CallbackEvent]:
    """Every event of one message, oldest first."""
    return list(
        await session.scalars(
            select(CallbackEvent)
            .where(CallbackEvent.message_id == message_id)
            .order_by(CallbackEvent.id)
        )
    )


async def attempts_of_events(
    session: AsyncSession, event_ids: list[int]
) -> dict[int, list[CallbackAttempt]]:
    """The attempts of these events, oldest first, by event id."""
    found: dict[int, list[CallbackAttempt]] = {i: [] for i in event_ids}
    if event_ids:
        rows = await session.scalars(
            select(CallbackAttempt)
            .where(CallbackAttempt.event_id.in_(event_ids))
            .order_by(CallbackAttempt.event_id, CallbackAttempt.id)
        )
        for attempt in rows:
            found[attempt.event_id].append(attempt)
    return found


async def get_event(session: AsyncSession, event_id: int) -> CallbackEvent | None:
    return await session.get(CallbackEvent, event_id)


async def requeue(session: AsyncSession, event_id: int) -> bool:
    """A failed or gone event pending again, due now, with a fresh retry schedule (its past
    attempts stay in `callback_attempts`); the dispatchers are woken at COMMIT. False when the
    event is in neither state (any more)."""
    result = await session.execute(
        update(CallbackEvent)
        .where(CallbackEvent.id == event_id, CallbackEvent.state.in_(("failed", "gone")))
        .values(
            state="pending",
            attempts=0,
            next_attempt_at=func.now(),
            claimed_until=None,
            delivered_at=None,
        )
        .returning(CallbackEvent.id)
    )
    if result.scalar_one_or_none() is None:
        return False
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return True
