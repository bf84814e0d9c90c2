"""How DNs decide a message's final state, shared by the DN writer and the send path.

The rule: a message's delivery fields are a function of its DN with the highest receipt
sequence (`delivery_notifications.id`). Both writers recompute from that DN rather than
applying "this DN" blindly, so a transaction that commits late can never put an older DN on
top of a newer one.

The race this module closes: a DN may arrive before the send path has recorded the ref it
refers to (the provider answers the send, sends the DN, and our UPDATE of the ref has not
committed yet). Both sides take a transaction-scoped advisory lock per ref (sorted, so two
writers never deadlock) before they read or write; whichever commits second sees the other's
rows and attaches them. SQLite needs no lock: it has one writer at a time (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# The message's delivery fields, from its last DN `d`. An unrecognised raw status is not
# final: a delivered/undelivered message goes back to pending, anything else keeps its status.
_FROM_LAST_DN = {
    "last_dn_seq": "d.id",
    "delivery_status": "d.status",
    "error_code": "d.error_code",
    "error_description": "d.error_description",
    "status": """CASE upper(d.status)
        WHEN 'DELIVERED' THEN 'delivered'
        WHEN 'UNDELIVERED' THEN 'undelivered'
        ELSE CASE WHEN messages.status IN ('delivered', 'undelivered') THEN 'pending'
                  ELSE messages.status END
        END""",
    "final_at": """CASE WHEN upper(d.status) IN ('DELIVERED', 'UNDELIVERED')
                    THEN d.received_at ELSE NULL END""",
}
_SET_FROM_LAST_DN = (
    "\n    dn_count = (SELECT count(*) FROM delivery_notifications c"  # noqa: S608 - fixed text
    " WHERE c.message_id = messages.id),\n"
    + "".join(f"    {column} = {expr},\n" for column, expr in _FROM_LAST_DN.items())
    + "    updated_at = CURRENT_TIMESTAMP\n"
)
# Never move a message back to an older DN, whatever the commit order.
_ONLY_FORWARD = "(messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id)"

# Fixed SQL text only (no caller input is concatenated).
_REFRESH_SQL = (
    "UPDATE messages SET"  # noqa: S608
    + _SET_FROM_LAST_DN
    + """FROM (
    SELECT dn.id, dn.message_id, dn.status, dn.error_code, dn.error_description, dn.received_at
    FROM delivery_notifications dn
    WHERE dn.id = (SELECT max(x.id) FROM delivery_notifications x
                   WHERE x.message_id = dn.message_id)
      AND dn.message_id IN ({ids})
) AS d
WHERE messages.id = d.message_id
  AND """
    + _ONLY_FORWARD
)

# The same rule for the DN writer's batches on Postgres (asyncpg, one array parameter):
# DISTINCT ON walks the (message_id, id) index once per message.
_REFRESH_PG = (
    "UPDATE messages SET"  # noqa: S608
    + _SET_FROM_LAST_DN
    + """FROM (
    SELECT DISTINCT ON (dn.message_id)
           dn.id, dn.message_id, dn.status, dn.error_code, dn.error_description, dn.received_at
    FROM delivery_notifications dn
    WHERE dn.message_id = ANY($1::bigint[])
    ORDER BY dn.message_id, dn.id DESC
) AS d
WHERE messages.id = d.message_id
  AND """
    + _ONLY_FORWARD
)

# The DN writer's batch (Postgres): `d` is each matched message's newest DN of the batch and
# `d.n` its count of DNs in the batch. Only the count is added (exact: every writer of a msgid
# holds its lock); the delivery fields move forward only. One pass over the new rows, none over
# a message's history.
APPLY_BATCH_SET = (
    "dn_count = messages.dn_count + d.n,\n"
    + "".join(
        f"    {column} = CASE WHEN {_ONLY_FORWARD} THEN {expr} ELSE messages.{column} END,\n"
        for column, expr in _FROM_LAST_DN.items()
    )
    + "    updated_at = CURRENT_TIMESTAMP"
)

# Advisory lock keys: a 64-bit hash of the ref, computed here rather than in SQL so that the
# send path can take its locks in the same round trip as its BEGIN (`begin_and_lock_sql`).
# Every writer sorts by key before locking, so two writers never deadlock.
_LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT unnest({param}) AS k ORDER BY 1) AS s"
)


def lock_key(ref: str) -> int:
    """The advisory lock key of a ref (signed 64-bit, as Postgres' bigint)."""
    digest = hashlib.blake2b(ref.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def begin_and_lock_sql(refs: Sequence[str]) -> str:
    """BEGIN and the refs' locks as one simple query: one round trip instead of two. Only
    integers are inlined (the keys), never a ref."""
    keys = ",".join(str(k) for k in sorted({lock_key(r) for r in refs}))
    return "BEGIN; " + _LOCK_SQL.format(param=f"'{{{keys}}}'::bigint[]")


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def lock_refs(session: AsyncSession, refs: Sequence[str]) -> None:
    """Serialise with any DN writer touching the same refs, until this transaction ends."""
    if not refs or not is_postgres(session):
        return
    await session.execute(
        text(_LOCK_SQL.format(param="CAST(:keys AS bigint[])")),
        {"keys": [lock_key(r) for r in refs]},
    )


async def refresh_messages(
    session: AsyncSession | AsyncConnection, message_ids: Sequence[int]
) -> None:
    """Recompute the delivery fields of these messages from their last DN."""
    if not message_ids:
        return
    ids = ", ".join(str(int(i)) for i in message_ids)  # ints only: safe to inline
    await session.execute(text(_REFRESH_SQL.format(ids=ids)))


async def attach_dns(session: AsyncSession, refs_by_message: dict[int, str]) -> None:
    """Attach DNs that arrived before their message had a ref, then refresh those messages.

    Call inside the transaction that records the refs, after `lock_refs`.
    """
    if not refs_by_message:
        return
    touched: list[int] = []
    for message_id, ref in refs_by_message.items():
        result = await session.execute(
            text(
                "UPDATE delivery_notifications SET message_id = :mid "
                "WHERE msgid = :ref AND message_id IS NULL"
            ),
            {"mid": message_id, "ref": ref},
        )
        if getattr(result, "rowcount", 0):
            touched.append(message_id)
    await refresh_messages(session, touched)


# ---- the same rule on a raw asyncpg connection (the send path recording its refs) ------------


async def refresh_messages_pg(conn: Any, message_ids: Sequence[int]) -> None:
    """`refresh_messages` for an asyncpg connection inside a transaction."""
    if message_ids:
        await conn.execute(_REFRESH_PG, list(message_ids))
