"""Shared fixtures: a migrated database per backend, the simulator, the relay.

Every database test runs on SQLite and, when TEST_DATABASE_URL is set, on Postgres too. In CI
(CI=true) a Postgres test that cannot run is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.bulk360.simulator import Simulator, SimulatorConfig
from app.config import Settings, hash_api_key, load_settings
from app.deps import State
from app.main import create_app
from app.migrate import upgrade_async

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("TEST_DATABASE_URL")

TEST_API_KEY = "test-key-1"
OTHER_API_KEY = "test-key-2"
DN_TOKEN = "test-dn-token"
TABLES = ("delivery_notifications", "messages", "idempotency_keys")


def _postgres_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Postgres tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A throw-away database on the server of TEST_DATABASE_URL, migrated to head."""
    if not PG_URL:
        _postgres_unavailable("TEST_DATABASE_URL is not set")
    assert PG_URL is not None
    base = make_url(PG_URL)
    name = f"relay_test_{uuid.uuid4().hex[:10]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        _postgres_unavailable(f"cannot connect to TEST_DATABASE_URL: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = base.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    await upgrade_async(url)
    yield url
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("db") / "relay.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    return url


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database with empty tables, on each backend."""
    # Sync on purpose: pytest-asyncio cannot set up an async fixture through getfixturevalue
    # from inside another async fixture ("Runner.run() cannot be called from a running loop").
    url: str = request.getfixturevalue(f"{request.param}_url")
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _empty_tables(url)).result()
    return url


async def _empty_tables(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if url.startswith("postgresql"):
                await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            else:
                for table in TABLES:
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many Postgres tests ran, so CI output shows they were not skipped."""
    counts = {
        outcome: sum(1 for r in terminalreporter.stats.get(outcome, []) if "postgres" in r.keywords)
        for outcome in ("passed", "failed", "skipped", "error")
    }
    terminalreporter.write_line(
        "postgres tests: "
        + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        + ("" if PG_URL else " (TEST_DATABASE_URL not set)")
    )
