"""The console's pages on 1,000,000 messages: time each page as the app serves it.

    .venv/bin/python bench/console.py [--count 1000000] [--runs 50] [--keep]

Creates a throw-away database on BENCH_DATABASE_URL's server (default the local Postgres),
seeds `--count` messages with `seed_messages.py`'s generator ending now (30 days of traffic,
one busy phone, 60123240066, with every 100th message: 10,000 at a million), gives the
newest message of the busy phone three DNs and adds 200 unmatched DNs, then signs in to the
console of an in-process app (`create_app`, the real lifespan and middleware) and requests
each page `--runs` times, one at a time, after two warm-up requests. Prints p50 / p95 / max of
the time from request to the last byte of the answer, measured around the ASGI call (so with
httpx's in-process transport: ~0.3 ms of client on top of the server's time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from seed_messages import BUSY_PHONE, explain, seed  # noqa: E402
from throwaway_db import create_database, drop_database  # noqa: E402

from app.config import hash_api_key, load_settings  # noqa: E402
from app.console import repository  # noqa: E402
from app.console.repository import MessageFilter  # noqa: E402
from app.main import create_app  # noqa: E402
from app.models import Message  # noqa: E402

API_KEY = "bench-console-key"

EXTRA_SQL = [
    # Three DNs for the busy phone's newest message, in receipt order.
    """
    INSERT INTO delivery_notifications (msgid, status, error_code, error_description, msisdn,
                                        message_id, raw, received_at)
    SELECT m.ref, d.status, d.code, d.descr, m.msisdn, m.id, '{}', now()
    FROM (SELECT * FROM messages WHERE msisdn = :busy AND ref IS NOT NULL
          ORDER BY created_at DESC, id DESC LIMIT 1) m
    CROSS JOIN (VALUES (1, 'UNDELIVERED', '511', 'Subscriber busy for MT short message'),
                       (2, 'DELIVERED', '000', 'No Error'),
                       (3, 'DELIVERED', '000', 'No Error')) AS d(n, status, code, descr)
    ORDER BY d.n
    """,
    # Unmatched DNs (msgids of no message).
    """
    INSERT INTO delivery_notifications (msgid, status, error_code, msisdn, raw, received_at)
    SELECT 'UNMATCHED-' || g, 'DELIVERED', '000', '60123240066', '{}', now()
    FROM generate_series(1, 200) AS g
    """,
    "ANALYZE delivery_notifications",
]


async def prepare(url: str, count: int) -> tuple[str, str]:
    """Seed; returns (a ref of the busy phone with DNs, a client_ref)."""
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        await seed(conn, count, datetime.now(UTC))
        for sql in EXTRA_SQL:
            await conn.execute(text(sql), {"busy": BUSY_PHONE} if ":busy" in sql else {})
        await conn.commit()
        ref = await conn.scalar(
            text("SELECT msgid FROM delivery_notifications WHERE message_id IS NOT NULL LIMIT 1")
        )
        client_ref = await conn.scalar(
            text(
                "SELECT client_ref FROM messages WHERE client_ref IS NOT NULL "
                "ORDER BY created_at DESC LIMIT 1 OFFSET 5000"
            )
        )
    await engine.dispose()
    return str(ref), str(client_ref)


async def timed(client: httpx.AsyncClient, path: str, runs: int) -> tuple[list[float], int]:
    for _ in range(2):
        (await client.get(path)).raise_for_status()
    timings = []
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        size = len(response.content)
    return timings, size


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--explain", action="store_true", help="print the searches' plans")
    args = parser.parse_args()

    url, admin_dsn = await create_database("console_bench")
    print(f"database {url.rsplit('/', 1)[1]}")
    try:
        ref, client_ref = await prepare(url, args.count)
        if args.explain:
            await explain_searches(url, ref, client_ref)
        settings = load_settings(
            _env_file=None,
            database_url=url,
            api_keys=f"bench:{hash_api_key(API_KEY)}",
            log_level="WARNING",
            log_format="json",
        )
        app = create_app(settings)
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://bench"
            ) as client,
        ):
            await sign_in(client)
            pages = {
                "overview, last 24 h": "/console",
                "overview, last 7 days": "/console?window=7d",
                f"search 012-324 0066 (busy phone, {args.count // 100:,} messages)": (
                    "/console/messages?q=012-324+0066"
                ),
                "search a typical phone (+60 11-0000 1234)": (
                    "/console/messages?q=%2B60+11-0000+1234"
                ),
                "search a ref": f"/console/messages?q={ref}",
                "search a client_ref": f"/console/messages?q={client_ref}",
                "messages, status=undelivered": "/console/messages?status=undelivered",
                "message page (3 DNs)": f"/console/messages/{ref}",
                "unmatched DNs": "/console/unmatched-dns",
            }
            print(f"\n{args.count:,} messages; {args.runs} requests per page, one at a time")
            print(f"{'page':<58} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'bytes':>8}")
            for title, path in pages.items():
                timings, size = await timed(client, path, args.runs)
                p95 = statistics.quantiles(timings, n=20)[-1]
                print(
                    f"{title:<58} {statistics.median(timings):>8.1f} {p95:>8.1f} "
                    f"{max(timings):>8.1f} {size:>8,}"
                )
            started = time.perf_counter()
            export = await client.get("/console/messages.csv?q=012-324+0066")
            rows = export.text.count("\n") - 1
            print(
                f"\nCSV export of the busy phone: {rows:,} rows, "
                f"{len(export.content):,} bytes in {(time.perf_counter() - started) * 1000:.0f} ms"
            )
    finally:
        if args.keep:
            print(f"kept {url}")
        else:
            await drop_database(admin_dsn, url)


async def explain_searches(url: str, ref: str, client_ref: str) -> None:
    """EXPLAIN ANALYZE of the console's own queries (seed_messages.explain prints each plan)."""
    engine = create_async_engine(url)
    searches = {
        "search q=busy phone": MessageFilter(q="012-324 0066", msisdn=BUSY_PHONE),
        "search q=ref": MessageFilter(q=ref),
        "search q=client_ref": MessageFilter(q=client_ref),
        "search q=busy phone, status=undelivered": MessageFilter(
            q="012-324 0066", msisdn=BUSY_PHONE, status="undelivered"
        ),
    }
    async with engine.connect() as conn:
        for title, f in searches.items():
            await explain(conn, title, repository.search_query(f, after=None, limit=50))
        await explain(
            conn, "unmatched DNs page", repository.unmatched_query(before_id=None, limit=50)
        )
        message_id = await conn.scalar(select(Message.id).where(Message.ref == ref))
        assert message_id is not None
        await explain(conn, "a message's DNs", repository.notifications_query(message_id))
    await engine.dispose()


async def sign_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/console/sign-in")
    token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
    answer = await client.post("/console/sign-in", data={"api_key": API_KEY, "csrf_token": token})
    assert answer.status_code == 303, answer.text


if __name__ == "__main__":
    asyncio.run(main())
