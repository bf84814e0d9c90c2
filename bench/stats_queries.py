"""`GET /v1/stats` on the seeded table (run through bench/seed_messages.py --stats).

For the last 24 h and the last 30 days (both ends mid-hour, as a default `since`/`until`
is): the plan of the one statement the endpoint runs (EXPLAIN ANALYZE, BUFFERS), the median
and p95 of the whole service call (statement + summary in Python) over 50 runs, and the same
counts computed from `messages` alone, to show what the rollup saves.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.outcomes import repository as repo
from app.outcomes import stats

FROM_MESSAGES = text(
    """
SELECT date_bin(:stride, created_at, :origin) AS bucket, status, error_code, submit_code,
       currency, count(*), sum(message_stats_rate(rate))
FROM messages WHERE created_at >= :since AND created_at < :until
GROUP BY 1, 2, 3, 4, 5
"""
)


async def _explain(conn: AsyncConnection, statement: Any, params: dict[str, Any]) -> str:
    compiled = statement.bindparams(**params).compile(dialect=conn.dialect)
    values = compiled.construct_params()
    positional = tuple(values[name] for name in compiled.positiontup or ())
    result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), positional)
    return "\n".join(f"    {row[0]}" for row in result)


async def _timed(runs: int, call: Any) -> tuple[float, float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


async def bench_stats(engine: AsyncEngine, conn: AsyncConnection, newest: datetime) -> None:
    until = newest - timedelta(minutes=17, seconds=23)
    hourly = await conn.scalar(text("SELECT count(*) FROM message_stats_hourly"))
    print(f"rollup: {hourly:,} hourly rows for the whole table")
    for title, span, bucket in [
        ("last 24 h, by hour", timedelta(hours=24), "hour"),
        ("last 30 days, by day", timedelta(days=30), "day"),
        ("last 30 days, by hour", timedelta(days=30), "hour"),
    ]:
        query = stats.StatsQuery(since=until - span, until=until, bucket=bucket)  # type: ignore[arg-type]
        stride = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
        origin = stats.origin_of(query.since, query.bucket)
        params = {
            **stats.spans_of(query.since, query.until).__dict__,
            "stride": stride,
            "origin": origin,
            "api_key_name": None,
            "channel": None,
        }
        body = await stats.stats(conn, query)
        p50, p95 = await _timed(50, lambda q=query: stats.stats(conn, q))
        print(f"\n== /v1/stats {title}: {body['total']:,} messages, {len(body['series'])} buckets")
        print(f"   service call (statement + summary): median {p50:.2f} ms, p95 {p95:.2f} ms")
        print(await _explain(conn, repo._STATS, params))
        raw = {"stride": stride, "origin": origin, "since": query.since, "until": query.until}
        p50, p95 = await _timed(10, lambda r=raw: conn.execute(FROM_MESSAGES, r))
        print(f"   the same counts from messages alone: median {p50:.2f} ms, p95 {p95:.2f} ms")
        print(await _explain(conn, FROM_MESSAGES, raw))
        await conn.commit()
