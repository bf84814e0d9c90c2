"""The DN writer's database work per batch, without HTTP (run by hand).

    .venv/bin/python bench/dn_batch.py [--sizes 64,128,256] [--batches 200] [--messages 6667]
                                       [--no-stats-triggers] [--no-callback-triggers]
                                       [--callbacks]

On a throw-away database (BENCH_DATABASE_URL's server, default
postgresql://postgres@127.0.0.1/postgres), migrated and seeded with `--messages` messages
(ANALYZEd), it writes `--batches` batches of each size exactly as the writer does (one call
of `dn_store_batch` outside BEGIN: the locks, the batch's statement and the COMMIT in one
round trip) on one connection, serially, and prints the mean time per batch and per DN, and the
CPU per DN of the database backend (from /proc: the server must run on this machine) and of
this client (the relay's side of the call: encoding the batch). The DNs name seeded refs at
random (~90%) or nothing. Then the share of the messages' row updates that were HOT (no index
touched). `--alter SQL` (repeatable) runs after seeding, to measure a schema variant.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiling import process_cpu  # noqa: E402
from throwaway_db import create_database, drop_database  # noqa: E402

from app.notifications.repository import store_batch  # noqa: E402
from app.notifications.writer import InboundDN  # noqa: E402
from tests.reliability import asyncpg_dsn  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--messages", type=int, default=6667)
    parser.add_argument(
        "--no-stats-triggers",
        action="store_true",
        help="without the statistics rollup's triggers on messages (to measure what they cost)",
    )
    parser.add_argument(
        "--no-callback-triggers",
        nargs="?",
        const="messages_version,messages_callback_events",
        default="",
        help="without the status callbacks' triggers on messages (or only those named)",
    )
    parser.add_argument(
        "--callbacks",
        action="store_true",
        help="every message has a callback_url: each change writes an outbox event",
    )
    parser.add_argument(
        "--alter",
        action="append",
        default=[],
        help="SQL run after seeding (repeatable), e.g. to measure a schema variant",
    )
    args = parser.parse_args()
    db_url, admin_dsn = await create_database("relay_batch")
    try:
        conn = await asyncpg.connect(asyncpg_dsn(db_url))
        refs = [f"bench-{i:07d}" for i in range(args.messages)]
        await conn.execute(
            "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status, dn_count,"
            " created_at, updated_at, callback_url) SELECT 'bench', 'bench', 'sms',"
            " '60123240066', r, 'pending', 0, now(), now(), $2 FROM unnest($1::text[]) AS r",
            refs,
            "http://127.0.0.1:9/hook" if args.callbacks else None,  # nobody delivers here
        )
        await conn.execute("ANALYZE")
        if args.no_stats_triggers:
            await conn.execute(
                "ALTER TABLE messages DISABLE TRIGGER message_stats_insert,"
                " DISABLE TRIGGER message_stats_update, DISABLE TRIGGER message_stats_delete"
            )
        for trigger in args.no_callback_triggers.split(",") if args.no_callback_triggers else ():
            await conn.execute(f"ALTER TABLE messages DISABLE TRIGGER {trigger}")
        for statement in args.alter:
            await conn.execute(statement)
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        rng = random.Random(7)
        print(f"{args.messages:,} messages; mean per batch (serial, one connection):")
        print(
            f"{'DNs':>5} {'ms/batch':>10} {'us per DN':>10}"
            f" {'CPU us/DN: database':>20} {'this client':>12}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            total = cpu = client = 0.0
            for _ in range(args.batches):
                dns = [
                    InboundDN(
                        rng.choice(refs) if rng.random() < 0.9 else f"orphan-{rng.random()}",
                        rng.choice(["DELIVERED", "UNDELIVERED"]),
                        "000",
                        "Delivered",
                        "60123456789",
                        '{"msgid": "x", "status": "DELIVERED"}',
                        time.time(),
                    )
                    for _ in range(size)
                ]
                cpu_before, client_before = process_cpu(backend), time.process_time()
                started = time.perf_counter()
                await store_batch(conn, dns)
                total += time.perf_counter() - started
                cpu += process_cpu(backend) - cpu_before
                client += time.process_time() - client_before
            per_batch = 1000 * total / args.batches
            database, mine = (1e6 * x / args.batches / size for x in (cpu, client))
            print(
                f"{size:>5} {per_batch:>10.2f} {1000 * per_batch / size:>10.1f}"
                f" {database:>20.1f} {mine:>12.1f}"
            )
        await conn.execute("SELECT pg_stat_force_next_flush()")
        updates, hot = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
        )
        print(f"messages: {updates:,} row updates, {hot / max(updates, 1):.0%} of them HOT")
        await conn.close()
    finally:
        await drop_database(admin_dsn, db_url)


if __name__ == "__main__":
    asyncio.run(main())
