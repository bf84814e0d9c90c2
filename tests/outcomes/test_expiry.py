"""Expiry of silent messages (CONTRACT §4.6): a `pending` message with no final DN within
DN_DEADLINE_H becomes `expired` through the periodic sweep, once, however many replicas sweep,
and a DN that arrives afterwards still decides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.simulator import Simulator
from app.outcomes.sweeps import Sweeper
from tests.conftest import DN_TOKEN, Relay
from tests.reliability import asyncpg_dsn, relay_env, relay_processes

NO_DN = "60199993000"  # the simulator accepts it and never sends a DN
HOOK = f"/dn/{DN_TOKEN}"
DEADLINE_H = 0.00002  # 72 ms


def sweeper(relay: Relay) -> Sweeper:
    found = relay.state.sweeper
    assert found is not None
    return found


async def send(relay: Relay, to: str) -> dict[str, Any]:
    response = await relay.client.post("/v1/messages", json={"to": to, "text": "hello"})
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()["messages"][0]
    return entry


async def lookup(relay: Relay, ref: str) -> dict[str, Any]:
    response = await relay.client.get(f"/v1/messages/{ref}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def past_deadline() -> None:
    # Time has to pass for a message to be older than the deadline; it is 72 ms here.
    await asyncio.sleep(DEADLINE_H * 3600 * 1.5)


async def test_silent_message_expires_and_a_later_dn_still_decides(
    make_relay: Callable[..., Any], simulator: Simulator
) -> None:
    async with make_relay(
        simulator.base_url, dn_deadline_h=DEADLINE_H, sweep_interval_s=3600
    ) as relay:
        sent = await send(relay, NO_DN)
        assert sent["status"] == "pending"
        await past_deadline()

        report = await sweeper(relay).run_once()

        assert report.expired == 1
        expired = await lookup(relay, sent["ref"])
        assert expired["status"] == "expired"
        assert expired["final_at"] is not None
        assert expired["delivery_status"] is None and expired["dn_count"] == 0
        assert (await sweeper(relay).run_once()).expired == 0  # once only

        dn = {"msgid": sent["ref"], "status": "DELIVERED", "error-code": "000"}
        assert (await relay.client.post(HOOK, data=dn)).status_code == 200
        delivered = await lookup(relay, sent["ref"])
        assert delivered["status"] == "delivered"
        assert delivered["delivery_status"] == "DELIVERED"
        assert delivered["final_at"] != expired["final_at"]
        assert (await sweeper(relay).run_once()).expired == 0


async def test_a_non_final_dn_leaves_an_expired_message_expired(
    make_relay: Callable[..., Any], simulator: Simulator
) -> None:
    async with make_relay(
        simulator.base_url, dn_deadline_h=DEADLINE_H, sweep_interval_s=3600
    ) as relay:
        sent = await send(relay, NO_DN)
        await past_deadline()
        await sweeper(relay).run_once()
        expired = await lookup(relay, sent["ref"])

        dn = {"msgid": sent["ref"], "status": "ACCEPTED"}
        assert (await relay.client.post(HOOK, data=dn)).status_code == 200

        after = await lookup(relay, sent["ref"])
        assert after["status"] == "expired"
        assert after["delivery_status"] == "ACCEPTED" and after["dn_count"] == 1
        assert after["final_at"] == expired["final_at"]  # still when it expired


async def test_only_pending_messages_past_the_deadline_expire(
    make_relay: Callable[..., Any], simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, dn_deadline_h=1, sweep_interval_s=3600) as relay:
        dsn = asyncpg_dsn(relay.settings.database_url)
        now = datetime.now(UTC)
        conn = await asyncpg.connect(dsn)
        try:
            for ref, status, age_h in [
                ("old-pending", "pending", 2),
                ("young-pending", "pending", 0.5),
                ("old-delivered", "delivered", 2),
                ("old-undelivered", "undelivered", 2),
                ("old-rejected", "rejected", 2),
                ("old-unknown", "unknown", 2),
            ]:
                at = now - timedelta(hours=age_h)
                await conn.execute(
                    "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,"
                    " created_at, updated_at) VALUES ('s', 'tester', 'sms', '60123240066',"
                    " $1, $2, $3, $3)",
                    ref,
                    status,
                    at,
                )
            report = await sweeper(relay).run_once()
            rows = await conn.fetch("SELECT ref, status, final_at FROM messages ORDER BY id")
        finally:
            await conn.close()
    assert report.expired == 1
    assert [(r["ref"], r["status"]) for r in rows] == [
        ("old-pending", "expired"),
        ("young-pending", "pending"),
        ("old-delivered", "delivered"),
        ("old-undelivered", "undelivered"),
        ("old-rejected", "rejected"),
        ("old-unknown", "unknown"),
    ]
    assert rows[0]["final_at"] is not None


def _expired_counter(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('relay_sweep_rows_total{kind="expired"}'):
            return float(line.split()[-1])
    return 0.0


async def test_two_serve_processes_expire_each_message_once(
    db_url: str, simulator: Simulator, tmp_path: Any
) -> None:
    """5,000 overdue messages, two replicas sweeping every 50 ms on one database: each message
    is expired by exactly one of them (their counters add up to 5,000, no more)."""
    count = 5_000
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        await conn.execute(
            "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,"
            " created_at, updated_at)"
            " SELECT 's', 'tester', 'sms', '60123240066', 'r-' || g, 'pending',"
            "        now() - interval '2 hours', now() - interval '2 hours'"
            " FROM generate_series(1, $1) AS g",
            count,
        )
        env = relay_env(db_url, simulator.base_url, dn_deadline_h=1, sweep_interval_s=0.05)
        async with relay_processes([env, env], tmp_path) as processes:
            deadline = asyncio.get_running_loop().time() + 30
            while await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'pending'"):
                assert asyncio.get_running_loop().time() < deadline, "not all expired"
                await asyncio.sleep(0.05)
            # A few more passes of each process: nothing left to expire, nothing counted twice.
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient() as client:
                texts = [(await client.get(f"{p.url}/metrics")).text for p in processes]
        expired = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'expired'")
    finally:
        await conn.close()
    assert expired == count
    assert sum(_expired_counter(t) for t in texts) == count
