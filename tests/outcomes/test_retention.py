"""Retention (CONTRACT §4.7): `bulk360-relay prune` and the RETENTION_DAYS sweep delete old
messages with their DNs, old unmatched DNs and expired Idempotency-Keys, in transactions of at
most 10,000 rows, and nothing younger."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from app.bulk360.simulator import Simulator
from app.db import create_engine, utcnow
from app.outcomes import repository as repo
from app.outcomes.retention import cutoff_for
from tests.reliability import asyncpg_dsn

# (messages, DNs per message, age in days) — old ones past a 30-day cutoff, young ones not.
SEED = [(30, 2, 40), (20, 0, 31), (25, 1, 5)]


async def seed(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for count, dns, age in SEED:
            await conn.execute(
                """
                WITH m AS (
                    INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,
                                          dn_count, created_at, updated_at)
                    SELECT 'seed', 'tester', 'sms', '60123240066',
                           'r-' || $3::int || '-' || g, 'delivered', $2::int,
                           now() - $3::int * interval '1 day', now()
                    FROM generate_series(1, $1::int) AS g
                    RETURNING id, ref
                )
                INSERT INTO delivery_notifications (msgid, status, message_id, raw, received_at)
                SELECT m.ref, 'DELIVERED', m.id, '{}', now() - $3::int * interval '1 day'
                FROM m CROSS JOIN generate_series(1, $2::int)
                """,
                count,
                dns,
                age,
            )
        # A callback event for each message with DNs: 30 old, 25 young.
        await conn.execute(
            "INSERT INTO callback_events (message_id, version, url, status, dn_count,"
            " recorded_at) SELECT id, 1, 'https://billing.internal/sms', status, dn_count, now()"
            " FROM messages WHERE dn_count > 0"
        )
        # Unmatched DNs: 7 old, 3 young. Idempotency-Keys: 4 expired, 2 live.
        await conn.execute(
            "INSERT INTO delivery_notifications (msgid, status, raw, received_at)"
            " SELECT 'lost-' || g, 'DELIVERED', '{}',"
            "        now() - CASE WHEN g <= 7 THEN interval '35 days' ELSE interval '1 day' END"
            " FROM generate_series(1, 10) AS g"
        )
        await conn.execute(
            "INSERT INTO idempotency_keys (api_key_name, key, request_hash, created_at,"
            " expires_at)"
            " SELECT 'tester', 'k-' || g, 'h', now() - interval '2 days',"
            "        now() + CASE WHEN g <= 4 THEN interval '-1 day' ELSE interval '1 day' END"
            " FROM generate_series(1, 6) AS g"
        )
    finally:
        await conn.close()


async def table_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            "messages": await conn.fetchval("SELECT count(*) FROM messages"),
            "dns": await conn.fetchval(
                "SELECT count(*) FROM delivery_notifications WHERE message_id IS NOT NULL"
            ),
            "unmatched": await conn.fetchval(
                "SELECT count(*) FROM delivery_notifications WHERE message_id IS NULL"
            ),
            "keys": await conn.fetchval("SELECT count(*) FROM idempotency_keys"),
            "callback_events": await conn.fetchval("SELECT count(*) FROM callback_events"),
            "counted_by_stats": await conn.fetchval(
                "SELECT coalesce(sum(messages), 0) FROM"
                " (SELECT messages FROM message_stats_hourly"
                "  UNION ALL SELECT messages FROM message_stats_deltas) AS s"
            ),
        }
    finally:
        await conn.close()


def prune_cli(url: str, *args: str) -> dict[str, int]:
    proc = subprocess.run(  # the real console script, in its own process
        [sys.executable, "-m", "app.cli", "prune", *args],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {name: int(n) for name, n in re.findall(r"^  ([a-z ]+): (\d+)$", proc.stdout, re.M)}


async def test_prune_dry_run_deletes_nothing_and_prints_what_prune_then_deletes(
    db_url: str,
) -> None:
    await seed(db_url)
    before = await table_counts(db_url)

    would = await asyncio.to_thread(prune_cli, db_url, "--older-than", "30", "--dry-run")

    assert await table_counts(db_url) == before
    assert would == {
        "messages": 50,
        "delivery notifications of those messages": 60,
        "callback events of those messages": 30,
        "unmatched delivery notifications": 7,
        "expired idempotency keys": 4,
    }
    deleted = await asyncio.to_thread(prune_cli, db_url, "--older-than", "30")
    assert deleted == would
    assert await table_counts(db_url) == {
        "messages": 25,
        "dns": 25,
        "unmatched": 3,
        "keys": 2,
        "callback_events": 25,
        "counted_by_stats": 25,  # the statistics forget what was deleted
    }
    again = await asyncio.to_thread(prune_cli, db_url, "--older-than", "30")
    assert set(again.values()) == {0}


async def test_one_transaction_deletes_at_most_2000_rows(db_url: str) -> None:
    """The contract allows 10,000; 2,000 keep each COMMIT's WAL short for the DN writer."""
    assert repo.PRUNE_ROWS_MAX == 2_000
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:  # 1,200 old messages with one DN each: 2,400 rows
        await conn.execute(
            """
            WITH m AS (
                INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,
                                      dn_count, created_at, updated_at)
                SELECT 's', 'tester', 'sms', '60123240066', 'r-' || g, 'delivered', 1,
                       now() - interval '40 days', now()
                FROM generate_series(1, 1200) AS g
                RETURNING id, ref)
            INSERT INTO delivery_notifications (msgid, status, message_id, raw, received_at)
            SELECT ref, 'DELIVERED', id, '{}', now() FROM m
            """
        )
    finally:
        await conn.close()
    engine = create_engine(db_url, pool_size=1)
    try:
        cutoff = cutoff_for(utcnow(), 30)
        async with engine.begin() as tx:
            first = await repo.prune_messages_batch(tx, cutoff)
        async with engine.begin() as tx:
            second = await repo.prune_messages_batch(tx, cutoff)
    finally:
        await engine.dispose()
    assert (first.messages, first.delivery_notifications) == (1_000, 1_000)
    assert (second.messages, second.delivery_notifications) == (200, 200)


async def test_the_retention_sweep_prunes_what_is_older_than_retention_days(
    make_relay: Callable[..., Any], simulator: Simulator, db_url: str
) -> None:
    await seed(db_url)
    async with make_relay(simulator.base_url, retention_days=30, sweep_interval_s=3600) as relay:
        assert relay.state.sweeper is not None
        report = await relay.state.sweeper.run_once()
    assert (report.pruned.messages, report.pruned.delivery_notifications) == (50, 60)
    assert report.pruned.unmatched_delivery_notifications == 7
    assert report.pruned.idempotency_keys == 4
    assert report.pruned.callback_events == 30
    after = await table_counts(db_url)
    assert (after["messages"], after["unmatched"], after["keys"]) == (25, 3, 2)


async def test_without_retention_days_the_sweep_keeps_messages_but_purges_expired_keys(
    make_relay: Callable[..., Any], simulator: Simulator, db_url: str
) -> None:
    await seed(db_url)
    async with make_relay(simulator.base_url, sweep_interval_s=3600) as relay:
        assert relay.state.sweeper is not None
        report = await relay.state.sweeper.run_once()
    assert report.pruned.idempotency_keys == 4 and report.pruned.messages == 0
    after = await table_counts(db_url)
    assert (after["messages"], after["unmatched"], after["keys"]) == (75, 10, 2)
