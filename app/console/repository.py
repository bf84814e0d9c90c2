"""The console's SQL. Every query walks an index range in order and stops at its LIMIT:

- a search is the lookup API's own query (`app.messages.lookup.message_query`, one index per
  filter) or, with a search box text `q`, the UNION of one such query per reading of `q`
  (phone number, client_ref, ref), each stopping at its own LIMIT, merged newest first;
- a message by `ref` (unique), its DNs by `(message_id, id)`, its send by `send_id`;
- unmatched DNs by the partial index on `id WHERE message_id IS NULL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import Select, func, select, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.messages.lookup import message_query
from app.models import DeliveryNotification, Message
from app.pagination import Cursor

MAX_SAME_SEND = 200  # recipients of one send listed on a message's page (a send has ≤ 1,000)


@dataclass(frozen=True)
class MessageFilter:
    """What the messages page asks for. `q` is the search box text; `msisdn` its reading as
    a phone number, when it is one."""

    q: str | None = None
    msisdn: str | None = None
    status: str | None = None
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def search_query(f: MessageFilter, *, after: Cursor | None, limit: int) -> Select[Message]:
    """At most `limit + 1` messages matching `f`, newest first (one more tells of a next page)."""
    query = partial(
        message_query,
        status=f.status,
        channel=f.channel,
        since=f.since,
        until=f.until,
        after=after,
        limit=limit,
    )
    if f.q is None:
        return query()
    # One branch per reading of q, each on its own index: an OR of the three would make
    # Postgres collect and sort every match of a busy number before the LIMIT.
    branches = [query().where(Message.ref == f.q)]
    if len(f.q) <= 64:  # the column's size: longer cannot match
        branches.append(query(client_ref=f.q))
    if f.msisdn is not None:
        branches.append(query(msisdn=f.msisdn))
    if len(branches) == 1:
        return branches[0]
    merged = aliased(Message, union(*branches).subquery("matches"))
    return select(merged).order_by(merged.created_at.desc(), merged.id.desc()).limit(limit + 1)


async def search(
    session: AsyncSession, f: MessageFilter, *, after: Cursor | None, limit: int
) -> list[Message]:
    return list(await session.scalars(search_query(f, after=after, limit=limit)))


async def find_message(session: AsyncSession, ref: str) -> Message | None:
    """By provider ref; failing that, by id when `ref` is all digits (as the lookup API)."""
    found = await session.scalar(select(Message).where(Message.ref == ref))
    if found is None and ref.isascii() and ref.isdigit() and len(ref) <= 18:
        found = await session.get(Message, int(ref))
    return found


def notifications_query(message_id: int) -> Select[DeliveryNotification]:
    """Every DN of the message in order of receipt (`id` is the receipt sequence)."""
    dn = DeliveryNotification
    return select(dn).where(dn.message_id == message_id).order_by(dn.id)


async def notifications_of(session: AsyncSession, message_id: int) -> list[DeliveryNotification]:
    return list(await session.scalars(notifications_query(message_id)))


async def same_send(session: AsyncSession, message: Message) -> tuple[list[Message], int]:
    """The other recipients of the message's send (up to MAX_SAME_SEND) and their count."""
    others = Message.send_id == message.send_id, Message.id != message.id
    rows = await session.scalars(
        select(Message).where(*others).order_by(Message.id).limit(MAX_SAME_SEND)
    )
    listed = list(rows)
    if len(listed) < MAX_SAME_SEND:
        return listed, len(listed)
    total = await session.scalar(select(func.count()).select_from(Message).where(*others))
    return listed, int(total or 0)


def unmatched_query(*, before_id: int | None, limit: int) -> Select[DeliveryNotification]:
    """DNs whose msgid matches no message, newest first (`limit + 1` rows at most)."""
    query = select(DeliveryNotification).where(DeliveryNotification.message_id.is_(None))
    if before_id is not None:
        query = query.where(DeliveryNotification.id < before_id)
    return query.order_by(DeliveryNotification.id.desc()).limit(limit + 1)


async def unmatched_notifications(
    session: AsyncSession, *, before_id: int | None, limit: int
) -> list[DeliveryNotification]:
    return list(await session.scalars(unmatched_query(before_id=before_id, limit=limit)))


async def count_unmatched_notifications(session: AsyncSession) -> int:
    query = select(func.count()).where(DeliveryNotification.message_id.is_(None))
    return int(await session.scalar(query) or 0)
