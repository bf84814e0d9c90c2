"""End to end: a send with `callback_url`, the simulator's DNs, the relay on a real socket,
a receiver on another: the receiver ends on the message's final state."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from app.bulk360.simulator import Simulator
from app.main import create_app
from tests.callbacks.conftest import (
    FAST_RETRIES,
    SECRET,
    Received,
    Receiver,
    run_receiver,
    wait_state,
)
from tests.conftest import TEST_API_KEY, RelayFactory, relay_settings
from tests.servers import bound_socket, free_port, serve_in_loop


async def test_delivered_then_undelivered_with_a_slow_receiver_ends_on_the_final_status(
    db_url: str,
) -> None:
    async def slow(_item: Received) -> int:
        await asyncio.sleep(0.3)  # the second DN lands while the first callback is on the wire
        return 200

    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = relay_settings(
        db_url,
        None,  # the built-in simulator, sending its DNs to this relay's socket
        public_base_url=base,
        sandbox_dn_delay_s=0,
        callback_signing_secrets=SECRET,
        callback_retry_s=FAST_RETRIES,
    )
    async with (
        run_receiver(Receiver(respond=slow)) as receiver,
        serve_in_loop(create_app(settings), sock),
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as c,
    ):
        sent = await c.post(
            "/v1/messages",
            json={"to": "60199993003", "text": "hello", "callback_url": receiver.url},
        )
        assert sent.status_code == 201, sent.text
        ref = sent.json()["messages"][0]["ref"]

        async def settled() -> bool:
            found = (await c.get(f"/v1/messages/{ref}")).json()
            done = {"delivered", "superseded"}
            return (
                found["dn_count"] == 2
                and all(cb["state"] in done for cb in found["callbacks"])
                and any(cb["state"] == "delivered" for cb in found["callbacks"][-1:])
            )

        async with asyncio.timeout(15):
            while not await settled():
                await asyncio.sleep(0.05)
        message = (await c.get(f"/v1/messages/{ref}")).json()

    payloads = receiver.verified(SECRET)
    versions = [p["data"]["version"] for p in payloads]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)  # never down
    last = payloads[-1]["data"]
    assert (last["status"], last["error_code"], last["error_category"]) == (
        message["status"],
        "501",
        "temporary",
    )
    assert last["status"] == "undelivered" and last["dn_count"] == 2


async def test_a_refused_callback_url_sends_nothing(
    make_relay: RelayFactory, simulator: Simulator
) -> None:
    async with make_relay(simulator.base_url, callback_allowed_hosts="billing.internal") as relay:
        for url, field in (
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("https://elsewhere.example/hook?token=abc", "CALLBACK_ALLOWED_HOSTS"),
            ("https://billing.internal/" + "x" * 2048, "callback_url"),
        ):
            response = await relay.client.post(
                "/v1/messages", json={"to": "60123240066", "text": "hi", "callback_url": url}
            )
            assert response.status_code == 422, response.text
            assert "callback_url" in response.json()["detail"] and field in response.text
    assert simulator.mt_requests == 0


async def test_the_url_is_stored_on_every_row_of_the_send_and_the_keys_default_applies(
    make_relay: RelayFactory, simulator: Simulator, db: asyncpg.Connection
) -> None:
    defaults = '{"tester": "https://billing.internal/sms-status"}'
    async with make_relay(simulator.base_url, callback_urls=defaults) as relay:
        mine = await relay.client.post(
            "/v1/messages",
            json={
                "to": ["60123240066", "60123240067"],
                "text": "hi",
                "callback_url": "https://mine.internal/x",
            },
        )
        default = await relay.client.post("/v1/messages", json={"to": "60123240068", "text": "hi"})
    assert (mine.status_code, default.status_code) == (201, 201)
    rows = await db.fetch("SELECT msisdn, callback_url FROM messages ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("60123240066", "https://mine.internal/x"),
        ("60123240067", "https://mine.internal/x"),
        ("60123240068", "https://billing.internal/sms-status"),
    ]
    # Each answer recorded is a change: one event per row, version 1.
    assert await db.fetchval("SELECT count(*) FROM callback_events WHERE version = 1") == 3


async def test_no_log_line_carries_a_callback_urls_path_or_query(
    make_relay: RelayFactory,
    simulator: Simulator,
    db: asyncpg.Connection,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/tenant-7?token=QUERYTOKEN"  # nothing listens
    async with make_relay(
        simulator.base_url, callback_retry_s=FAST_RETRIES, callback_signing_secrets=SECRET
    ) as relay:
        sent = await relay.client.post(
            "/v1/messages", json={"to": "60123240066", "text": "hi", "callback_url": url}
        )
        assert sent.status_code == 201
        [event] = await db.fetch("SELECT id FROM callback_events")
        await wait_state(db, event["id"], "failed")
    logged = capfd.readouterr()
    assert "callback_attempt_failed" in logged.err + logged.out  # the attempts were logged...
    assert "QUERYTOKEN" not in logged.err + logged.out  # ...by host only
    assert "tenant-7" not in logged.err + logged.out
