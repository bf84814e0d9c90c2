"""Helpers shared by the DN tests: messages with a ref, and reading back what was stored."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import DeliveryNotification, Message


async def add_message(engine: AsyncEngine, ref: str | None, msisdn: str = "60123240066") -> int:
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
                status="pending" if ref else "unknown",
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
