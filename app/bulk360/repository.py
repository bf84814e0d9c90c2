"""The provider's SQL: the latest balance per currency (`provider_balances`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.models import ProviderBalance

_balances = cast(Table, ProviderBalance.__table__)


@dataclass(frozen=True, slots=True)
class BalanceReading:
    """A balance the provider reported, and when the relay saw it."""

    amount: Decimal
    currency: str
    seen_at: datetime


async def save_balances(conn: AsyncConnection, readings: Sequence[BalanceReading]) -> None:
    """Upsert; a row only moves forward in time (replicas write the same rows)."""
    if not readings:
        return
    stmt = insert(_balances).values(
        [{"currency": r.currency, "amount": r.amount, "seen_at": r.seen_at} for r in readings]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[_balances.c.currency],
        set_={"amount": stmt.excluded.amount, "seen_at": stmt.excluded.seen_at},
        where=_balances.c.seen_at <= stmt.excluded.seen_at,
    )
    await conn.execute(stmt)


async def latest_balances(conn: AsyncConnection | AsyncSession) -> list[BalanceReading]:
    """The last balance seen in each currency, newest first (for start-up and the console)."""
    rows = await conn.execute(
        select(_balances.c.amount, _balances.c.currency, _balances.c.seen_at).order_by(
            _balances.c.seen_at.desc()
        )
    )
    return [BalanceReading(row.amount, row.currency, row.seen_at) for row in rows]
