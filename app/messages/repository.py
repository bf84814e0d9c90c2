"""Every hand-written SQL statement of the send path, on raw asyncpg connections.

Each function takes a batch (the group commit of `writer.py` hands over every send waiting at
that moment): the rows of many sends in one statement, the answers of many sends in one
transaction. A batch of one is the same code.

- `insert_rows`: the Idempotency-Key claims and the rows (status `unknown`, no ref) in ONE
  statement, committed on its own before anything goes upstream (CONTRACT §4.1). A send whose
  key another request holds gets no rows; `existing_claim` then says what that claim means.
- `record_answers`: one call of the database function `record_send_answers` (outside BEGIN:
  its COMMIT comes in the same round trip): the ref locks, one statement that fills in the
  rows and stores the Idempotency-Key responses, the DNs that beat the answers attached. Each
  row is only touched while it is still as `insert_rows` left it (`unknown`, no ref), so
  recording an answer again (after a COMMIT whose outcome was lost with the connection) can
  never undo a later DN.
- Expired Idempotency-Keys are purged by the periodic sweep (app/outcomes/sweeps.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.delivery import attach_sql, lock_key, refresh_sql, waiting_dns_exist
from app.messages.outcome import DESC_MAX, Entry


@dataclass(slots=True)
class NewSend:
    """What step 1 records: the send's rows, and its Idempotency-Key claim if it has one."""

    send_id: str
    api_key_name: str
    client_ref: str | None
    sender: str | None
    entries: list[Entry]
    key: str | None = None
    body_hash: str | None = None
    expires_at: datetime | None = None
    callback_url: str | None = None
    # Filled in by the writer: whether the rows went in, else the claim that stopped them.
    inserted: bool = False
    existing_claim: Any = None


@dataclass(slots=True)
class Answer:
    """What step 3 records: the entries as the provider left them, and the response to keep
    for the send's Idempotency-Key (`key` None: none)."""

    send_id: str
    entries: list[Entry]
    api_key_name: str
    key: str | None = None
    status: int | None = None
    body: bytes | None = None

    @property
    def refs(self) -> dict[str, str]:
        """Message id -> ref, for the logs of an answer not recorded yet."""
        return {str(e.id): e.ref for e in self.entries if e.ref}


# The sends (`s`), their claims, then the rows of the sends that need no claim or got theirs.
# Identity values are drawn in the ORDER BY's order (SQLAlchemy's sort_by_parameter_order relies
# on the same), so each send's ids, sorted, follow its entries. The claims are inserted in key
# order, so two batches (here or in another replica) never wait for each other in a cycle. A
# claim still in flight in another transaction makes this wait for that COMMIT; an expired
# claim of the key is replaced by the upsert's WHERE.
_INSERT_ROWS = """
WITH s AS (
    SELECT * FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::timestamptz[], $15::text[])
         AS s(no, send_id, api_key_name, client_ref, sender, key, request_hash, expires_at,
              callback_url)
), claim AS (
    INSERT INTO idempotency_keys (api_key_name, key, request_hash, created_at, expires_at)
    SELECT api_key_name, key, request_hash, $1, expires_at FROM s
    WHERE key IS NOT NULL
    ORDER BY api_key_name, key
    ON CONFLICT (api_key_name, key) DO UPDATE SET
        request_hash = excluded.request_hash, response_status = NULL, response_body = NULL,
        created_at = excluded.created_at, expires_at = excluded.expires_at
    WHERE idempotency_keys.expires_at <= excluded.created_at
    RETURNING api_key_name, key
), ok AS (
    SELECT s.no, s.send_id, s.api_key_name, s.client_ref, s.sender, s.callback_url
    FROM s WHERE s.key IS NULL
    UNION ALL
    SELECT s.no, s.send_id, s.api_key_name, s.client_ref, s.sender, s.callback_url
    FROM s JOIN claim c ON c.api_key_name = s.api_key_name AND c.key = s.key
)
INSERT INTO messages (send_id, api_key_name, client_ref, channel, msisdn, sender, encoding,
                      segments, status, created_at, updated_at, callback_url)
SELECT ok.send_id, ok.api_key_name, ok.client_ref, u.channel, u.msisdn, ok.sender, u.encoding,
       u.segments, 'unknown', $1, $1, ok.callback_url
FROM unnest($10::int[], $11::text[], $12::text[], $13::text[], $14::int[])
     WITH ORDINALITY AS u(no, channel, msisdn, encoding, segments, n)
JOIN ok ON ok.no = u.no
ORDER BY u.n
RETURNING id, send_id
"""

_EXISTING_CLAIM = (
    "SELECT request_hash, response_status, response_body, created_at FROM idempotency_keys "
    "WHERE api_key_name = $1 AND key = $2"
)
# The answers in one round trip: the database function `record_send_answers` (created by the
# migration 9d4c1f6a2b85 from `RECORD_FUNCTION` below; tests/test_migrations.py pins the two
# equal), called outside BEGIN, so that its COMMIT comes with it (as the DN writer's batch:
# three round trips through a busy event loop cost more than the work). In the function:
# 1. the refs' advisory locks (exclusive, in key order: `delivery.lock_key`);
# 2. one statement (a new snapshot, after the locks): the rows and the stored Idempotency-Key
#    responses, noting per recorded ref whether a DN for it may be waiting (it beat the
#    answer);
# 3. only if one may: those DNs attached and their messages moved to their last DN
#    (`delivery.attach_sql`, `delivery.refresh_sql`).
# Planned for each batch's own size (`plan_cache_mode`): a generic plan guesses ten rows per
# array and scans every `unknown` row once per entry (a 1,000-recipient answer: 0.1 s planned
# for its size, 0.85-1.8 s generic). Planning is cheap beside the rest: a one-answer call took
# 0.63 ms with custom plans against 0.62 ms with plan_cache_mode=auto (50,000 messages).
RECORD_FUNCTION = f"""
DECLARE
    waiting_ids bigint[];
    waiting_refs text[];
    attached bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock(s.k)
    FROM (SELECT DISTINCT unnest(p_lock_keys) AS k ORDER BY 1) AS s;
    WITH v AS (
        SELECT * FROM unnest(p_id, p_status, p_ref, p_code, p_descr, p_rate, p_currency,
                             p_submitted_at)
             AS v(id, status, ref, code, descr, rate, currency, submitted_at)
    ), stored AS (
        UPDATE idempotency_keys k SET response_status = r.status, response_body = r.body
        FROM unnest(p_key_api_key_name, p_key, p_key_status, p_key_body)
             AS r(api_key_name, key, status, body)
        WHERE k.api_key_name = r.api_key_name AND k.key = r.key
    ), recorded AS (
        UPDATE messages m SET status = v.status, ref = v.ref, submit_code = v.code,
            submit_desc = v.descr, rate = v.rate, currency = v.currency,
            submitted_at = v.submitted_at, updated_at = p_now
        FROM v WHERE m.id = v.id AND m.status = 'unknown' AND m.ref IS NULL
        RETURNING m.id, m.ref, {waiting_dns_exist("m.ref")} AS waiting
    )
    SELECT array_agg(id), array_agg(ref) INTO waiting_ids, waiting_refs
    FROM recorded WHERE waiting;
    IF waiting_ids IS NOT NULL THEN
        WITH attached_dns AS ({attach_sql("waiting_ids", "waiting_refs")})
        SELECT array_agg(DISTINCT message_id) INTO attached FROM attached_dns;
        IF attached IS NOT NULL THEN
{refresh_sql("attached")};
        END IF;
    END IF;
END
"""  # noqa: S608 - fixed text only
RECORD_FUNCTION_ARGS = (
    "p_lock_keys bigint[], p_id bigint[], p_status text[], p_ref text[], p_code integer[], "
    "p_descr text[], p_rate text[], p_currency text[], "
    "p_submitted_at timestamp with time zone[], p_now timestamp with time zone, "
    "p_key_api_key_name text[], p_key text[], p_key_status integer[], p_key_body text[]"
)
_RECORD_ANSWERS = (
    "SELECT record_send_answers($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)


async def insert_rows(apg: Any, sends: list[NewSend], now: datetime) -> list[bool]:
    """Claim the sends' keys and insert the rows of every send that needs no claim or got it,
    filling in the entries' ids; one statement, committed on its own (call it outside a
    transaction). Returns, per send, whether its rows were inserted."""
    rows: tuple[list[Any], ...] = ([], [], [], [], [])
    for no, send in enumerate(sends):
        for e in send.entries:
            rows[0].append(no)
            rows[1].append(e.dest.channel)
            rows[2].append(e.dest.msisdn)
            rows[3].append(e.encoding)
            rows[4].append(e.segments)
    returned = await apg.fetch(
        _INSERT_ROWS,
        now,
        list(range(len(sends))),
        [s.send_id for s in sends],
        [s.api_key_name for s in sends],
        [s.client_ref for s in sends],
        [s.sender for s in sends],
        [s.key for s in sends],
        [s.body_hash for s in sends],
        [s.expires_at for s in sends],
        *rows,
        [s.callback_url for s in sends],
    )
    ids: dict[str, list[int]] = {}
    for message_id, send_id in returned:
        ids.setdefault(send_id, []).append(message_id)
    inserted = []
    for send in sends:
        got = ids.get(send.send_id)
        inserted.append(got is not None)
        if got is not None:
            for e, message_id in zip(send.entries, sorted(got), strict=True):
                e.id = message_id
    return inserted


async def existing_claim(apg: Any, api_key_name: str, key: str) -> Any:
    """The row of a claim `insert_rows` could not take (None if it has gone meanwhile)."""
    return await apg.fetchrow(_EXISTING_CLAIM, api_key_name, key)


def answer_args(answers: list[Answer], now: datetime) -> tuple[Any, ...]:
    entries = [e for a in answers for e in a.entries]
    keyed = [a for a in answers if a.key is not None]
    return (
        [e.id for e in entries],
        [e.status for e in entries],
        [e.ref for e in entries],
        [e.code for e in entries],
        [e.desc[:DESC_MAX] if e.desc else None for e in entries],
        [e.rate for e in entries],
        [e.currency for e in entries],
        [now if e.answered else None for e in entries],
        now,
        [a.api_key_name for a in keyed],
        [a.key for a in keyed],
        [a.status for a in keyed],
        [a.body.decode() if a.body is not None else None for a in keyed],
    )


def answer_refs(answers: list[Answer]) -> list[str]:
    return [e.ref for a in answers for e in a.entries if e.ref]


async def record_answers(apg: Any, answers: list[Answer], now: datetime) -> None:
    """Record the answers (`RECORD_FUNCTION`) in one round trip: committed when this returns,
    unless the caller sent BEGIN."""
    keys = [lock_key(ref) for ref in answer_refs(answers)]
    await apg.execute(_RECORD_ANSWERS, keys, *answer_args(answers, now))
