"""Seed 1,000,000 messages on Postgres and show the lookup plans (EXPLAIN ANALYZE, BUFFERS).

    .venv/bin/python bench/seed_messages.py [--url postgresql+asyncpg://postgres@127.0.0.1:5432/relay_bench]
                                            [--count 1000000] [--reuse] [--stats]

Creates the database if missing, migrates it to head, fills `messages` with one
INSERT ... SELECT FROM generate_series (about 30 days of traffic, 2.6 s apart; 200,000 phones
with ~5 messages each, plus one busy phone, 60123240066, with every 100th message), ANALYZEs,
then runs the exact queries `GET /v1/messages` builds (`app.messages.lookup.message_query`)
under EXPLAIN (ANALYZE, BUFFERS) and prints each plan, then times each query through
SQLAlchemy (median of 50 runs). `--reuse` skips seeding when the table already holds `--count`
rows. `--stats`: `GET /v1/stats` instead (bench/stats_queries.py): its statement's plan and
timings for the last 24 h and 30 days, beside the same figures counted from `messages` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Select, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.messages.lookup import message_query
from app.migrate import upgrade_async
from app.models import Message
from app.pagination import Cursor

BUSY_PHONE = "60123240066"

SEED_SQL = """
INSERT INTO messages (
    send_id, api_key_name, client_ref, channel, msisdn, sender, encoding, segments, ref,
    status, submit_code, submit_desc, rate, currency, delivery_status, error_code,
    error_description, last_dn_seq, dn_count, final_at, created_at, submitted_at, updated_at)
SELECT
    md5(g::text)::uuid::text,
    CASE WHEN g % 3 = 0 THEN 'billing' ELSE 'otp' END,
    CASE WHEN g % 4 = 0 THEN 'order-' || (g / 4) END,
    CASE WHEN g % 10 = 0 THEN 'whatsapp' ELSE 'sms' END,
    CASE WHEN g % 100 = 0 THEN CAST(:busy AS text)
         ELSE '6011' || lpad(((g::bigint * 7919) % 200000)::text, 7, '0') END,
    'AEONSales', 'gsm7', 1,
    CASE WHEN s.status = 'rejected' THEN NULL ELSE 'B360-' || g END,
    s.status,
    CASE WHEN s.status = 'rejected' THEN 405 WHEN s.status = 'unknown' THEN NULL ELSE 200 END,
    CASE WHEN s.status = 'rejected' THEN 'Invalid Message Type'
         WHEN s.status = 'unknown' THEN NULL ELSE 'Success' END,
    '0.1100', 'MYR',
    CASE s.status WHEN 'delivered' THEN 'DELIVERED' WHEN 'undelivered' THEN 'UNDELIVERED' END,
    CASE s.status WHEN 'delivered' THEN '000' WHEN 'undelivered' THEN '501' END,
    CASE s.status WHEN 'delivered' THEN 'Delivered' WHEN 'undelivered' THEN 'Absent subscriber'
    END,
    NULL,
    CASE WHEN s.status IN ('delivered', 'undelivered') THEN 1 ELSE 0 END,
    CASE WHEN s.status IN ('delivered', 'undelivered') THEN t.at + interval '4 seconds' END,
    t.at,
    CASE WHEN s.status = 'unknown' THEN NULL ELSE t.at + interval '200 milliseconds' END,
    t.at
FROM generate_series(1, CAST(:count AS int)) AS g
CROSS JOIN LATERAL (
    SELECT CAST(:end_at AS timestamptz) - (CAST(:count AS int) - g) * interval '2.592 seconds'
        AS at) AS t
CROSS JOIN LATERAL (
    SELECT CASE WHEN g % 100 < 85 THEN 'delivered' WHEN g % 100 < 93 THEN 'pending'
                WHEN g % 100 < 97 THEN 'undelivered' WHEN g % 100 < 99 THEN 'rejected'
                ELSE 'unknown' END AS status) AS s
"""


async def ensure_database(url: str) -> None:
    parsed = make_url(url)
    admin = await asyncpg.connect(
        parsed.set(drivername="postgresql", database="postgres").render_as_string(
            hide_password=False
        )
    )
    try:
        exists = await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", parsed.database
        )
        if not exists:
            await admin.execute(f'CREATE DATABASE "{parsed.database}"')
    finally:
        await admin.close()


async def seed(conn: AsyncConnection, count: int, end_at: datetime) -> None:
    await conn.execute(text("TRUNCATE messages, delivery_notifications RESTART IDENTITY CASCADE"))
    started = time.perf_counter()
    await conn.execute(text(SEED_SQL), {"busy": BUSY_PHONE, "count": count, "end_at": end_at})
    await conn.commit()
    print(f"seeded {count:,} messages in {time.perf_counter() - started:.1f}s")
    await conn.execute(text("ANALYZE messages"))
    await conn.commit()
    # The statistics rollup: the seed's deltas folded, as the sweeper would.
    started = time.perf_counter()
    await conn.execute(text("SELECT 1"))  # a fresh transaction for compact's own
    await conn.commit()
    from app.outcomes.stats import compact

    assert conn.engine is not None
    folded = await compact(conn.engine)
    print(f"folded {folded:,} statistics deltas in {time.perf_counter() - started:.1f}s")


async def explain(conn: AsyncConnection, title: str, query: Select[Any]) -> None:
    compiled = query.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    positional = tuple(params[name] for name in compiled.positiontup or ())
    sql = str(compiled)
    result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, positional)
    plan = "\n".join(f"    {row[0]}" for row in result)
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        rows = (await conn.execute(query)).all()
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"\n== {title}: {len(rows)} rows, median {statistics.median(timings):.2f} ms "
        f"(p95 {sorted(timings)[47]:.2f} ms) through SQLAlchemy"
    )
    print("   " + " ".join(sql.split()))
    print(plan)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/relay_bench")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--stats", action="store_true", help="time GET /v1/stats instead")
    args = parser.parse_args()

    await ensure_database(args.url)
    await upgrade_async(args.url)
    engine = create_async_engine(args.url)
    async with engine.connect() as conn:
        have = await conn.scalar(select(func.count()).select_from(Message))
        await conn.commit()
        if not (args.reuse and have == args.count):
            end_at = datetime.fromisoformat("2026-11-24T12:00:00+00:00")
            await seed(conn, args.count, end_at)
        newest = await conn.scalar(select(func.max(Message.created_at)))
        assert newest is not None
        if args.stats:
            from stats_queries import bench_stats

            await bench_stats(engine, conn, newest)
            await engine.dispose()
            return
        light_phone = await conn.scalar(
            select(Message.msisdn).where(Message.msisdn != BUSY_PHONE).limit(1)
        )
        day_start, day_end = newest - timedelta(days=2), newest - timedelta(days=1)
        first_page = (await conn.execute(message_query(since=day_start, until=day_end))).all()
        edge = first_page[49]
        middle = (await conn.execute(select(Message).where(Message.id == args.count // 2))).one()

        await explain(
            conn, f"phone lookup, busy phone ({BUSY_PHONE})", message_query(msisdn=BUSY_PHONE)
        )
        busy_first = (await conn.execute(message_query(msisdn=BUSY_PHONE))).all()
        await explain(
            conn,
            "phone lookup, busy phone, page 2 (cursor)",
            message_query(
                msisdn=BUSY_PHONE, after=Cursor(busy_first[49].created_at, busy_first[49].id)
            ),
        )
        await explain(
            conn, f"phone lookup, typical phone ({light_phone})", message_query(msisdn=light_phone)
        )
        await explain(
            conn,
            "time-range page 1 (one day, 2 days ago)",
            message_query(since=day_start, until=day_end),
        )
        await explain(
            conn,
            "time-range page 2 (cursor)",
            message_query(since=day_start, until=day_end, after=Cursor(edge.created_at, edge.id)),
        )
        await explain(
            conn,
            "unfiltered page from a cursor half-way back",
            message_query(after=Cursor(middle.created_at, middle.id)),
        )
        await explain(conn, "status=undelivered, newest first", message_query(status="undelivered"))
        await explain(
            conn,
            "busy phone within the time range",
            message_query(msisdn=BUSY_PHONE, since=day_start, until=day_end),
        )
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
