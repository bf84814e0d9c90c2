"""The migrations go up to head and back down to base, and agree with the models."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.messages.repository import RECORD_FUNCTION, RECORD_FUNCTION_ARGS
from app.migrate import downgrade, head_revision, upgrade
from app.models import Base
from app.notifications.repository import STORE_FUNCTION, STORE_FUNCTION_ARGS


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_and_downgrade(empty_db_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_db_url)
    tables = await _tables(empty_db_url)
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    await asyncio.to_thread(downgrade, empty_db_url)
    assert (await _tables(empty_db_url)) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, empty_db_url)  # and up again: downgrade left nothing behind
    assert set(Base.metadata.tables) <= await _tables(empty_db_url)


async def test_models_and_migrations_agree(postgres_url: str) -> None:
    """Autogenerate finds nothing to do on a migrated database: no drift."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []
    assert head_revision() is not None


@pytest.mark.parametrize(
    ("name", "body", "args"),
    [
        ("dn_store_batch", STORE_FUNCTION, STORE_FUNCTION_ARGS),
        ("record_send_answers", RECORD_FUNCTION, RECORD_FUNCTION_ARGS),
    ],
)
async def test_the_database_functions_are_the_codes(
    postgres_url: str, name: str, body: str, args: str
) -> None:
    """The functions the DN writer and the send path call are the SQL in their modules: a
    change to that SQL needs a migration replacing the function (its body is frozen in one)."""
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT prosrc, pg_get_function_arguments(oid) FROM pg_proc"
                        " WHERE proname = :name"
                    ),
                    {"name": name},
                )
            ).one()
    finally:
        await engine.dispose()
    assert (row[0], row[1]) == (body, args)
