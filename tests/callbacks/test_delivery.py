"""Delivery: signed per Standard Webhooks, retried on the schedule, 410 stops, exhausted fails,
redeliver queues again, newer events supersede older ones, a dead receiver slows no other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.bulk360.simulator import Simulator
from app.callbacks import dispatcher as dispatcher_module
from app.callbacks.dispatcher import YIELD_CLAIM_MAX, YIELD_S
from app.notifications.writer import DNWriter
from tests.callbacks.conftest import (
    FAST_RETRIES,
    OTHER_SECRET,
    SECRET,
    Received,
    Receiver,
    events,
    insert_message,
    record_answer,
    run_receiver,
    wait_state,
)
from tests.conftest import Relay, RelayFactory
from tests.servers import free_port


@pytest.fixture
def relay_with_callbacks(make_relay: RelayFactory, simulator: Simulator) -> Any:
    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Relay]:
        settings: dict[str, Any] = {
            "callback_signing_secrets": SECRET,
            "callback_retry_s": FAST_RETRIES,
            "callback_timeout_s": 2.0,
            **overrides,
        }
        return make_relay(simulator.base_url, **settings)  # type: ignore[no-any-return]

    return factory


async def _event_for_new_message(db: asyncpg.Connection, url: str, ref: str) -> int:
    message_id = await insert_message(db, url)
    await record_answer(db, message_id, ref)
    [event] = await events(db, message_id)
    return int(event["id"])


async def _attempt_codes(db: asyncpg.Connection, event_id: int) -> list[int | None]:
    rows = await db.fetch(
        "SELECT status_code FROM callback_attempts WHERE event_id = $1 ORDER BY id", event_id
    )
    return [r["status_code"] for r in rows]


async def test_500_500_200_is_one_webhook_id_three_times_delivered_on_the_third(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    async with relay_with_callbacks():
        event_id = await _event_for_new_message(db, receiver.url, "REF-RETRY-1")
        row = await wait_state(db, event_id, "delivered")
    assert (row["attempts"], row["last_status_code"]) == (3, 200)
    assert await _attempt_codes(db, event_id) == [500, 500, 200]
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{event_id}"}
    assert len({r.body for r in receiver.received}) == 1  # a retry sends the same bytes
    payloads = receiver.verified(SECRET)  # the official library, as a receiver verifies
    assert payloads[0]["type"] == "message.status"
    data = payloads[0]["data"]
    assert data["ref"] == "REF-RETRY-1"
    assert (data["status"], data["version"], data["error_category"]) == ("pending", 1, "none")
    assert data["to"] == "60123240066" and data["channel"] == "sms"
    assert receiver.received[0].headers["User-Agent"].startswith("bulk360-relay/")
    assert receiver.received[0].headers["Content-Type"] == "application/json"


async def test_a_wrong_secret_fails_verification_and_every_rotated_secret_passes(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    async with relay_with_callbacks(callback_signing_secrets=f"{SECRET},{OTHER_SECRET}"):
        event_id = await _event_for_new_message(db, receiver.url, "REF-SIGN-1")
        await wait_state(db, event_id, "delivered")
    assert receiver.verified(SECRET) == receiver.verified(OTHER_SECRET)
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 2
    wrong = "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0wMDA="
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong).verify(receiver.received[0].body, receiver.received[0].headers)
    tampered = receiver.received[0].body.replace(b"pending", b"delivered")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, receiver.received[0].headers)


async def test_410_stops_the_event_for_good(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    receiver.statuses = [410]
    async with relay_with_callbacks():
        event_id = await _event_for_new_message(db, receiver.url, "REF-GONE-1")
        row = await wait_state(db, event_id, "gone")
    assert row["next_attempt_at"] is None
    assert await _attempt_codes(db, event_id) == [410]
    assert len(receiver.received) == 1


async def test_a_receiver_down_for_the_whole_schedule_fails_then_redeliver_delivers(
    db: asyncpg.Connection, relay_with_callbacks: Any
) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    url = f"http://127.0.0.1:{port}/hook"
    async with relay_with_callbacks() as relay:
        event_id = await _event_for_new_message(db, url, "REF-DOWN-1")
        row = await wait_state(db, event_id, "failed")
        assert row["attempts"] == 3  # the first attempt and one per delay of the schedule
        assert await _attempt_codes(db, event_id) == [None, None, None]
        assert row["last_error"].startswith("connection failed")
        async with run_receiver(port=port) as receiver:
            response = await relay.client.post(f"/v1/callbacks/{event_id}/redeliver")
            assert response.status_code == 202
            assert response.json() == {"id": event_id, "state": "pending"}
            row = await wait_state(db, event_id, "delivered")
            assert len(receiver.verified()) == 1
        again = await relay.client.post(f"/v1/callbacks/{event_id}/redeliver")
        assert again.status_code == 409 and again.json()["error"] == "callback_not_redeliverable"
        missing = await relay.client.post("/v1/callbacks/999999/redeliver")
        assert missing.status_code == 404
    assert row["attempts"] == 1  # a fresh schedule; the history stays in callback_attempts
    assert await _attempt_codes(db, event_id) == [None, None, None, 200]


async def test_retry_after_on_429_is_honoured_when_longer(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    receiver.statuses = [429]
    receiver.headers = {"Retry-After": "1"}
    async with relay_with_callbacks():
        event_id = await _event_for_new_message(db, receiver.url, "REF-429-1")
        await wait_state(db, event_id, "delivered", timeout=15)
    first, second = receiver.received
    assert second.at - first.at >= 1.0  # not the schedule's 50 ms


@contextlib.asynccontextmanager
async def _held_receiver() -> AsyncIterator[tuple[Receiver, asyncio.Event]]:
    """A receiver that holds every request until `release` is set."""
    release = asyncio.Event()

    async def respond(_item: Received) -> int:
        await release.wait()
        return 200

    async with run_receiver(Receiver(respond=respond)) as receiver:
        yield receiver, release


async def test_newer_changes_supersede_an_older_event_and_never_overtake_one_in_flight(
    db: asyncpg.Connection, relay_with_callbacks: Any
) -> None:
    async with _held_receiver() as (receiver, release), relay_with_callbacks():
        message_id = await insert_message(db, receiver.url)
        await record_answer(db, message_id, "REF-ORDER-1")  # version 1: in flight, held
        await receiver.wait_for(1)
        for status in ("delivered", "undelivered", "delivered"):  # versions 2, 3, 4
            await db.execute("UPDATE messages SET status = $2 WHERE id = $1", message_id, status)
        release.set()
        rows = await events(db, message_id)
        await wait_state(db, rows[-1]["id"], "delivered")
        rows = await events(db, message_id)
    assert [(e["version"], e["state"]) for e in rows] == [
        (1, "delivered"),
        (2, "superseded"),
        (3, "superseded"),
        (4, "delivered"),
    ]
    assert [p["data"]["version"] for p in receiver.verified()] == [1, 4]


async def test_a_receiver_that_never_answers_does_not_hold_up_the_others(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    async with (
        _held_receiver() as (dead, release),
        relay_with_callbacks(callback_concurrency=8, callback_timeout_s=5.0),
    ):
        dead_events = [
            await _event_for_new_message(db, dead.url, f"REF-DEAD-{i}") for i in range(20)
        ]
        good_events = [
            await _event_for_new_message(db, receiver.url, f"REF-GOOD-{i}") for i in range(20)
        ]
        await receiver.wait_for(20)
        # Every good event went through while the dead receiver still holds its first
        # attempts (5 s timeout): no dead attempt has finished, and only its share of the
        # slots was ever in flight there (half of 8, soft by less than one claim of 2).
        assert (
            await db.fetchval(
                "SELECT count(*) FROM callback_attempts WHERE event_id = ANY($1)", dead_events
            )
            == 0
        )
        assert 4 <= len(dead.received) <= 5
        for event_id in good_events:
            await wait_state(db, event_id, "delivered")
        release.set()  # the relay stops without waiting for the held attempts' timeout


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_attempts_outcomes_and_latency_are_in_the_metrics(
    db: asyncpg.Connection, relay_with_callbacks: Any, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    names = (
        'relay_callback_attempts_total{outcome="5xx"}',
        'relay_callback_attempts_total{outcome="2xx"}',
        'relay_callback_events_total{state="delivered"}',
        "relay_callback_delivery_seconds_count",
    )
    async with relay_with_callbacks() as relay:
        before = (await relay.client.get("/metrics")).text
        event_id = await _event_for_new_message(db, receiver.url, "REF-METRICS-1")
        await wait_state(db, event_id, "delivered")
        after = (await relay.client.get("/metrics")).text
    assert [_metric(after, n) - _metric(before, n) for n in names] == [1, 1, 1, 1]
    assert "relay_callback_pending" in after and "relay_callback_oldest_pending_seconds" in after


async def test_while_dns_pour_in_claims_are_small_and_spaced_yet_every_event_goes_out(
    db: asyncpg.Connection,
    relay_with_callbacks: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DN bursts come first: while the DN writer is busy, one claim per YIELD_S of at most
    YIELD_CLAIM_MAX events; the events wait in the table, none is lost or starved."""
    monkeypatch.setattr(DNWriter, "busy", property(lambda self: True))
    async with relay_with_callbacks():
        ids = [
            await _event_for_new_message(db, receiver.url, f"REF-BUSY-{i}")
            for i in range(2 * YIELD_CLAIM_MAX + 8)  # three claims' worth
        ]
        await receiver.wait_for(2 * YIELD_CLAIM_MAX + 8)
        for event_id in ids:
            await wait_state(db, event_id, "delivered")

    # When each attempt started, as the dispatcher recorded it (not when it reached the
    # receiver: the first connection's set-up on a loaded machine blurred that by 0.1 s).
    started = [
        row[0]
        for row in await db.fetch(
            "SELECT extract(epoch FROM attempted_at)::float8 FROM callback_attempts"
            " WHERE event_id = ANY($1) ORDER BY attempted_at",
            ids,
        )
    ]
    # A claim takes YIELD_CLAIM_MAX events at most, and the next comes YIELD_S later.
    assert started[YIELD_CLAIM_MAX] - started[0] >= YIELD_S - 0.05
    assert started[2 * YIELD_CLAIM_MAX] - started[0] >= 2 * YIELD_S - 0.05
    assert len({r.event["data"]["ref"] for r in receiver.received}) == 2 * YIELD_CLAIM_MAX + 8


async def test_a_backlog_of_superseded_versions_drains_without_waiting_for_the_poll(
    db: asyncpg.Connection,
    relay_with_callbacks: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a DN burst most due events are older versions of a message: a claim supersedes
    them rather than claiming them. It claims again at once while its due set comes back
    full and it got somewhere, instead of waiting for a NOTIFY or the poll (set to a minute
    here: no NOTIFY comes for events committed before the relay listened)."""
    monkeypatch.setattr(dispatcher_module, "POLL_S", 60.0)
    finals: dict[str, str] = {}
    for i in range(12):
        message_id = await insert_message(db, receiver.url)
        await record_answer(db, message_id, f"REF-BACKLOG-{i}")
        for status in ("delivered", "undelivered", "delivered"):  # three newer versions
            await db.execute("UPDATE messages SET status = $2 WHERE id = $1", message_id, status)
        finals[f"REF-BACKLOG-{i}"] = "delivered"
    assert len(await events(db)) == 12 * 4

    # 8 slots: claims of 2 events, each due set the 2 oldest (stale) versions at first.
    async with relay_with_callbacks(callback_concurrency=8):
        await receiver.wait_for(12)

    got = {r.event["data"]["ref"]: r.event["data"]["status"] for r in receiver.received}
    assert got == finals  # the newest version of each message, once
    assert len(receiver.received) == 12
