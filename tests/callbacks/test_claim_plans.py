"""A claim reads the events it claims, not the backlog, whatever the planner's statistics say.

A relay at rest claims from an empty `callback_events`; its statistics say empty until
autovacuum next analyzes it, which may be a minute into a burst. Planned for an empty table,
the claim once scanned and sorted every pending event, and ran a subquery for each of them
(36 s for one claim of 16 events with 3,000 pending). The dispatcher's connections now plan
every statement for the table as it is, and the claim's superseding step looks its ids up by
primary key; this test counts what a claim reads from `callback_events` in that situation.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from app.callbacks.repository import CLAIM_SQL, SERVER_SETTINGS
from app.migrate import upgrade_async
from tests.reliability import asyncpg_dsn

PENDING = 1_500
LIMIT = 16


def scans(plan: dict[str, Any], relation: str) -> list[tuple[int, float]]:
    """Each scan of `relation` in the plan: (how many times it ran, rows it returned or
    filtered out over all its runs)."""
    found = []
    if plan.get("Relation Name") == relation and "Scan" in plan["Node Type"]:
        per_loop = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        found.append((plan["Actual Loops"], per_loop * plan["Actual Loops"]))
    for child in plan.get("Plans", []):
        found += scans(child, relation)
    return found


async def test_a_claim_after_a_quiet_spell_reads_its_events_not_the_backlog(
    empty_db_url: str,
) -> None:
    await upgrade_async(empty_db_url)
    setup = await asyncpg.connect(asyncpg_dsn(empty_db_url))
    claimer = await asyncpg.connect(asyncpg_dsn(empty_db_url), server_settings=SERVER_SETTINGS)
    try:
        await setup.execute(
            """INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,
                                     created_at, updated_at, callback_url)
               SELECT 's', 'tester', 'sms', '60123240066', 'ref-' || i, 'pending', now(), now(),
                      'http://127.0.0.1:9/hook'
               FROM generate_series(1, $1) AS i""",
            PENDING,
        )
        await setup.execute("ANALYZE callback_events")  # empty: what autovacuum saw last
        # The relay at rest: the same claim, prepared and run often on the empty table.
        await claimer.execute(f"PREPARE claim(int, float8, text[]) AS {CLAIM_SQL}")
        for _ in range(10):
            await claimer.fetch("EXECUTE claim(16, 30, '{}')")
        for low in range(1, PENDING + 1, 300):  # the burst, as DN batches would commit it
            await setup.execute(
                "UPDATE messages SET status = 'delivered' WHERE id BETWEEN $1 AND $2",
                low,
                low + 299,
            )
        assert await setup.fetchval("SELECT count(*) FROM callback_events") == PENDING

        [[explained]] = await claimer.fetch(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim({LIMIT}, 30, '{{}}')"
        )
        plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
        claimed = await setup.fetchval(
            "SELECT count(*) FROM callback_events WHERE claimed_until IS NOT NULL"
        )
    finally:
        await claimer.close()
        await setup.close()
    assert claimed == LIMIT
    read = scans(plan, "callback_events")
    # No scan runs once per pending event (the planned-for-empty claim ran one 10,000 times
    # and one 160,000 times): at most once per claimed event.
    assert max(loops for loops, _ in read) <= LIMIT
    # What it reads is linear in the table at worst (a scan the planner finds cheaper than the
    # index while the table is this small), never quadratic.
    assert sum(rows for _, rows in read) < 3 * PENDING
