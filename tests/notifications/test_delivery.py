"""app/delivery.py: which message a DN belongs to (suffixed msgids) and when it is final (556),
through the DN writer's batch and the send path's attaching of waiting DNs."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.simulator import Simulator, SimulatorConfig
from app.delivery import (
    MAX_SUFFIX_CUTS,
    candidate_refs,
    cuts_sql,
    dn_batch_locks,
    dn_lock_keys,
    lock_key,
)
from app.main import create_app
from app.notifications.repository import begin_and_store
from app.notifications.writer import InboundDN
from tests.conftest import DN_TOKEN, TEST_API_KEY, Relay, relay_settings
from tests.notifications.helpers import (
    add_message,
    begin_recording_refs,
    dns,
    message,
    pg_dsn,
    record_refs,
)
from tests.notifications.test_writer import lock_waiters, until
from tests.servers import bound_socket, serve_in_loop

HOOK = f"/dn/{DN_TOKEN}"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
MULTI = "E2104yMYer2weOB-X46dBlYa79"  # a multi-recipient ref (the provider doc's)
SINGLE = "E210446dBNyMYd7"


def dn(msgid: str, status: str = "DELIVERED", code: str | None = "000") -> InboundDN:
    return InboundDN(msgid, status, code, None, None, "{}", time.time())


@pytest.mark.parametrize(
    ("msgid", "expected"),
    [
        ("plain", ["plain"]),
        (f"{MULTI}-0", [f"{MULTI}-0", MULTI, "E2104yMYer2weOB"]),
        (f"{SINGLE}.0602-0", [f"{SINGLE}.0602-0", f"{SINGLE}.0602", SINGLE]),
        ("-lead", ["-lead"]),  # never the empty ref
        ("a-b-c-d-e-f", ["a-b-c-d-e-f", "a-b-c-d-e", "a-b-c-d", "a-b-c", "a-b"]),
    ],
)
def test_candidate_refs_are_the_msgid_then_its_cuts_longest_first(
    msgid: str, expected: list[str]
) -> None:
    assert candidate_refs(msgid) == expected
    assert len(candidate_refs(msgid)) <= 1 + MAX_SUFFIX_CUTS


def test_a_batch_locks_its_msgids_exclusive_and_their_cuts_shared() -> None:
    msgids = ["plain", "x-0", "y.1-2", "x"]
    keys, exclusive = dn_batch_locks(dn_lock_keys(m) for m in msgids)

    by_key = {lock_key(r): r for r in ("plain", "x-0", "y.1-2", "x", "y.1", "y")}
    assert keys == sorted(by_key)
    assert dn_lock_keys("y.1-2") == tuple(lock_key(r) for r in ("y.1-2", "y.1", "y"))
    shared = {by_key[k] for k, x in zip(keys, exclusive, strict=True) if not x}
    assert shared == {"y.1", "y"}  # `x` is a msgid of the batch too: exclusive


async def test_the_sql_cuts_are_the_python_cuts(db_url: str) -> None:
    """The batch's statement matches on `cuts_sql`, the locks are taken on `candidate_refs`:
    a cut missing from either would let a DN and its send race."""
    rng = random.Random(0)
    msgids = ["plain", f"{MULTI}-0", f"{SINGLE}.0602-0", "-lead", "X--0", "x-", ".", "a-b-c-d-e-f"]
    msgids += ["".join(rng.choices("ab-.", k=rng.randrange(12))) for _ in range(500)]
    conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        rows = await conn.fetch(f"SELECT m, {cuts_sql('m')} FROM unnest($1::text[]) AS m", msgids)
    finally:
        await conn.close()

    assert [(row[0], row[1]) for row in rows] == [(m, candidate_refs(m)[1:]) for m in msgids]


async def _store(db_url: str, batch: list[InboundDN]) -> None:
    conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(conn, batch)
        await conn.execute("COMMIT")
    finally:
        await conn.close()


async def test_suffixed_msgids_match_their_ref_in_a_batch(db_url: str, engine: AsyncEngine) -> None:
    """Exact first, else the longest cut that is a ref: `MULTI-0` goes to MULTI, not to the
    shorter ref that also exists; the raw msgid is kept."""
    multi = await add_message(engine, MULTI)
    shorter = await add_message(engine, "E2104yMYer2weOB")
    single = await add_message(engine, SINGLE)
    exact = await add_message(engine, f"{SINGLE}-7")

    await _store(
        db_url,
        [
            dn(f"{MULTI}-0", "UNDELIVERED", "501"),
            dn(f"{SINGLE}.0602-0"),
            dn(f"{SINGLE}-7"),  # a ref of its own: exact wins over the cut
            dn(f"{MULTI}-0"),
        ],
    )

    stored = {d["id"]: d for d in await dns(engine)}
    assert [d["msgid"] for d in stored.values()] == [
        f"{MULTI}-0",
        f"{SINGLE}.0602-0",
        f"{SINGLE}-7",
        f"{MULTI}-0",
    ]
    assert [d["message_id"] for d in stored.values()] == [multi, single, exact, multi]
    m = await message(engine, multi)
    assert (m["status"], m["dn_count"]) == ("delivered", 2)
    assert (await message(engine, single))["status"] == "delivered"
    assert (await message(engine, exact))["status"] == "delivered"
    assert (await message(engine, shorter))["dn_count"] == 0


async def test_a_msgid_never_matches_a_longer_ref(db_url: str, engine: AsyncEngine) -> None:
    """`X-0` is not a cut of `X-0-1`: the DN stays unmatched, by the batch and when the longer
    ref is recorded later."""
    await add_message(engine, "X-0-1")
    await _store(db_url, [dn("X-0")])
    [row] = await dns(engine, "X-0")
    assert row["message_id"] is None

    late = await add_message(engine, None)
    await record_refs(db_url, {late: "X-0-2"})

    [row] = await dns(engine, "X-0")
    assert row["message_id"] is None
    assert (await message(engine, late))["dn_count"] == 0


async def test_a_late_ref_attaches_its_suffixed_dns_and_only_those(
    db_url: str, engine: AsyncEngine
) -> None:
    """DNs beat the send's answer: recording the refs attaches each waiting DN to its longest
    candidate among them, and leaves DNs that are not its own (`Y-0x`, `Yz-0`)."""
    for msgid in (f"{MULTI}-0", f"{SINGLE}.0602-0", "Y-0x", "Yz-0", "Y"):
        await _store(db_url, [dn(msgid, "UNDELIVERED", "510")])
    base, multi, single, y = [await add_message(engine, None) for _ in range(4)]

    await record_refs(db_url, {base: "E2104yMYer2weOB", multi: MULTI, single: SINGLE, y: "Y-0x-1"})

    attached = {d["msgid"]: d["message_id"] for d in await dns(engine)}
    assert attached == {
        f"{MULTI}-0": multi,
        f"{SINGLE}.0602-0": single,
        "Y-0x": None,
        "Yz-0": None,
        "Y": None,
    }
    for message_id in (multi, single):
        m = await message(engine, message_id)
        assert (m["status"], m["error_code"], m["dn_count"]) == ("undelivered", "510", 1)
    assert (await message(engine, base))["dn_count"] == 0


async def test_a_suffixed_dn_and_the_send_recording_its_ref_serialise(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """The DN `X-0` takes the lock of `X` too: a send recording `X` (not committed) makes it
    wait, and it then finds the ref."""
    message_id = await add_message(engine, None)
    send = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_recording_refs(send, {message_id: "race-s"})
        hook = asyncio.create_task(
            relay.client.get(
                HOOK, params={"msgid": "race-s.0602-0", "status": "DELIVERED", "error-code": "0"}
            )
        )
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the DN batch to wait for the lock")
        await send.execute("COMMIT")
    finally:
        await send.close()

    assert (await hook).status_code == 200
    m = await message(engine, message_id)
    assert (m["status"], m["dn_count"]) == ("delivered", 1)


async def test_dns_sharing_a_cut_do_not_wait_for_each_other(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """The cuts are locked shared: a batch holding `Q-1-0` open (cuts `Q-1`, `Q`) does not
    hold up `Q-2.0602-0` (cuts `Q-2.0602`, `Q-2`, `Q`), another message's DN."""
    first, second = await add_message(engine, "Q-1"), await add_message(engine, "Q-2")
    open_batch = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(open_batch, [dn("Q-1-0", "UNDELIVERED", "501")])
        params = {"msgid": "Q-2.0602-0", "status": "DELIVERED", "error-code": "0"}
        async with asyncio.timeout(5):
            assert (await relay.client.get(HOOK, params=params)).status_code == 200
        await open_batch.execute("COMMIT")
    finally:
        await open_batch.close()

    assert (await message(engine, first))["status"] == "undelivered"
    assert (await message(engine, second))["status"] == "delivered"


async def test_dn_556_is_stored_and_counted_but_not_final(
    relay: Relay, engine: AsyncEngine
) -> None:
    """SMS buffered: pending stays pending; after a final DN, a 556 takes the message back to
    pending (the last DN received decides, and it decides nothing yet); the next final DN
    makes it final again."""
    message_id = await add_message(engine, "buffered")

    async def send_dn(status: str, code: str) -> None:
        params = {"msgid": "buffered", "status": status, "error-code": code}
        assert (await relay.client.get(HOOK, params=params)).status_code == 200

    await send_dn("UNDELIVERED", "556")
    m = await message(engine, message_id)
    assert (m["status"], m["final_at"], m["dn_count"], m["error_code"]) == (
        "pending",
        None,
        1,
        "556",
    )

    await send_dn("DELIVERED", "000")
    assert (await message(engine, message_id))["status"] == "delivered"

    await send_dn("DELIVERED", "556")
    m = await message(engine, message_id)
    assert (m["status"], m["final_at"], m["dn_count"]) == ("pending", None, 3)

    await send_dn("UNDELIVERED", "501")
    m = await message(engine, message_id)
    assert (m["status"], m["dn_count"]) == ("undelivered", 4) and m["final_at"] is not None


async def test_attaching_waiting_dns_applies_the_556_rule_too(
    db_url: str, engine: AsyncEngine
) -> None:
    await _store(db_url, [dn("late-556", "UNDELIVERED", "556")])
    message_id = await add_message(engine, None)

    await record_refs(db_url, {message_id: "late-556"})

    m = await message(engine, message_id)
    assert (m["status"], m["dn_count"], m["delivery_status"]) == ("pending", 1, "UNDELIVERED")


# ---- end to end: the simulator's suffixed DNs (3005: `<ref>-0`, 3006: `<ref>.0602-0`) -------


@contextlib.asynccontextmanager
async def relay_and_simulator(db_url: str, **sim: Any) -> AsyncIterator[tuple[str, Simulator]]:
    """The relay on a real socket, and a simulator posting its DNs to it."""
    sock = bound_socket()
    relay_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    simulator = Simulator(SimulatorConfig(dn_url=relay_url + HOOK, **sim))
    upstream = await simulator.start()
    try:
        async with serve_in_loop(create_app(relay_settings(db_url, upstream)), sock):
            yield relay_url, simulator
    finally:
        await simulator.stop()


async def _statuses(engine: AsyncEngine) -> dict[str, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT msisdn, status, dn_count FROM messages"))
        return {row.msisdn: (row.status, row.dn_count) for row in rows}


SUFFIXED = ["60199993005", "60199993006", "60123240066"]


async def test_simulator_suffixed_dns_end_delivered(db_url: str, engine: AsyncEngine) -> None:
    """The DNs arrive after the send's answer was recorded: the writer's batch matches them."""
    async with (
        relay_and_simulator(db_url, dn_delay_s=0.3) as (url, simulator),
        httpx.AsyncClient(base_url=url, headers=AUTH) as client,
    ):
        response = await client.post("/v1/messages", json={"to": SUFFIXED, "text": "x"})
        assert response.status_code == 201, response.text
        await simulator.wait_dns_sent()

    msgids = sorted(d["msgid"] for d in await dns(engine))
    refs = {m["to"]: m["ref"] for m in response.json()["messages"]}
    assert msgids == sorted(
        [f"{refs['60199993005']}-0", f"{refs['60199993006']}.0602-0", refs["60123240066"]]
    )
    assert await _statuses(engine) == {n: ("delivered", 1) for n in SUFFIXED}


async def test_simulator_suffixed_dns_that_beat_the_answer_end_delivered(
    db_url: str, engine: AsyncEngine
) -> None:
    """The simulator holds its answer (0900) and posts the DNs at once: they are stored
    unmatched, and the send attaches them when it records the refs."""
    async with (
        relay_and_simulator(db_url, dn_delay_s=0.0, slow_s=0.5) as (url, simulator),
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        to = ["60199990900", *SUFFIXED]
        response = await client.post("/v1/messages", json={"to": to, "text": "x"})
        assert response.status_code == 201, response.text
        await simulator.wait_dns_sent()

    assert len(await dns(engine)) == 4
    assert await _statuses(engine) == {n: ("delivered", 1) for n in to}


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("UNDELIVERED", "556", "expired"),  # buffered: still nothing final
        ("ACCEPTED", "000", "expired"),  # not a final status
        ("DELIVERED", "000", "delivered"),  # a DN after the deadline still decides
        ("UNDELIVERED", "501", "undelivered"),
    ],
)
async def test_an_expired_message_stays_expired_until_a_final_dn(
    relay: Relay, engine: AsyncEngine, status: str, code: str, expected: str
) -> None:
    message_id = await add_message(engine, "silent", status="expired")
    async with engine.begin() as conn:  # as the expiry sweep leaves it
        await conn.execute(text("UPDATE messages SET final_at = now() - interval '1 hour'"))
    expired_at = (await message(engine, message_id))["final_at"]

    params = {"msgid": "silent-0", "status": status, "error-code": code}  # suffixed, too
    assert (await relay.client.get(HOOK, params=params)).status_code == 200

    m = await message(engine, message_id)
    assert (m["status"], m["dn_count"]) == (expected, 1)
    assert (m["final_at"] == expired_at) == (expected == "expired")
