"""The send path's database writes, group-committed (`group_commit.py`) across sends.

- The rows before the spend: every send waiting at that moment in one `repository.insert_rows`
  statement (its own COMMIT, one fsync); each send goes upstream only after the batch that
  carried its rows has committed (CONTRACT §4.1). Two claims of one Idempotency-Key never
  share a batch: the second waits for the first's COMMIT, then finds its claim, exactly as it
  would find another replica's.
- The answers after it: every answer waiting at that moment in one transaction, in one round
  trip (`repository.record_answers`: all their refs' locks, one statement, the DNs that beat
  them attached, COMMIT).

No connection is held between the two: a send holds one only while its batch is written,
never while the provider answers.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import pooled_asyncpg, utcnow
from app.messages import repository
from app.messages.group_commit import GroupCommit
from app.messages.idempotency import Claimed, ClaimResult, classify
from app.messages.repository import Answer, NewSend

# Batches in flight at once per kind: while one commits, the next is written.
PIPELINE = 2
# Rows per batch (at least one send): the answers' transaction takes an advisory lock per ref,
# and Postgres' lock table holds 64 per connection by default (max_locks_per_transaction).
MAX_ROWS = 2000


class SendWriter:
    def __init__(self, engine: AsyncEngine, *, idempotency_ttl_h: float) -> None:
        self._engine = engine
        self._ttl = timedelta(hours=idempotency_ttl_h)
        self._rows = GroupCommit(
            self._insert_batch,
            kind="rows",
            rows=_rows,
            max_rows=MAX_ROWS,
            pipeline=PIPELINE,
            conflict_key=lambda s: (s.api_key_name, s.key) if s.key is not None else None,
        )
        self._answers = GroupCommit(
            self._record_batch, kind="answers", rows=_rows, max_rows=MAX_ROWS, pipeline=PIPELINE
        )

    async def claim_and_insert(self, send: NewSend) -> ClaimResult:
        """Claim the send's key (if any) and insert its rows, committed; or say what the
        existing claim of its key means (nothing inserted then)."""
        if send.key is not None:
            send.expires_at = utcnow() + self._ttl
        await self._rows.submit(send)
        if send.inserted:
            return Claimed()
        if send.body_hash is None:
            raise RuntimeError("the rows INSERT inserted nothing for a send without a key")
        return classify(send.existing_claim, send.body_hash, utcnow())

    async def record(self, answer: Answer) -> None:
        """Record the provider's answer, committed (raises what the database raised)."""
        await self._answers.submit(answer)

    async def wait(self) -> None:
        await self._rows.wait()
        await self._answers.wait()

    async def _insert_batch(self, sends: list[NewSend]) -> None:
        now = utcnow()
        async with pooled_asyncpg(self._engine) as apg:
            inserted = await repository.insert_rows(apg, sends, now)
            for send, ok in zip(sends, inserted, strict=True):
                send.inserted = ok
                if not ok and send.key is not None:
                    send.existing_claim = await repository.existing_claim(
                        apg, send.api_key_name, send.key
                    )

    async def _record_batch(self, answers: list[Answer]) -> None:
        # One round trip: the database function records and commits.
        now = utcnow()
        async with pooled_asyncpg(self._engine) as apg:
            await repository.record_answers(apg, answers, now)


def _rows(item: NewSend | Answer) -> int:
    return len(item.entries)
