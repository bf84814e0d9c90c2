"""The expiry sweep's time per batch on the seeded table (run by hand, after
bench/seed_messages.py, whose 8% pending messages are all past a 72 h deadline):

    .venv/bin/python bench/expiry.py [--url postgresql+asyncpg://postgres@127.0.0.1:5432/relay_bench]

Expires every overdue pending message the way the sweeper does (1,000 per transaction, SKIP
LOCKED, the statistics triggers included) and prints the time per batch. It changes the data:
seed again to repeat it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

from app.db import create_engine, utcnow
from app.outcomes import repository as repo


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/relay_bench")
    parser.add_argument("--deadline-h", type=float, default=72.0)
    args = parser.parse_args()
    engine = create_engine(args.url, pool_size=1)
    cutoff = utcnow() - timedelta(hours=args.deadline_h)
    timings: list[float] = []
    total = 0
    try:
        while True:
            started = time.perf_counter()
            async with engine.begin() as conn:
                n = await repo.expire_batch(conn, cutoff)
            timings.append((time.perf_counter() - started) * 1000)
            total += n
            if n < repo.EXPIRE_BATCH:
                break
    finally:
        await engine.dispose()
    full = timings[:-1] or timings
    print(
        f"expired {total:,} messages in {len(timings)} transactions, {sum(timings) / 1000:.1f} s;"
        f" per batch of {repo.EXPIRE_BATCH:,}: median {statistics.median(full):.1f} ms, "
        f"p95 {sorted(full)[int(len(full) * 0.95) - 1]:.1f} ms, max {max(full):.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
