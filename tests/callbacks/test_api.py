"""GET /v1/callbacks: filters, keyset pages, 422s; what it shows of a URL (its host only)."""

from __future__ import annotations

import asyncpg
import pytest

from app.bulk360.simulator import Simulator
from tests.callbacks.conftest import insert_message, record_answer
from tests.conftest import RelayFactory


async def _three_events(db: asyncpg.Connection) -> int:
    message_id = await insert_message(db, "http://receiver.test/hook?token=s3cret")
    await record_answer(db, message_id, "REF-API-1")
    for status in ("delivered", "undelivered"):
        await db.execute("UPDATE messages SET status = $2 WHERE id = $1", message_id, status)
    return message_id


async def test_list_pages_newest_first_with_filters(
    db: asyncpg.Connection, make_relay: RelayFactory, simulator: Simulator
) -> None:
    message_id = await _three_events(db)
    other = await insert_message(db, "http://receiver.test/other")
    await record_answer(db, other, "REF-API-2")
    # No signing secret in live terms is not needed here: the dispatcher's attempts (to a
    # host that does not resolve) only change states, never the list's order.
    async with make_relay(simulator.base_url) as relay:
        first = await relay.client.get("/v1/callbacks", params={"limit": 2})
        assert first.status_code == 200
        page = first.json()
        assert [e["message_id"] for e in page["items"]] == [other, message_id]
        assert page["items"][0]["host"] == "receiver.test"
        assert "s3cret" not in first.text  # a URL's query may hold a token: never shown
        second = await relay.client.get(
            "/v1/callbacks", params={"limit": 2, "cursor": page["next_cursor"]}
        )
        rest = second.json()
        assert [e["version"] for e in rest["items"]] == [2, 1]
        assert rest["next_cursor"] is None
        mine = await relay.client.get("/v1/callbacks", params={"message_id": message_id})
        assert [e["version"] for e in mine.json()["items"]] == [3, 2, 1]
        later = await relay.client.get(
            "/v1/callbacks", params={"since": "2999-01-01T00:00:00Z", "state": "pending"}
        )
        assert later.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"limit": 501}, 422, "limit"),
        ({"state": "lost"}, 422, "state"),
        ({"since": "2026-11-30T10:00:00"}, 422, "since"),
        ({"since": "15"}, 422, "since"),
        ({"message_id": "x"}, 422, "message_id"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, 400, "cursor"),
    ],
)
async def test_bad_filters_are_refused_naming_the_field(
    make_relay: RelayFactory,
    simulator: Simulator,
    params: dict[str, object],
    status: int,
    field: str,
) -> None:
    async with make_relay(simulator.base_url) as relay:
        response = await relay.client.get("/v1/callbacks", params=params)
    assert response.status_code == status
    assert field in response.json()["detail"]


async def test_the_api_needs_an_api_key(make_relay: RelayFactory, simulator: Simulator) -> None:
    async with make_relay(simulator.base_url) as relay:
        listed = await relay.client.get("/v1/callbacks", headers={"Authorization": ""})
        redeliver = await relay.client.post(
            "/v1/callbacks/1/redeliver", headers={"Authorization": "Bearer nope"}
        )
    assert (listed.status_code, redeliver.status_code) == (401, 401)


async def test_a_message_lists_its_callback_events(
    db: asyncpg.Connection, make_relay: RelayFactory, simulator: Simulator
) -> None:
    message_id = await _three_events(db)
    async with make_relay(simulator.base_url) as relay:
        response = await relay.client.get("/v1/messages/REF-API-1")
    assert response.status_code == 200
    callbacks = response.json()["callbacks"]
    ids = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM callback_events WHERE message_id = $1 ORDER BY id", message_id
        )
    ]
    assert [c["id"] for c in callbacks] == ids
    assert set(callbacks[0]) == {
        "id",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
    }
