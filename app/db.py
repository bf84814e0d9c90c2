"""Database plumbing: the declarative Base with a naming convention, the engine (PostgreSQL
through asyncpg, a fixed pool) and the session factory.

Hot paths (the send path, the DN writer) use asyncpg directly on a connection checked out of
the engine's pool; everything else uses SQLAlchemy sessions and commits once per request, in
the endpoint, before the response is sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, MetaData, TypeDecorator, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.util import greenlet_spawn

from app.errors import is_database_unavailable

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    # No pool_pre_ping: on asyncpg it is BEGIN, `;`, ROLLBACK (three round trips) on every
    # checkout, six per send. `_drop_closed_connections` below does its job for free.
    engine = create_async_engine(
        url,
        # A fixed set of connections: under load an overflow connection was closed when
        # returned and opened again for the next checkout (connect, authenticate, type set-up:
        # milliseconds of CPU each). Checkouts are short, waiting is cheaper.
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,  # a request waits at most this for a connection, then 503
        # Fail fast when the server is down instead of hanging on connect.
        connect_args={"timeout": 5, "command_timeout": 30},
    )
    event.listen(engine.sync_engine.pool, "checkout", _drop_closed_connections)
    return engine


def _drop_closed_connections(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    # A restarted (or proxied-away) server closes its sockets; asyncpg notices the close while
    # the connection idles in the pool, so `is_closed()` answers without a round trip. Raising
    # DisconnectionError makes the pool discard it and hand out a fresh connection. A silent
    # network partition is not detected here: the first statement fails, SQLAlchemy
    # invalidates the whole pool generation, and `command_timeout` bounds the wait.
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server while pooled")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UTCDateTime(TypeDecorator[datetime]):
    """`timestamptz` that refuses a naive datetime and always hands back UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def pooled_asyncpg(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection of a pooled connection, for hand-written SQL on a hot path (the
    pool's raw checkout: no SQLAlchemy Connection around it, which costs more CPU than the
    statements' own Python). Statements autocommit unless the caller sends BEGIN."""
    raw = await engine.raw_connection()
    try:
        yield raw.driver_connection
    except BaseException as exc:
        # SQLAlchemy did not see this error: a dead connection must not go back to the pool.
        if not isinstance(exc, Exception) or is_database_unavailable(exc):
            with contextlib.suppress(Exception):
                await greenlet_spawn(raw.invalidate, exc if isinstance(exc, Exception) else None)
        raise
    finally:
        # Back to the pool; in a greenlet because the pool may close it (invalidated).
        await greenlet_spawn(raw.close)
