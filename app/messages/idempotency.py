"""Idempotency-Key for sends, kept in the database so it holds across processes.

A key is scoped to the caller's API key name and remembered for `IDEMPOTENCY_TTL_H`. The first
request claims it with `INSERT … ON CONFLICT DO NOTHING` in the same transaction that records
its messages (so a claim never exists without its rows, and a failure before sending leaves
no claim). A concurrent request with the same key blocks on that insert until the first
commits (Postgres) or waits for the write lock (SQLite), then finds the row: 409 while it has no
response, the stored response once it has one, 422 if the body differs.

The final response is stored in the transaction that records the provider's answer. If that
transaction fails, the key stays "in flight" until it expires: a retry gets 409 rather than a
second send, since the provider may have acted.

On Postgres the send path claims the key in the same single statement that inserts the rows
(`CLAIM_CTE_PG`, one round trip, committed on its own); an expired claim of the key is
replaced there by the upsert's `WHERE`, so no separate delete is needed.

The body hash is over the normalised request (recipients after normalisation, text, from,
client_ref, detail), so `+60 12-324 0066` and `60123240066` are the same request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import IdempotencyKey

REPLAY_HEADER = "Idempotent-Replayed"
_PURGE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request owns the key: go ahead and send."""


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class InFlight:
    since: datetime


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used with a different body."""


ClaimResult = Claimed | Replay | InFlight | Mismatch


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


# Prefix of the send path's row INSERT on Postgres. Parameters: $2 api key name, $5 now,
# $10 key, $11 body hash, $12 expires_at. The INSERT that follows adds
# `WHERE EXISTS (SELECT 1 FROM claim)`: no claim, no rows. A claim still in flight in another
# transaction makes this wait for that commit, as the plain insert does.
CLAIM_CTE_PG = """
WITH claim AS (
    INSERT INTO idempotency_keys (api_key_name, key, request_hash, created_at, expires_at)
    VALUES ($2, $10, $11, $5, $12)
    ON CONFLICT (api_key_name, key) DO UPDATE SET
        request_hash = excluded.request_hash, response_status = NULL, response_body = NULL,
        created_at = excluded.created_at, expires_at = excluded.expires_at
    WHERE idempotency_keys.expires_at <= excluded.created_at
    RETURNING 1
)
"""
_LOOKUP_PG = (
    "SELECT request_hash, response_status, response_body, created_at FROM idempotency_keys "
    "WHERE api_key_name = $1 AND key = $2"
)
_PURGE_PG = "DELETE FROM idempotency_keys WHERE expires_at <= $1"


def _classify(row: Any, body_hash: str, now: datetime) -> Replay | InFlight | Mismatch:
    """What an existing claim (not ours) means for this request."""
    if row is None:
        # Deleted (expired) between our insert and select: treat as in flight, the caller
        # may retry; never send twice on a guess.
        return InFlight(now)
    if row[0] != body_hash:
        return Mismatch()
    if row[1] is None or row[2] is None:
        return InFlight(row[3])
    return Replay(row[1], row[2].encode())


class IdempotencyStore:
    """Per process only the time of the last bulk purge; everything else is in the database."""

    def __init__(self) -> None:
        self._last_purge = float("-inf")

    # -- Postgres, raw asyncpg (the send path's fast path) ----------------------------------------

    async def purge_pg(self, apg: Any, now: datetime) -> None:
        """The once-a-minute bulk purge, as its own autocommitted statement."""
        if self._purge_due():
            await apg.execute(_PURGE_PG, now)

    async def existing_pg(
        self, apg: Any, *, api_key_name: str, key: str, body_hash: str, now: datetime
    ) -> Replay | InFlight | Mismatch:
        """After `CLAIM_CTE_PG` claimed nothing: what the existing claim says."""
        row = await apg.fetchrow(_LOOKUP_PG, api_key_name, key)
        return _classify(row, body_hash, now)

    # -- any database, through the session ---------------------------------------------------------

    async def claim(
        self, session: AsyncSession, *, api_key_name: str, key: str, body_hash: str, ttl_h: float
    ) -> ClaimResult:
        """Claim `key` inside the caller's transaction (the caller commits)."""
        now = utcnow()
        await self._purge(session, now)
        where = (IdempotencyKey.api_key_name == api_key_name) & (IdempotencyKey.key == key)
        # An expired claim of this key is forgotten now, whatever the bulk purge is doing.
        await session.execute(delete(IdempotencyKey).where(where, IdempotencyKey.expires_at <= now))
        values = {
            "api_key_name": api_key_name,
            "key": key,
            "request_hash": body_hash,
            "created_at": now,
            "expires_at": now + timedelta(hours=ttl_h),
        }
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        result = await session.execute(
            insert(IdempotencyKey)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
        if result.first() is not None:
            return Claimed()
        row = (
            await session.execute(
                select(
                    IdempotencyKey.request_hash,
                    IdempotencyKey.response_status,
                    IdempotencyKey.response_body,
                    IdempotencyKey.created_at,
                ).where(where)
            )
        ).first()
        return _classify(row, body_hash, now)

    async def store_response(
        self, session: AsyncSession, *, api_key_name: str, key: str, status: int, body: bytes
    ) -> None:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.api_key_name == api_key_name, IdempotencyKey.key == key)
            .values(response_status=status, response_body=body.decode())
        )

    async def _purge(self, session: AsyncSession, now: datetime) -> None:
        if self._purge_due():
            await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))

    def _purge_due(self) -> bool:
        # At most once a minute per process: expired keys of every caller.
        tick = time.monotonic()
        if tick - self._last_purge < _PURGE_EVERY_S:
            return False
        self._last_purge = tick
        return True
