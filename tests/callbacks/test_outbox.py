"""The outbox: the database writes one event per real change of a message, in the change's
own transaction, whichever statement makes it."""

from __future__ import annotations

import asyncpg
import httpx

from app.bulk360.simulator import Simulator
from tests.callbacks.conftest import events, insert_message, record_answer
from tests.conftest import DN_TOKEN, RelayFactory


async def _dn(client: httpx.AsyncClient, msgid: str, status: str, code: str = "000") -> None:
    response = await client.get(
        f"/dn/{DN_TOKEN}", params={"msgid": msgid, "status": status, "error-code": code}
    )
    assert response.status_code == 200


async def test_one_event_per_change_and_none_for_a_duplicate_dn(
    db: asyncpg.Connection, make_relay: RelayFactory, simulator: Simulator
) -> None:
    url = "http://receiver.test/hook"
    message_id = await insert_message(db, url)
    assert await events(db) == []  # recording the row before the upstream call is no change

    await record_answer(db, message_id, "REF-OUTBOX-1")
    async with make_relay(simulator.base_url) as relay:
        await _dn(relay.client, "REF-OUTBOX-1", "DELIVERED")
        await _dn(relay.client, "REF-OUTBOX-1", "DELIVERED")  # duplicate: changes nothing
        await _dn(relay.client, "REF-OUTBOX-1", "UNDELIVERED", "501")

    rows = await events(db, message_id)
    assert [(e["version"], e["status"], e["delivery_status"], e["error_code"]) for e in rows] == [
        (1, "pending", None, None),
        (2, "delivered", "DELIVERED", "000"),
        (3, "undelivered", "UNDELIVERED", "501"),
    ]
    assert rows[1]["dn_count"] == 1 and rows[2]["dn_count"] == 3  # the snapshot at that change
    assert all(e["url"] == url for e in rows)
    message = await db.fetchrow("SELECT version, dn_count FROM messages WHERE id = $1", message_id)
    assert (message["version"], message["dn_count"]) == (3, 3)


async def test_an_unknown_answer_is_an_event_although_the_status_stays_unknown(
    db: asyncpg.Connection,
) -> None:
    message_id = await insert_message(db, "http://receiver.test/hook")
    # What the send path records when the provider may have acted (timeout, dropped
    # connection): still unknown, no ref, only the description of what happened.
    await db.execute(
        "UPDATE messages SET submit_desc = 'timed out', updated_at = now() WHERE id = $1",
        message_id,
    )
    await db.execute(  # recording the same answer again (a retried COMMIT): no change
        "UPDATE messages SET submit_desc = 'timed out', updated_at = now() WHERE id = $1",
        message_id,
    )
    rows = await events(db, message_id)
    assert [(e["version"], e["status"]) for e in rows] == [(1, "unknown")]


async def test_versions_count_without_callback_url_and_no_event_is_written(
    db: asyncpg.Connection,
) -> None:
    message_id = await insert_message(db, None)
    await record_answer(db, message_id, "REF-OUTBOX-2")
    await db.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", message_id)
    assert await db.fetchval("SELECT version FROM messages WHERE id = $1", message_id) == 2
    assert await events(db) == []


async def test_the_event_belongs_to_the_changes_transaction(db: asyncpg.Connection) -> None:
    message_id = await insert_message(db, "http://receiver.test/hook")
    async with db.transaction():
        await record_answer(db, message_id, "REF-OUTBOX-3")
        assert len(await events(db, message_id)) == 1  # visible inside it...
    transaction = db.transaction()
    await transaction.start()
    await db.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", message_id)
    await transaction.rollback()
    # ...and a rolled-back change leaves neither the change nor its event.
    assert [e["version"] for e in await events(db, message_id)] == [1]


async def test_deleting_a_message_deletes_its_events(db: asyncpg.Connection) -> None:
    message_id = await insert_message(db, "http://receiver.test/hook")
    await record_answer(db, message_id, "REF-OUTBOX-4")
    await db.execute("DELETE FROM messages WHERE id = $1", message_id)
    assert await events(db) == []
