"""The console's failed sign-in throttle, in PostgreSQL: the delay grows and is bounded, a
success or 15 minutes forget, replicas share it, parallel attempts gain nothing, the sweep
purges what is forgotten.

Time passes by moving the table's timestamps back (never by sleeping): the throttle reads
only the database's clock, so that is the same to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.console import throttle
from app.outcomes import retention
from tests.conftest import TEST_API_KEY, Relay
from tests.console.helpers import csrf_token, sign_in

MakeRelay = Callable[..., AbstractAsyncContextManager[Relay]]
ADDRESS = "10.0.0.1"
TOO_MANY = "Too many failed sign-ins from your address: try again in"


async def pass_time(engine: AsyncEngine, seconds: float) -> None:
    """As if `seconds` went by for every address the throttle holds."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE console_sign_in_failures SET "
                "last_failure_at = last_failure_at - make_interval(secs => :s), "
                "next_try_at = next_try_at - make_interval(secs => :s)"
            ),
            {"s": seconds},
        )


async def rows(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT address, failures FROM console_sign_in_failures"))
        return {address: failures for address, failures in result.all()}


async def test_delay_grows_is_bounded_and_a_success_forgets(engine: AsyncEngine) -> None:
    delays = []
    for _ in range(9):
        assert await throttle.try_now(engine, ADDRESS) is None
        delay = await throttle.failed(engine, ADDRESS)
        wait = await throttle.try_now(engine, ADDRESS)  # refused until the delay is over
        assert wait is not None and delay - 0.5 < wait <= delay
        delays.append(delay)
        await pass_time(engine, delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert await throttle.try_now(engine, "10.0.0.2") is None  # another address: unaffected
    await throttle.succeeded(engine, "10.0.0.2")
    assert await throttle.try_now(engine, ADDRESS) is None
    await throttle.succeeded(engine, ADDRESS)
    assert await rows(engine) == {}
    assert await throttle.try_now(engine, ADDRESS) is None  # forgotten: from the start
    assert await throttle.failed(engine, ADDRESS) == throttle.FIRST_DELAY_S


async def test_an_address_is_forgotten_after_fifteen_minutes(engine: AsyncEngine) -> None:
    for _ in range(8):
        assert await throttle.try_now(engine, ADDRESS) is None
        await pass_time(engine, await throttle.failed(engine, ADDRESS))
    assert await throttle.try_now(engine, ADDRESS) is None
    assert await throttle.failed(engine, ADDRESS) == throttle.MAX_DELAY_S
    await pass_time(engine, throttle.FORGET_AFTER_S - 1)
    assert await throttle.try_now(engine, ADDRESS) is None
    assert await throttle.failed(engine, ADDRESS) == throttle.MAX_DELAY_S  # not yet forgotten
    await pass_time(engine, throttle.FORGET_AFTER_S + 1)
    assert await throttle.try_now(engine, ADDRESS) is None
    assert await throttle.failed(engine, ADDRESS) == throttle.FIRST_DELAY_S


async def test_parallel_attempts_get_one_try(engine: AsyncEngine) -> None:
    # A new address, then one with failures whose wait is over: one try each time.
    for _ in range(2):
        answers = await asyncio.gather(*(throttle.try_now(engine, ADDRESS) for _ in range(20)))
        assert answers.count(None) == 1
        assert all(0 < wait <= 2 for wait in answers if wait is not None)
        await pass_time(engine, await throttle.failed(engine, ADDRESS))


async def test_wrong_key_is_refused_then_the_address_waits(
    relay: Relay, engine: AsyncEngine
) -> None:
    refused = await sign_in(relay.client, "wrong-key")
    assert refused.status_code == 401
    assert "That API key is not valid." in refused.text
    # Even the right key is not looked at before the wait is over.
    early = await sign_in(relay.client)
    assert early.status_code == 429
    assert f"{TOO_MANY} 1 s." in early.text
    assert early.headers["retry-after"] == "1"
    await pass_time(engine, 1)
    assert (await sign_in(relay.client)).status_code == 303
    assert await rows(engine) == {}  # a success forgets the address


async def test_replicas_share_the_throttle(make_relay: MakeRelay, engine: AsyncEngine) -> None:
    async with make_relay(None) as one, make_relay(None) as two:
        assert (await sign_in(one.client, "wrong-key")).status_code == 401
        assert (await sign_in(one.client, "wrong-key")).status_code == 429
        other = await sign_in(two.client)  # the right key, through the other replica
        assert other.status_code == 429 and TOO_MANY in other.text
        await pass_time(engine, 1)
        assert (await sign_in(two.client, "wrong-key")).status_code == 401
        again = await sign_in(one.client)
        assert again.status_code == 429 and again.headers["retry-after"] == "2"


async def test_parallel_wrong_sign_ins_check_one_key(relay: Relay, engine: AsyncEngine) -> None:
    token = csrf_token((await relay.client.get("/console/sign-in")).text)

    async def attempt(client: httpx.AsyncClient) -> int:
        form = {"api_key": "wrong-key", "csrf_token": token}
        return (await client.post("/console/sign-in", data=form)).status_code

    statuses = await asyncio.gather(*(attempt(relay.client) for _ in range(5)))
    assert sorted(statuses) == [401, 429, 429, 429, 429]
    assert await rows(engine) == {"127.0.0.1": 1}
    await pass_time(engine, 1)
    form = {"api_key": TEST_API_KEY, "csrf_token": token}
    assert (await relay.client.post("/console/sign-in", data=form)).status_code == 303


async def test_the_sweep_purges_forgotten_addresses(relay: Relay, engine: AsyncEngine) -> None:
    for address in ("old-1", "old-2", "recent"):
        assert await throttle.try_now(engine, address) is None
        await throttle.failed(engine, address)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE console_sign_in_failures SET last_failure_at = now() - interval "
                "'15 minutes 1 second' WHERE address LIKE 'old-%'"
            )
        )
    report = await relay.state.sweeper.run_once()
    assert report.sign_in_failures == 2
    assert await rows(engine) == {"recent": 1}
    assert await retention.purge_sign_in_failures(engine) == 0
