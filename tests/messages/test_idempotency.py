"""Idempotency-Key: at most one upstream send per (API key, Idempotency-Key), within one process
and across two server processes on one Postgres database."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.simulator import Simulator
from app.config import hash_api_key
from app.db import utcnow
from app.models import IdempotencyKey, Message
from tests.conftest import DN_TOKEN, OTHER_API_KEY, TEST_API_KEY, Relay
from tests.servers import RelayProcess

SEND = "/v1/messages"
BODY = {"to": "60123240066,60166600267", "text": "Your OTP is 1234"}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def count(engine: AsyncEngine, model: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def test_same_key_and_body_replays_the_stored_answer_without_sending(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    first = await relay.client.post(SEND, json=BODY, headers=keyed("k-1"))
    again = await relay.client.post(SEND, json=BODY, headers=keyed("k-1"))
    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert simulator.mt_requests == 1 and len(simulator.sent) == 2
    assert await count(engine, Message) == 2


async def test_the_same_request_written_differently_is_the_same_request(
    relay: Relay, simulator: Simulator
) -> None:
    await relay.client.post(SEND, json=BODY, headers=keyed("k-2"))
    same = {"to": ["+60 12-324 0066", "016-660 0267"], "text": BODY["text"]}
    again = await relay.client.post(SEND, json=same, headers=keyed("k-2"))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert simulator.mt_requests == 1


async def test_same_key_with_a_different_body_is_refused(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    await relay.client.post(SEND, json=BODY, headers=keyed("k-3"))
    r = await relay.client.post(SEND, json={**BODY, "text": "other"}, headers=keyed("k-3"))
    assert r.status_code == 422
    assert r.json()["error"] == "idempotency_key_reused"
    assert simulator.mt_requests == 1 and await count(engine, Message) == 2


async def test_keys_are_scoped_per_api_key(relay: Relay, simulator: Simulator) -> None:
    await relay.client.post(SEND, json=BODY, headers=keyed("shared"))
    r = await relay.client.post(
        SEND, json=BODY, headers={**keyed("shared"), "Authorization": f"Bearer {OTHER_API_KEY}"}
    )
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    assert simulator.mt_requests == 2


async def test_error_answers_are_stored_and_replayed_too(
    relay: Relay, simulator: Simulator
) -> None:
    body = {"to": "60199990402", "text": "x"}
    first = await relay.client.post(SEND, json=body, headers=keyed("k-402"))
    again = await relay.client.post(SEND, json=body, headers=keyed("k-402"))
    assert first.status_code == again.status_code == 402
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert simulator.mt_requests == 1


async def test_a_request_while_the_first_is_in_flight_gets_409(
    make_relay: Any, simulator: Simulator
) -> None:
    simulator.config.slow_s = 0.5
    async with make_relay(simulator.base_url, bulk360_timeout_s=5) as relay:
        client = relay.state.bulk360
        real_post = client._post
        reached = asyncio.Event()

        async def signalling_post(
            path: str, form: Mapping[str, str], headers: Mapping[str, str]
        ) -> tuple[int, bytes]:
            if "to" in form:
                reached.set()
            return await real_post(path, form, headers)

        client._post = signalling_post  # type: ignore[method-assign]
        body = {"to": "60199990900", "text": "x"}
        first = asyncio.create_task(relay.client.post(SEND, json=body, headers=keyed("slow")))
        await reached.wait()
        during = await relay.client.post(SEND, json=body, headers=keyed("slow"))
        done = await first
        after = await relay.client.post(SEND, json=body, headers=keyed("slow"))
    assert during.status_code == 409
    assert during.json()["error"] == "idempotency_key_in_flight"
    assert done.status_code == 201
    assert after.status_code == 201 and after.headers["Idempotent-Replayed"] == "true"
    assert simulator.mt_requests == 1


async def test_an_expired_key_is_forgotten_and_may_send_again(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, idempotency_ttl_h=1e-9) as relay:
        await relay.client.post(SEND, json=BODY, headers=keyed("short"))
        r = await relay.client.post(SEND, json=BODY, headers=keyed("short"))
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    assert simulator.mt_requests == 2
    assert await count(engine, IdempotencyKey) == 1


async def test_expired_keys_of_everyone_are_purged_by_the_sweep(
    relay: Relay, engine: AsyncEngine
) -> None:
    past = utcnow() - timedelta(hours=1)
    async with engine.begin() as conn:
        await conn.execute(
            insert(IdempotencyKey),
            [
                {
                    "api_key_name": "other",
                    "key": f"old-{i}",
                    "request_hash": "x" * 64,
                    "created_at": past,
                    "expires_at": past,
                }
                for i in range(5)
            ],
        )
    await relay.client.post(SEND, json=BODY, headers=keyed("fresh"))
    # The periodic sweep (app/outcomes/sweeps.py), not the send path, purges them.
    assert relay.state.sweeper is not None
    await relay.state.sweeper.run_once()
    async with engine.connect() as conn:
        keys = (await conn.execute(select(IdempotencyKey.key))).scalars().all()
    assert keys == ["fresh"]


async def test_a_refused_request_claims_nothing(relay: Relay, engine: AsyncEngine) -> None:
    r = await relay.client.post(SEND, json={"to": "123", "text": "x"}, headers=keyed("bad"))
    assert r.status_code == 422
    assert await count(engine, IdempotencyKey) == 0


def assert_one_send(responses: list[httpx.Response], simulator: Simulator) -> None:
    fresh = [
        r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    ]
    others = Counter(
        "replay" if r.headers.get("Idempotent-Replayed") == "true" else r.status_code
        for r in responses
        if r not in fresh
    )
    assert len(fresh) == 1, others
    assert set(others) <= {"replay", 409}, others
    assert all(
        r.json() == fresh[0].json() for r in responses if r.headers.get("Idempotent-Replayed")
    )
    assert simulator.mt_requests == 1 and len(simulator.sent) == 2


async def test_100_concurrent_requests_with_one_key_send_once(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    responses = await asyncio.gather(
        *(relay.client.post(SEND, json=BODY, headers=keyed("burst")) for _ in range(100))
    )
    assert_one_send(list(responses), simulator)
    assert await count(engine, Message) == 2


async def test_100_concurrent_sends_on_a_cold_process_fetch_one_token(
    relay: Relay, simulator: Simulator
) -> None:
    responses = await asyncio.gather(
        *(relay.client.post(SEND, json={"to": f"6012{n:07d}", "text": "x"}) for n in range(100))
    )
    assert [r.status_code for r in responses] == [201] * 100
    assert simulator.token_requests == 1
    assert simulator.mt_requests == 100


@pytest.mark.slow
async def test_100_requests_with_one_key_across_two_processes_send_once(
    postgres_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": postgres_url,
        "BULK360_BASE_URL": simulator.base_url,
        "BULK360_MODE": "sandbox",
        "API_KEYS": f"tester:{hash_api_key(TEST_API_KEY)}",
        "DN_HOOK_TOKEN": DN_TOKEN,
        "LOG_FORMAT": "json",
    }
    replicas = [RelayProcess(env), RelayProcess(env)]
    try:
        await asyncio.gather(
            *(p.start(tmp_path / f"relay-{i}.log") for i, p in enumerate(replicas))
        )
        key = f"two-replicas-{tmp_path.name}"
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=30
        ) as http:
            responses = await asyncio.gather(
                *(
                    http.post(f"{replicas[i % 2].url}{SEND}", json=BODY, headers=keyed(key))
                    for i in range(100)
                )
            )
    finally:
        await asyncio.gather(*(p.stop() for p in replicas))
    assert_one_send(list(responses), simulator)
    async with httpx.AsyncClient() as http:
        sent = (await http.get(f"{simulator.base_url}/_simulator/sent")).json()
    assert sent["count"] == 2
