"""Two relay processes on one Postgres behave as one (CONTRACT §5): the last DN received is
final however a message's DNs are spread over the replicas, and a DN stored by one replica
before the other has recorded its message's ref still ends on that message.

Idempotency across two processes (100 concurrent same-key sends split over both: one upstream
MT) is pinned in tests/messages/test_idempotency.py
(`test_100_requests_with_one_key_across_two_processes_send_once`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from app.bulk360.simulator import Simulator, SimulatorConfig
from tests.reliability import (
    AUTH,
    DN,
    DN_PATH,
    Burst,
    asyncpg_dsn,
    empty_tables,
    relay_env,
    relay_processes,
    summary,
)
from tests.servers import RelayProcess


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Simulator]:
    """One simulator for the module's replicas (their upstream URL is fixed at start)."""
    sim = Simulator(SimulatorConfig(dn_delay_s=0))
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture(scope="module")
async def replicas(
    postgres_url: str, upstream: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[RelayProcess]]:
    env = relay_env(postgres_url, upstream.base_url)
    async with relay_processes([env, env], tmp_path_factory.mktemp("replicas")) as processes:
        yield processes


@pytest.fixture
async def pg_url(postgres_url: str, upstream: Simulator) -> str:
    await empty_tables(postgres_url)
    upstream.reset()
    upstream.config.dn_url = None
    upstream.config.slow_s = 60.0
    return postgres_url


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def add_messages(url: str, refs: list[str]) -> None:
    await fetch(
        url,
        """
        INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,
                              created_at, updated_at)
        SELECT 'replicas', 'tester', 'sms', '60123240066', ref, 'pending', now(), now()
        FROM unnest($1::text[]) AS ref
        """,
        refs,
    )


# A message's delivery fields next to those of its DN with the highest receipt sequence.
_LAST_DN = """
SELECT m.ref, m.status, m.delivery_status, m.error_code, m.last_dn_seq, m.dn_count,
       d.id AS dn_id, d.status AS dn_status, d.error_code AS dn_error_code,
       (SELECT count(*) FROM delivery_notifications c WHERE c.message_id = m.id) AS dns
FROM messages m
LEFT JOIN LATERAL (
    SELECT id, status, error_code FROM delivery_notifications
    WHERE message_id = m.id ORDER BY id DESC LIMIT 1
) d ON true
ORDER BY m.id
"""


def follows_last_dn(row: asyncpg.Record) -> bool:
    expected = {"DELIVERED": "delivered", "UNDELIVERED": "undelivered"}[row["dn_status"]]
    return bool(
        row["status"] == expected
        and row["delivery_status"] == row["dn_status"]
        and row["error_code"] == row["dn_error_code"]
        and row["last_dn_seq"] == row["dn_id"]
        and row["dn_count"] == row["dns"]
    )


async def test_dns_for_one_message_spread_over_both_replicas_end_on_the_last_stored(
    pg_url: str, replicas: list[RelayProcess]
) -> None:
    messages, per_message = 150, 6
    refs = [f"rep-{i}" for i in range(messages)]
    await add_messages(pg_url, refs)
    rng = random.Random(8)
    # Each message's DNs sit next to each other in the burst, so they are in flight together,
    # alternating between the replicas; statuses are random, so the "last" one is whichever
    # the database sequenced last, not the most final-looking.
    dns: list[DN] = [
        (ref, rng.choice(("DELIVERED", "UNDELIVERED"))) for ref in refs for _ in range(per_message)
    ]
    answers = await Burst(50).dns(dns, lambda i: replicas[i % 2].url)
    rows = await fetch(pg_url, _LAST_DN)

    assert summary(answers) == {"200": messages * per_message}
    assert {row["dns"] for row in rows} == {per_message}
    wrong = [dict(row) for row in rows if not follows_last_dn(row)]
    assert wrong == []
    # Both outcomes occur, so the check above is not vacuous.
    assert {row["status"] for row in rows} == {"delivered", "undelivered"}


async def test_out_of_order_dns_alternating_replicas_end_on_the_last_received(
    pg_url: str, replicas: list[RelayProcess]
) -> None:
    sequences = {
        "ooo-1": ["DELIVERED", "UNDELIVERED"],  # the later "failure" wins
        "ooo-2": ["UNDELIVERED", "DELIVERED", "UNDELIVERED", "DELIVERED"],
        "ooo-3": ["DELIVERED", "DELIVERED", "UNDELIVERED", "UNDELIVERED", "DELIVERED"],
    }
    await add_messages(pg_url, list(sequences))
    async with httpx.AsyncClient() as http:
        for ref, statuses in sequences.items():
            for n, status in enumerate(statuses):
                code = "000" if status == "DELIVERED" else "501"
                fields = {"msgid": ref, "status": status, "error-code": code}
                r = await http.post(replicas[n % 2].url + DN_PATH, data=fields)
                assert r.status_code == 200
    rows = {row["ref"]: row for row in await fetch(pg_url, _LAST_DN)}

    for ref, statuses in sequences.items():
        row = rows[ref]
        assert (row["delivery_status"], row["dn_count"]) == (statuses[-1], len(statuses))
        assert follows_last_dn(row)


async def test_dn_stored_by_one_replica_before_the_other_records_the_ref_ends_on_the_message(
    pg_url: str, replicas: list[RelayProcess], upstream: Simulator
) -> None:
    sender, receiver = replicas
    # The simulator delivers each DN at once to the *other* replica, and holds its answer to
    # the send for two seconds (the 0900 number delays the whole request, within the timeout):
    # every DN is stored, unmatched, before the sending replica learns the refs.
    upstream.config.dn_url = receiver.url + DN_PATH
    upstream.config.slow_s = 2.0
    to = ["60199990900", "60123240066", "60199993003", "60199993001"]
    async with httpx.AsyncClient(timeout=10) as http:
        sending = asyncio.create_task(
            http.post(sender.url + "/v1/messages", json={"to": to, "text": "x"}, headers=AUTH)
        )
        deadline = time.monotonic() + 5
        while len(upstream.sent) < len(to):  # the relay process offers nothing to await
            assert time.monotonic() < deadline, "the simulator never got the send"
            await asyncio.sleep(0.01)
        await upstream.wait_dns_sent()
        before = await fetch(
            pg_url, "SELECT msgid, message_id FROM delivery_notifications ORDER BY id"
        )
        unanswered = await fetch(pg_url, "SELECT status, ref FROM messages ORDER BY id")
        response = await sending

    assert response.status_code == 201, response.text
    refs = {s["to"]: s["ref"] for s in upstream.sent}
    # 3003 sends DELIVERED then UNDELIVERED, 3001 UNDELIVERED then DELIVERED: six DNs, all
    # stored by the receiver while the sender still had every row `unknown` with no ref.
    assert len(before) == 6 and all(row["message_id"] is None for row in before)
    assert [tuple(row) for row in unanswered] == [("unknown", None)] * 4
    assert all(d["http_status"] == 200 for d in upstream.dn_deliveries)
    rows = {row["ref"]: row for row in await fetch(pg_url, _LAST_DN)}
    expected = {
        "60199990900": ("delivered", 1),
        "60123240066": ("delivered", 1),
        "60199993003": ("undelivered", 2),
        "60199993001": ("delivered", 2),
    }
    assert {n: (rows[refs[n]]["status"], rows[refs[n]]["dn_count"]) for n in to} == expected
    assert all(follows_last_dn(row) for row in rows.values())
