"""Helpers shared by the DN tests: messages with a ref, and reading back what was stored."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery import attach_waiting_dns, begin_and_lock_sql
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
