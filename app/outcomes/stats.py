"""`GET /v1/stats` (CONTRACT §4.6): how the messages sent in a time range are doing.

Counted by each message's creation time and *current* state (a DN arriving today updates
yesterday's figures), from an hourly rollup kept beside `messages`:

- Statement-level triggers on `messages` (migration a56388084027) append, per statement, one
  signed row per (hour, API key, channel, status, DN error code, submit code, currency) whose
  count or spend the statement changed: a DN batch of 500 moving messages from pending to
  delivered appends a handful of rows. Writers only ever INSERT deltas: no shared counter row,
  so concurrent DN batches and sends never wait for each other here.
- The sweeper folds the deltas into `message_stats_hourly` every SWEEP_INTERVAL_S (one
  replica at a time, an advisory lock); a query adds the deltas not folded yet, so figures are
  exact and current, not a sweep behind.
- A query reads whole UTC hours from the rollup and the partial hours at either end of
  [since, until) from `messages` through ix_messages_created_at_id: at most two hours of rows.

Why a rollup (bench/seed_messages.py --stats, 1,000,000 messages over 30 days, README
"Statistics"): counted from `messages` through its (created_at, id) index, the last 24 h
(33,333 rows) took 212 ms and 30 days 1,677 ms, growing with traffic; from the rollup the
statement took 4.3 ms and 15.9 ms (10,081 hourly rows for the whole table: hours x keys,
whatever the traffic), the whole call 9.9 and 28.4 ms p50 on a loaded machine. The writers
pay one small INSERT per statement: 0.6-0.7 ms for a 128-row DN-batch UPDATE (against 30-100
ms for the UPDATE itself; ~7 ms on a connection's first call, which plans it), 13 ms for a
1,000-row expiry batch.

Buckets are UTC hours, or days starting at midnight at the offset of `since` (rounded down to
a whole hour for offsets such as +05:30), so a Malaysian caller's `since=…+08:00` gets
Malaysian days; the first and last buckets hold only what falls inside [since, until).

Spend is what the provider charged: the sum of `rate` (its "charge for each MSISDN") over the
messages it accepted (pending, delivered, undelivered, expired), per currency. Rejected
messages were not sent; `unknown` ones may or may not have been, and carry no rate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.bulk360.codes import (
    ErrorCategory,
    describe_error_code,
    message_error_category,
    normalise_error_code,
    submit_description,
)
from app.errors import AppError
from app.outcomes import repository as repo
from app.outcomes.repository import StatsRow, StatsSpans
from app.vocabulary import MessageStatus

Bucket = Literal["hour", "day"]
STATS_LOCK = "sweep:stats"
DEFAULT_RANGE = timedelta(hours=24)
MAX_BUCKETS = 2_000  # 83 days by the hour; a longer range asks for days
TOP_ERROR_CODES = 10
CHARGED_STATUSES = frozenset(
    {
        MessageStatus.PENDING,
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
        MessageStatus.EXPIRED,
    }
)
_HOUR = timedelta(hours=1)
_STRIDES = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


async def compact(engine: AsyncEngine) -> int:
    """Fold the rollup's deltas (the sweeper); 0 when another replica is doing it."""
    async with engine.begin() as conn:
        if not await repo.try_lock(conn, STATS_LOCK):
            return 0
        return await repo.compact_stats(conn)


@dataclass(frozen=True)
class StatsQuery:
    since: datetime
    until: datetime
    bucket: Bucket
    api_key_name: str | None = None
    channel: str | None = None


def resolve_range(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """Defaults: until now, since 24 h before until. AppError 422 unless since < until."""
    until = until or now
    since = since or until - DEFAULT_RANGE
    if since >= until:
        raise AppError(
            422,
            "validation_error",
            f"since: must be before until (got since={since.isoformat()!r}, "
            f"until={until.isoformat()!r})",
        )
    return since, until


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(at: datetime) -> datetime:
    floor = _floor_hour(at)
    return floor if floor == at else floor + _HOUR


def origin_of(since: datetime, bucket: Bucket) -> datetime:
    """Where the buckets start: the UTC hour of `since`, or midnight at its offset."""
    if bucket == "hour":
        return _floor_hour(since)
    return _floor_hour(since.replace(hour=0, minute=0, second=0, microsecond=0))


def spans_of(since: datetime, until: datetime) -> StatsSpans:
    hours_from, hours_to = _ceil_hour(since), _floor_hour(until)
    if hours_from >= hours_to:  # inside one or two partial hours: all from the messages
        return StatsSpans(until, until, since, until, until, until)
    return StatsSpans(hours_from, hours_to, since, hours_from, hours_to, until)


async def stats(conn: AsyncConnection, query: StatsQuery) -> dict[str, Any]:
    stride = _STRIDES[query.bucket]
    origin = origin_of(query.since, query.bucket)
    starts = _bucket_starts(origin, query.until, stride)
    rows = await repo.stats_rows(
        conn,
        spans_of(query.since, query.until),
        stride=stride,
        origin=origin,
        api_key_name=query.api_key_name,
        channel=query.channel,
    )
    return summarise(rows, query, starts)


def _bucket_starts(origin: datetime, until: datetime, stride: timedelta) -> list[datetime]:
    count = -(-(until - origin) // stride)  # ceil
    if count > MAX_BUCKETS:
        raise AppError(
            422,
            "validation_error",
            f"bucket: {count} buckets in this range, at most {MAX_BUCKETS} (use bucket=day "
            "or a shorter range)",
        )
    return [origin + i * stride for i in range(count)]


def summarise(rows: list[StatsRow], query: StatsQuery, starts: list[datetime]) -> dict[str, Any]:
    by_status: Counter[str] = Counter({str(status): 0 for status in MessageStatus})
    by_category: Counter[str] = Counter({category.value: 0 for category in ErrorCategory})
    codes: Counter[tuple[str, str, str]] = Counter()
    spend: dict[str, Decimal] = {}
    series = {start: Counter({str(status): 0 for status in MessageStatus}) for start in starts}
    for row in rows:
        by_status[row.status] += row.messages
        category = message_error_category(row.status, row.error_code, row.submit_code)
        by_category[category.value] += row.messages
        code = _deciding_code(row, category)
        if code is not None:
            codes[(*code, category.value)] += row.messages
        if row.status in CHARGED_STATUSES and row.currency and row.spend:
            spend[row.currency] = spend.get(row.currency, Decimal(0)) + row.spend
        series[row.bucket.astimezone(UTC)][row.status] += row.messages
    settled = by_status["delivered"] + by_status["undelivered"] + by_status["expired"]
    return {
        "since": query.since.astimezone(UTC),
        "until": query.until.astimezone(UTC),
        "total": sum(by_status.values()),
        "by_status": dict(by_status),
        "delivery_rate": round(by_status["delivered"] / settled, 4) if settled else None,
        "by_error_category": dict(by_category),
        "top_error_codes": [
            {"code": code, "description": description, "category": category, "count": n}
            for (code, description, category), n in sorted(
                codes.items(), key=lambda item: (-item[1], item[0])
            )[:TOP_ERROR_CODES]
        ],
        "spend": [
            {"currency": currency, "amount": str(amount)}
            for currency, amount in sorted(spend.items())
        ],
        "series": [
            {"start": start, "total": sum(counts.values()), **counts}
            for start, counts in series.items()
        ],
    }


def _deciding_code(row: StatsRow, category: ErrorCategory) -> tuple[str, str] | None:
    """(code, description) of the code behind a message's error category: the submit code
    of a rejected message, else its last DN's; None when nothing failed or no code says why."""
    if category is ErrorCategory.NONE:
        return None
    if row.status == "rejected":
        if row.submit_code is None:
            return None
        return str(row.submit_code), submit_description(row.submit_code)
    code = normalise_error_code(row.error_code)
    if code is None:
        return None
    return code, describe_error_code(code) or ""
