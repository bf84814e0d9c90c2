"""`bulk360-relay callback-receiver` (the sandbox tour's receiver) verifies what the relay
signs with the sandbox secret, and refuses what another secret signed."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from app.bulk360.simulator import Simulator
from app.callbacks.receiver import receiver_app
from app.config import SANDBOX_CALLBACK_SECRET
from tests.callbacks.conftest import (
    FAST_RETRIES,
    OTHER_SECRET,
    events,
    insert_message,
    record_answer,
    wait_state,
)
from tests.conftest import RelayFactory
from tests.servers import bound_socket


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bound_socket()
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/callbacks"


async def test_the_receiver_verifies_the_sandbox_signature_and_prints_the_event(
    db: asyncpg.Connection, make_relay: RelayFactory, simulator: Simulator
) -> None:
    printed: list[str] = []
    runner, url = await _serve(receiver_app([SANDBOX_CALLBACK_SECRET], printed))
    try:
        # Sandbox mode with no CALLBACK_SIGNING_SECRETS: the fixed sandbox secret signs.
        async with make_relay(simulator.base_url, callback_retry_s=FAST_RETRIES):
            message_id = await insert_message(db, url)
            await record_answer(db, message_id, "REF-TOUR-1")
            [event] = await events(db, message_id)
            await wait_state(db, event["id"], "delivered")
    finally:
        await runner.cleanup()
    assert printed == [
        f"msg_{event['id']} verified message.status v1 message {message_id} ref=REF-TOUR-1 "
        "status=pending delivery_status=None error_code=None (none)"
    ]


async def test_the_receiver_refuses_another_secret(
    db: asyncpg.Connection, make_relay: RelayFactory, simulator: Simulator
) -> None:
    printed: list[str] = []
    runner, url = await _serve(receiver_app([OTHER_SECRET], printed))
    try:
        async with make_relay(simulator.base_url, callback_retry_s=FAST_RETRIES):
            message_id = await insert_message(db, url)
            await record_answer(db, message_id, "REF-TOUR-2")
            [event] = await events(db, message_id)
            row = await wait_state(db, event["id"], "failed")
    finally:
        await runner.cleanup()
    assert row["last_status_code"] == 401
    assert len(printed) == 3 and all("SIGNATURE FAILED" in line for line in printed)
