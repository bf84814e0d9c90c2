"""`/healthz` and `/readyz`: alive vs. ready to serve (database reachable, schema at head)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.db import create_engine, create_sessionmaker
from app.migrate import head_revision
from tests.conftest import Relay
from tests.servers import free_port


@asynccontextmanager
async def swapped_engine(relay: Relay, url: str) -> AsyncIterator[None]:
    """Point the running relay at another database for the duration of the block."""
    original = relay.state.engine
    relay.state.engine = create_engine(url)
    try:
        yield
    finally:
        await relay.state.engine.dispose()
        relay.state.engine = original


def unreachable_url() -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens


async def test_healthz_is_ok_without_auth(relay: Relay) -> None:
    response = await relay.client.get("/healthz", headers={"Authorization": ""})

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_database_schema_mode_token_and_queue(relay: Relay) -> None:
    response = await relay.client.get("/readyz", headers={"Authorization": ""})

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "failed": [],
        "checks": {
            "database": {"ok": True, "detail": "reachable"},
            "schema": {"ok": True, "detail": f"at head {head_revision()}"},
        },
        "mode": "sandbox",
        "upstream_token": "none",
        "dn_writer_queue_depth": 0,
        "balance": None,
        "low_balance": False,
    }


async def test_readyz_shows_a_valid_token_after_a_send(relay: Relay) -> None:
    sent = await relay.client.post("/v1/messages", json={"to": "60123240066", "text": "hi"})
    assert sent.status_code == 201, sent.text

    assert (await relay.client.get("/readyz")).json()["upstream_token"] == "valid"


async def test_readyz_is_503_when_the_database_is_unreachable(relay: Relay) -> None:
    async with swapped_engine(relay, unreachable_url()):
        down = await relay.client.get("/readyz")
        alive = await relay.client.get("/healthz")
    back = await relay.client.get("/readyz")

    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "not_ready"
    assert body["failed"] == ["database", "schema"]
    assert body["checks"]["database"]["ok"] is False
    assert "unreachable" in body["checks"]["database"]["detail"]
    assert "127.0.0.1" not in down.text  # no URL leaked
    assert body["mode"] == "sandbox"  # same shape as when ready
    assert alive.status_code == 200  # alive, only not ready
    assert back.status_code == 200


async def test_readyz_is_503_when_the_schema_is_not_migrated(
    relay: Relay, empty_db_url: str
) -> None:
    async with swapped_engine(relay, empty_db_url):
        response = await relay.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["schema"]
    assert response.json()["checks"]["database"]["ok"] is True
    assert "not migrated" in response.json()["checks"]["schema"]["detail"]


async def test_readyz_is_503_when_the_schema_is_behind_head(
    relay: Relay, empty_db_url: str
) -> None:
    conn = await asyncpg.connect(empty_db_url.replace("+asyncpg", ""))
    try:
        await conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        await conn.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    finally:
        await conn.close()

    async with swapped_engine(relay, empty_db_url):
        response = await relay.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["schema"]
    assert "0123456789ab" in response.json()["checks"]["schema"]["detail"]


async def test_lookups_answer_503_not_500_when_the_database_is_down(
    relay: Relay,
) -> None:
    async with swapped_engine(relay, unreachable_url()):
        # Requests take sessions from the sessionmaker, bound to the engine it was made with.
        maker = relay.state.sessionmaker
        relay.state.sessionmaker = create_sessionmaker(relay.state.engine)
        try:
            listing = await relay.client.get("/v1/messages")
            one = await relay.client.get("/v1/messages/ANY")
        finally:
            relay.state.sessionmaker = maker

    for response in (listing, one):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "database_unavailable"
