"""The group-commit writer under faults and races: database down, queue full, shutdown with
DNs queued, a bad row in a batch, and real concurrent transactions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.client import Destination
from app.delivery import lock_key
from app.deps import State
from app.main import create_app
from app.messages.outcome import Entry
from app.messages.repository import Answer
from app.notifications.repository import begin_and_store
from app.notifications.writer import PIPELINE, DNStoreError, InboundDN
from tests.conftest import DN_TOKEN, Relay, relay_settings
from tests.notifications.helpers import (
    add_message,
    begin_recording_refs,
    dns,
    message,
    pg_dsn,
    refresh_messages,
)
from tests.reliability.pgproxy import PgProxy
from tests.servers import free_port

HOOK = f"/dn/{DN_TOKEN}"


@dataclass
class Hooked:
    client: httpx.AsyncClient
    state: State


@contextlib.asynccontextmanager
async def relay_with(db_url: str, **overrides: Any) -> AsyncIterator[Hooked]:
    settings = relay_settings(db_url, "http://127.0.0.1:9", **overrides)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            yield Hooked(client, manager._state["relay"])


async def until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 10
) -> None:
    """Wait for a condition in another process or task that offers nothing to await."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def lock_waiters(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def writer_blocked(db_url: str, msgid: str) -> AsyncIterator[None]:
    """Hold the msgid's advisory lock (what the writer needs for its DN) until the block exits."""
    conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(msgid))
        yield
        await tx.rollback()
    finally:
        await conn.close()


def dn_params(msgid: str, status: str = "DELIVERED", code: str = "000") -> dict[str, str]:
    return {"msgid": msgid, "status": status, "error-code": code}


# ---- unavailability ------------------------------------------------------------------------


async def test_database_down_answers_503_at_once_never_500() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    async with relay_with(url, dn_ack_timeout_s=3.0) as relay:
        started = time.monotonic()
        first = await asyncio.gather(
            *(relay.client.get(HOOK, params=dn_params(f"m{i}")) for i in range(20))
        )
        # The breaker is open now: these are refused without touching the database.
        second = await asyncio.gather(
            *(relay.client.post(HOOK, data=dn_params(f"n{i}")) for i in range(20))
        )
        elapsed = time.monotonic() - started

    assert {r.status_code for r in first + second} == {503}
    assert all(r.json()["error"] == "dn_unavailable" for r in first + second)
    assert all(r.headers["retry-after"] == "1" for r in second)
    assert elapsed < 3.0  # never as long as the ack timeout: refused connections fail fast


async def test_database_outage_only_503s_then_ingestion_resumes(
    db_url: str, engine: AsyncEngine
) -> None:
    proxy = PgProxy.for_url(db_url)  # the database "going away", on TCP or a Unix socket
    await proxy.start()
    via_proxy = proxy.url(db_url)
    try:
        async with relay_with(via_proxy, dn_ack_timeout_s=3.0) as relay:
            relay.state.dn_writer.breaker_open_s = 0.2
            assert (await relay.client.get(HOOK, params=dn_params("before"))).status_code == 200

            await proxy.stop()  # pooled connections die, new ones are refused
            during = [
                await relay.client.get(HOOK, params=dn_params(f"during{i}")) for i in range(5)
            ]
            assert {r.status_code for r in during} == {503}

            await proxy.start()
            answers: list[int] = []

            async def stored_again() -> bool:
                r = await relay.client.get(HOOK, params=dn_params("after"))
                answers.append(r.status_code)
                return r.status_code == 200

            await until(stored_again, "ingestion to resume", timeout=10)
    finally:
        await proxy.stop()

    assert set(answers) <= {200, 503}
    stored = [d["msgid"] for d in await dns(engine)]
    assert stored == ["before", "after"]  # no 200 for a DN that was not stored, none lost


async def test_queue_full_answers_503_immediately(db_url: str, engine: AsyncEngine) -> None:
    async with relay_with(db_url, dn_queue_max=1) as relay:
        writer = relay.state.dn_writer
        async with writer_blocked(db_url, "held"):
            first = asyncio.create_task(relay.client.get(HOOK, params=dn_params("held")))
            await until(lambda: writer.in_flight == 1, "the writer to take the first DN")
            # Of the msgid in flight, so it waits in the queue (another msgid would not).
            second = asyncio.create_task(
                relay.client.get(HOOK, params=dn_params("held", "UNDELIVERED", "501"))
            )
            await until(lambda: writer.queue_depth == 1, "the second DN to queue")

            started = time.monotonic()
            refused = await relay.client.get(HOOK, params=dn_params("refused"))
            assert time.monotonic() - started < 1.0
        first_r, second_r = await first, await second

    assert refused.status_code == 503
    assert "queue is full" in refused.json()["detail"]
    assert (first_r.status_code, second_r.status_code) == (200, 200)
    assert [(d["msgid"], d["status"]) for d in await dns(engine)] == [
        ("held", "DELIVERED"),
        ("held", "UNDELIVERED"),
    ]


async def test_stop_drains_every_queued_dn_and_answers_200(
    db_url: str, engine: AsyncEngine
) -> None:
    async with relay_with(db_url) as relay:
        writer = relay.state.dn_writer
        async with writer_blocked(db_url, "m0"):
            first = asyncio.create_task(relay.client.post(HOOK, data=dn_params("m0")))
            await until(lambda: writer.in_flight == 1, "the writer to take the first DN")
            # Of the msgid in flight, so they wait in the queue (other msgids would not).
            queued = [
                asyncio.create_task(
                    relay.client.post(HOOK, json=dn_params("m0", "UNDELIVERED", f"50{i}"))
                )
                for i in range(1, 10)
            ]
            await until(lambda: writer.queue_depth == 9, "nine DNs to queue")
            stopping = asyncio.create_task(writer.stop())
            await until(lambda: writer._closing, "stop() to begin")
            late = await relay.client.post(HOOK, data=dn_params("late"))
        await stopping
        answers = [await t for t in (first, *queued)]

    assert [r.status_code for r in answers] == [200] * 10
    assert late.status_code == 503  # refused once stopping, never queued and dropped
    stored = await dns(engine)
    assert [(d["msgid"], d["error_code"]) for d in stored] == [("m0", "000")] + [
        ("m0", f"50{i}") for i in range(1, 10)
    ]


async def test_one_bad_row_does_not_fail_its_batch(relay: Relay, engine: AsyncEngine) -> None:
    def dn(msgid: str, status: Any = "DELIVERED") -> InboundDN:
        return InboundDN(msgid, status, "000", "Delivered", None, "{}", time.time())

    batch = [dn("a"), dn("b"), dn("bad", status=None), dn("c"), dn("d")]
    results = await asyncio.gather(
        *(relay.state.dn_writer.store(d) for d in batch), return_exceptions=True
    )

    assert [type(r).__name__ for r in results] == [
        "NoneType",
        "NoneType",
        DNStoreError.__name__,
        "NoneType",
        "NoneType",
    ]
    assert [d["msgid"] for d in await dns(engine)] == ["a", "b", "c", "d"]


async def test_arrival_order_is_the_receipt_sequence(relay: Relay, engine: AsyncEngine) -> None:
    writer = relay.state.dn_writer
    dns_in = [
        InboundDN("same", s, None, None, None, "{}", time.time())
        for s in ["DELIVERED", "UNDELIVERED", "DELIVERED", "EXPIRED", "UNDELIVERED"] * 20
    ]
    await asyncio.gather(*(writer.store(d) for d in dns_in))  # one or a few batches

    stored = await dns(engine, "same")
    assert [d["status"] for d in stored] == [d.status for d in dns_in]


async def test_a_blocked_batch_holds_up_only_its_msgids_dns(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """A batch waiting in the database (here for a lock another transaction holds) delays
    the DNs of its msgid, which keep their arrival order, and no other DN: those go in a
    batch of their own and are answered meanwhile."""
    writer = relay.state.dn_writer

    def dn(msgid: str, status: str) -> InboundDN:
        return InboundDN(msgid, status, None, None, None, "{}", time.time())

    async with writer_blocked(db_url, "held"):
        first = asyncio.create_task(writer.store(dn("held", "DELIVERED")))
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the first batch to wait for the lock")
        later = asyncio.create_task(writer.store(dn("held", "UNDELIVERED")))
        await writer.store(dn("free", "DELIVERED"))  # answered while "held" waits
        assert not first.done() and not later.done()
        assert [d["status"] for d in await dns(engine, "free")] == ["DELIVERED"]
        assert await dns(engine, "held") == []
    await asyncio.gather(first, later)

    stored = await dns(engine, "held")
    assert [d["status"] for d in stored] == ["DELIVERED", "UNDELIVERED"]
    assert stored[0]["id"] < stored[1]["id"]


# ---- listing ------------------------------------------------------------------------------


async def test_listing_unmatched_msgid_and_keyset_pages(relay: Relay, engine: AsyncEngine) -> None:
    await add_message(engine, "known")
    for msgid in ["orphan-1", "known", "orphan-2", "known", "orphan-1"]:
        assert (await relay.client.get(HOOK, params=dn_params(msgid))).status_code == 200

    everything = (await relay.client.get("/v1/delivery-notifications")).json()
    assert [i["msgid"] for i in everything["items"]] == [
        "orphan-1",
        "known",
        "orphan-2",
        "known",
        "orphan-1",
    ][::-1]
    assert everything["next_cursor"] is None
    item = everything["items"][0]
    assert set(item) == {
        "id",
        "seq",
        "msgid",
        "status",
        "error_code",
        "error_description",
        "error_category",
        "msisdn",
        "received_at",
        "message_id",
    }
    assert item["seq"] == item["id"]
    assert item["error_category"] == "none"  # DELIVERED, 000

    unmatched = (
        await relay.client.get("/v1/delivery-notifications", params={"unmatched": "true"})
    ).json()
    assert [i["msgid"] for i in unmatched["items"]] == ["orphan-1", "orphan-2", "orphan-1"]
    assert all(i["message_id"] is None for i in unmatched["items"])

    by_msgid = (
        await relay.client.get("/v1/delivery-notifications", params={"msgid": "known"})
    ).json()
    assert [i["msgid"] for i in by_msgid["items"]] == ["known", "known"]

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "unmatched": "false"}
        if cursor:
            params["cursor"] = cursor
        page = (await relay.client.get("/v1/delivery-notifications", params=params)).json()
        seen += [i["seq"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 5


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"limit": 501}, 422, "validation_error"),
        ({"limit": 0}, 422, "validation_error"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, 400, "invalid_cursor"),
        ({"cursor": "%%%"}, 400, "invalid_cursor"),
        ({"unmatched": "perhaps"}, 422, "validation_error"),
    ],
)
async def test_listing_refuses_bad_parameters(
    relay: Relay, params: dict[str, Any], status: int, error: str
) -> None:
    response = await relay.client.get("/v1/delivery-notifications", params=params)

    assert response.status_code == status
    assert response.json()["error"] == error


async def test_listing_needs_an_api_key_and_error_codes_do_not(relay: Relay) -> None:
    async def anonymous(path: str) -> httpx.Response:
        request = relay.client.build_request("GET", path)
        del request.headers["Authorization"]
        return await relay.client.send(request)

    listing = await anonymous("/v1/delivery-notifications")
    codes = await anonymous("/v1/error-codes")

    assert listing.status_code == 401
    assert codes.status_code == 200
    tables = codes.json()
    assert {
        "code": "000",
        "description": tables["dn_error_codes"][0]["description"],
        "category": "none",
    } in tables["dn_error_codes"]
    assert any(c["code"] == "200" for c in tables["submit_codes"])


# ---- real concurrent transactions (Postgres) ----------------------------------------------


async def test_dn_waits_for_a_send_recording_its_ref_and_ends_matched(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """The send path holds the ref's lock with the ref written but not committed; the DN's
    batch waits for it, then sees the ref and applies the DN to the message."""
    message_id = await add_message(engine, None)
    send = await asyncpg.connect(pg_dsn(db_url))
    try:
        # Nothing to attach yet: the DN is not inserted.
        await begin_recording_refs(send, {message_id: "race-1"})
        hook = asyncio.create_task(
            relay.client.get(HOOK, params=dn_params("race-1", "UNDELIVERED", "510"))
        )
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the DN batch to wait for the lock")
        await send.execute("COMMIT")
    finally:
        await send.close()
    response = await hook

    assert response.status_code == 200
    msg = await message(engine, message_id)
    assert (msg["status"], msg["error_code"], msg["dn_count"]) == ("undelivered", "510", 1)


async def test_send_waits_for_an_uncommitted_dn_and_attaches_it(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """DN before message: the DN's transaction holds the lock with the DN inserted (no message
    has its ref yet); the send recording that ref waits, then attaches the DN."""
    message_id = await add_message(engine, None)
    dn_conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(
            dn_conn, [InboundDN("race-2", "DELIVERED", "000", "Delivered", None, "{}", time.time())]
        )

        async def send_path() -> None:
            send = await asyncpg.connect(pg_dsn(db_url))
            try:
                await begin_recording_refs(send, {message_id: "race-2"})
                await send.execute("COMMIT")
            finally:
                await send.close()

        sending = asyncio.create_task(send_path())
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the send to wait for the DN's lock")
        await dn_conn.execute("COMMIT")
        await sending
    finally:
        await dn_conn.close()

    msg = await message(engine, message_id)
    assert (msg["status"], msg["delivery_status"], msg["dn_count"]) == ("delivered", "DELIVERED", 1)


async def test_newer_dn_waits_for_an_older_open_batch_on_the_same_msgid(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    message_id = await add_message(engine, "race-3")
    older = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(
            older, [InboundDN("race-3", "DELIVERED", "000", "Delivered", None, "{}", time.time())]
        )
        newer = asyncio.create_task(
            relay.client.get(HOOK, params=dn_params("race-3", "UNDELIVERED", "501"))
        )
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the newer DN to wait")
        await older.execute("COMMIT")
        assert (await newer).status_code == 200
    finally:
        await older.close()

    msg = await message(engine, message_id)
    assert (msg["status"], msg["error_code"], msg["dn_count"]) == ("undelivered", "501", 2)
    first, second = await dns(engine, "race-3")
    assert first["id"] < second["id"] and msg["last_dn_seq"] == second["id"]


_RAW_INSERT = """
INSERT INTO delivery_notifications (msgid, status, raw, received_at, message_id)
VALUES ($1, $2, '{}', now(), $3) RETURNING id
"""


@pytest.mark.parametrize("older_refreshes_first", [False, True])
async def test_late_commit_never_overwrites_newer_dn(
    db_url: str, engine: AsyncEngine, older_refreshes_first: bool
) -> None:
    """The rule without the lock's help: two transactions, the one holding the older DN
    commits last, in both orders of their refreshes. The message ends with the newer DN."""
    message_id = await add_message(engine, "race-4")
    dsn = pg_dsn(db_url)
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        older_id = await a.fetchval(_RAW_INSERT, "race-4", "DELIVERED", message_id)
        newer_id = await b.fetchval(_RAW_INSERT, "race-4", "UNDELIVERED", message_id)
        assert older_id < newer_id
        if older_refreshes_first:
            await refresh_messages(a, [message_id])  # holds the message row
            newer = asyncio.create_task(refresh_messages(b, [message_id]))
            await until(lambda: lock_waiters(dsn), "the newer refresh to wait for the row")
            await ta.commit()
            await newer
            await tb.commit()
        else:
            await refresh_messages(b, [message_id])
            await tb.commit()
            await refresh_messages(a, [message_id])  # late: sees the newer DN
            await ta.commit()
    finally:
        await a.close()
        await b.close()

    msg = await message(engine, message_id)
    assert (msg["status"], msg["last_dn_seq"]) == ("undelivered", newer_id)
    # dn_count is exact only under the per-msgid lock every real writer takes: here the
    # waiting refresh counted with a snapshot from before the older DN committed.


async def test_dn_sequence_is_a_database_sequence(db_url: str, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        default = await conn.scalar(
            text(
                "SELECT column_default FROM information_schema.columns "
                "WHERE table_name = 'delivery_notifications' AND column_name = 'id'"
            )
        )
    assert "nextval" in str(default)


async def test_one_batch_moves_each_message_to_its_newest_dn_and_adds_its_count(
    db_url: str, engine: AsyncEngine
) -> None:
    """The writer's one-statement batch (Postgres): several DNs of one message in one batch,
    counts added across batches, a DN with no message, and never a step backwards."""
    first = await add_message(engine, "batch-1")
    second = await add_message(engine, "batch-2")
    now = time.time()

    def dn(msgid: str, status: str, code: str) -> InboundDN:
        return InboundDN(msgid, status, code, f"desc {code}", None, "{}", now)

    conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(
            conn,
            [
                dn("batch-1", "UNDELIVERED", "501"),
                dn("batch-2", "DELIVERED", "000"),
                dn("batch-1", "DELIVERED", "000"),
                dn("nobody", "DELIVERED", "000"),
                dn("batch-1", "ACCEPTED", "000"),  # last received: not final
            ],
        )
        await conn.execute("COMMIT")
        one, two = await message(engine, first), await message(engine, second)
        assert (one["status"], one["delivery_status"]) == ("pending", "ACCEPTED")
        assert one["dn_count"] == 3
        assert one["last_dn_seq"] == (await dns(engine, "batch-1"))[-1]["id"]
        assert (two["status"], two["dn_count"], two["error_code"]) == ("delivered", 1, "000")

        await begin_and_store(conn, [dn("batch-1", "UNDELIVERED", "510")])
        await conn.execute("COMMIT")
        one = await message(engine, first)
        assert (one["status"], one["error_code"], one["dn_count"]) == ("undelivered", "510", 4)
        assert one["error_description"] == "desc 510" and one["final_at"] is not None

        # A newer DN already applied (as a late commit would find it): the count still grows,
        # the delivery fields stay.
        await conn.execute("UPDATE messages SET last_dn_seq = 1000000000 WHERE id = $1", first)
        await begin_and_store(conn, [dn("batch-1", "DELIVERED", "000")])
        await conn.execute("COMMIT")
        one = await message(engine, first)
        assert (one["status"], one["error_code"], one["dn_count"]) == ("undelivered", "510", 5)
    finally:
        await conn.close()


async def test_every_field_of_a_batch_arrives_as_sent_in_arrival_order(
    db_url: str, engine: AsyncEngine
) -> None:
    """The batch travels as one JSON text (`store_batch`): text that JSON must escape, text
    outside ASCII, absent fields, a receipt time to the microsecond and the arrival order all
    come out of the database as they went in."""
    base = 1_764_560_000.123456
    tricky = [
        ('say "hi" \\ back\\slash', "Kedah: Sungai Petani, été ✓ 😀"),
        ("\\u0000 is six characters", '{"nested": "json", "n": [1, 2.5e-7]}'),
        ("tab\tnewline\nreturn\r", "[]"),
    ]
    sent = [
        InboundDN(
            f"json-{index:02d}",
            "DELIVERED",
            None if index % 3 == 0 else f"{index:03d}",
            description,
            None if index % 2 else "60123240066",
            raw,
            base + index / 1e6,
        )
        for index, (description, raw) in enumerate(tricky * 5)
    ]
    conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(conn, sent)
        await conn.execute("COMMIT")
    finally:
        await conn.close()
    stored = await dns(engine)
    assert [row["msgid"] for row in stored] == [dn.msgid for dn in sent]
    assert [
        (r["status"], r["error_code"], r["error_description"], r["msisdn"], r["raw"])
        for r in stored
    ] == [(d.status, d.error_code, d.error_description, d.msisdn, d.raw) for d in sent]
    assert [round(r["received_at"].timestamp(), 6) for r in stored] == [
        round(d.received_ts, 6) for d in sent
    ]


async def test_writer_opens_its_connections_before_the_first_dn(db_url: str) -> None:
    """A burst right after a start does not wait for connection set-up (Postgres)."""
    async with relay_with(db_url) as relay:
        assert relay.state.engine.pool.checkedin() >= PIPELINE  # type: ignore[attr-defined]
        response = await relay.client.get(HOOK, params=dn_params("warm-1"))
        assert response.status_code == 200


async def test_send_answer_waits_for_an_uncommitted_dn_batch_and_attaches_it(
    db_url: str, relay: Relay, engine: AsyncEngine
) -> None:
    """The send path's own recording (BEGIN with the locks in one round trip, the update,
    COMMIT): it waits for a DN batch holding the ref's lock, then attaches that DN."""
    message_id = await add_message(engine, None)
    entry = Entry(Destination("60123240066", "sms"), "gsm7", 1, id=message_id)
    entry.status, entry.ref, entry.answered = "pending", "race-5", True
    dn_conn = await asyncpg.connect(pg_dsn(db_url))
    try:
        await begin_and_store(
            dn_conn, [InboundDN("race-5", "DELIVERED", "000", "Delivered", None, "{}", time.time())]
        )
        recording = asyncio.create_task(
            relay.state.send_service.writer.record(Answer("s", [entry], "tester"))
        )
        await until(lambda: lock_waiters(pg_dsn(db_url)), "the answer to wait for the DN's lock")
        await dn_conn.execute("COMMIT")
        await recording
    finally:
        await dn_conn.close()

    msg = await message(engine, message_id)
    assert (msg["ref"], msg["status"], msg["dn_count"]) == ("race-5", "delivered", 1)
    assert [d["message_id"] for d in await dns(engine, "race-5")] == [message_id]
    # Its connection went back to the pool out of its (manual) transaction.
    async with engine.connect() as conn:
        open_transactions = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%'"
            )
        )
    assert open_transactions == 0
