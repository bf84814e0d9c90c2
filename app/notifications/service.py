"""Old names of `app.delivery`, kept only until `app.messages` imports from there.

Delete this module once nothing imports it (`grep -rn notifications.service app`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import attach_waiting_dns, begin_and_lock_sql, lock_key
from app.delivery import refresh_messages as refresh_messages_pg

__all__ = ["attach_dns", "begin_and_lock_sql", "lock_key", "lock_refs", "refresh_messages_pg"]


async def _driver_connection(session: AsyncSession) -> Any:
    raw = await (await session.connection()).get_raw_connection()
    return raw.driver_connection


async def lock_refs(session: AsyncSession, refs: Sequence[str]) -> None:
    """The refs' advisory locks, in the session's transaction."""
    if refs:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k)"
                " FROM (SELECT DISTINCT unnest(CAST(:k AS bigint[])) AS k ORDER BY 1) AS s"
            ),
            {"k": [lock_key(r) for r in refs]},
        )


async def attach_dns(session: AsyncSession, refs_by_message: dict[int, str]) -> None:
    """`app.delivery.attach_waiting_dns` in the session's transaction."""
    await attach_waiting_dns(await _driver_connection(session), refs_by_message)
