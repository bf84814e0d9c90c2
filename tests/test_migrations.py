"""The same migrations run on SQLite and Postgres, up to head and back down to base."""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.migrate import downgrade, head_revision, upgrade
from app.models import Base

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("TEST_DATABASE_URL")


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _round_trip(url: str) -> None:
    import asyncio

    await asyncio.to_thread(upgrade, url)
    tables = await _tables(url)
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    await asyncio.to_thread(downgrade, url)
    assert (await _tables(url)) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, url)  # and up again: downgrade left nothing behind
    assert set(Base.metadata.tables) <= await _tables(url)


async def test_upgrade_and_downgrade_on_sqlite(tmp_path: object) -> None:
    await _round_trip(f"sqlite+aiosqlite:///{tmp_path}/m.db")


@pytest.mark.postgres
async def test_upgrade_and_downgrade_on_postgres() -> None:
    if not PG_URL:
        if IN_CI:
            pytest.fail("TEST_DATABASE_URL must be set in CI")
        pytest.skip("TEST_DATABASE_URL is not set")
    base = make_url(PG_URL)
    name = f"relay_mig_{uuid.uuid4().hex[:8]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await _round_trip(
            base.set(drivername="postgresql+asyncpg", database=name).render_as_string(
                hide_password=False
            )
        )
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def test_models_and_migrations_agree(tmp_path: object) -> None:
    """Autogenerate finds nothing to do on a migrated database: no drift."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    path = f"{tmp_path}/drift.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    assert head_revision() is not None
