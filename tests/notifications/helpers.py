"""Helpers shared by the DN tests: messages with a ref, and reading back what was stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery import attach_sql, lock_key, refresh_sql
from app.models import DeliveryNotification, Message


async def add_message(
    engine: AsyncEngine, ref: str | None, msisdn: str = "60123240066", status: str | None = None
) -> int:
    """A message as the send path leaves it: pending, with the provider's ref."""
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(Message)
            .values(
                send_id=str(uuid.uuid4()),
                api_key_name="tester",
                channel="sms",
                msisdn=msisdn,
                ref=ref,
                status=status or ("pending" if ref else "unknown"),
            )
            .returning(Message.id)
        )
        return int(result.scalar_one())


async def message(engine: AsyncEngine, message_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(Message).where(Message.id == message_id))).one()
        return dict(row._mapping)


async def dns(engine: AsyncEngine, msgid: str | None = None) -> list[dict[str, Any]]:
    """Stored DNs in receipt order."""
    query = select(DeliveryNotification).order_by(DeliveryNotification.id)
    if msgid is not None:
        query = query.where(DeliveryNotification.msgid == msgid)
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in (await conn.execute(query)).all()]


def pg_dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def begin_recording_refs(apg: Any, refs_by_message: dict[int, str]) -> None:
    """What the send path does with the provider's answer, up to its COMMIT: BEGIN with the
    refs' locks, the refs written, waiting DNs attached (app.delivery)."""
    await apg.execute(begin_and_lock_sql(refs_by_message.values()))
    await apg.execute(
        "UPDATE messages m SET ref = v.ref, status = 'pending'"
        " FROM unnest($1::bigint[], $2::text[]) AS v(id, ref) WHERE m.id = v.id",
        list(refs_by_message),
        list(refs_by_message.values()),
    )
    await attach_waiting_dns(apg, refs_by_message)


async def record_refs(url: str, refs_by_message: dict[int, str]) -> None:
    """`begin_recording_refs`, committed."""
    apg = await asyncpg.connect(pg_dsn(url))
    try:
        await begin_recording_refs(apg, refs_by_message)
        await apg.execute("COMMIT")
    finally:
        await apg.close()


# What the database function `record_send_answers` does, step by step on a connection a test
# controls (so that it can hold the transaction open): the refs' locks, then waiting DNs
# attached and their messages refreshed, from the same SQL builders (app.delivery).
_LOCK_SQL = (
    "BEGIN; SELECT pg_advisory_xact_lock(k)"
    " FROM (SELECT DISTINCT unnest('{{{keys}}}'::bigint[]) AS k ORDER BY 1) AS s"
)
_ATTACH = attach_sql("$1::bigint[]", "$2::text[]")
_REFRESH = refresh_sql("$1::bigint[]")


def begin_and_lock_sql(refs: Iterable[str]) -> str:
    """BEGIN and the refs' locks (exclusive, in key order) as one simple query."""
    return _LOCK_SQL.format(keys=",".join(str(k) for k in sorted({lock_key(r) for r in refs})))


async def attach_waiting_dns(apg: Any, refs_by_message: Mapping[int, str]) -> None:
    """Attach DNs stored before their message's ref was recorded, then move those messages to
    their last DN (inside the transaction that holds the refs' locks)."""
    if not refs_by_message:
        return
    attached = await apg.fetch(_ATTACH, list(refs_by_message), list(refs_by_message.values()))
    if attached:
        await refresh_messages(apg, sorted({row[0] for row in attached}))


async def refresh_messages(apg: Any, message_ids: Sequence[int]) -> None:
    """Recompute these messages' delivery fields and DN count from their DNs."""
    if message_ids:
        await apg.execute(_REFRESH, list(message_ids))
