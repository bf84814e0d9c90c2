"""DN batches as one JSON parameter: dn_store_batch(p_batch jsonb)

The DN writer sends its batch as one JSON text, column by column, instead of nine array
parameters: asyncpg's array encoding cost the relay more CPU per DN than the rest of the
call (app/notifications/repository.py gives the figures). The function turns the columns back
into the arrays the statement reads; the statement itself is unchanged. The body is a frozen
copy of `app.notifications.repository.STORE_FUNCTION` at this revision (tests/test_migrations.py
compares the two). The downgrade restores the previous function, as 3b7e9c2d41f0 created it.

Revision ID: 6a1e4d9c2f58
Revises: 8f2d6b1c3e47
Create Date: 2026-12-01 06:30:00+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "6a1e4d9c2f58"
down_revision: str | None = "8f2d6b1c3e47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ARGS = "p_batch jsonb"
_BODY = """
DECLARE
    p_lock_keys bigint[] := ARRAY(SELECT c::bigint FROM jsonb_array_elements_text(p_batch->0) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_lock_exclusive boolean[] := ARRAY(SELECT c::boolean FROM jsonb_array_elements_text(p_batch->1) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_msgid text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->2) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_status text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->3) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_error_code text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->4) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_error_description text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->5) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_msisdn text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->6) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_raw text[] := ARRAY(SELECT c::text FROM jsonb_array_elements_text(p_batch->7) WITH ORDINALITY AS a(c, i) ORDER BY i);
    p_ts double precision[] := ARRAY(SELECT c::double precision FROM jsonb_array_elements_text(p_batch->8) WITH ORDINALITY AS a(c, i) ORDER BY i);
BEGIN
    PERFORM CASE WHEN s.x THEN pg_advisory_xact_lock(s.k)
                 ELSE pg_advisory_xact_lock_shared(s.k) END
    FROM (SELECT * FROM unnest(p_lock_keys, p_lock_exclusive) AS u(k, x) ORDER BY 1) AS s;

    WITH ins AS (
        INSERT INTO delivery_notifications
            (msgid, status, error_code, error_description, msisdn, raw, received_at, message_id)
        SELECT t.msgid, t.status, t.error_code, t.error_description, t.msisdn, t.raw,
               to_timestamp(t.ts), coalesce(m.id, cut.id)
        FROM unnest(p_msgid, p_status, p_error_code, p_error_description, p_msisdn, p_raw,
                    p_ts) WITH ORDINALITY
             AS t(msgid, status, error_code, error_description, msisdn, raw, ts, ord)
        LEFT JOIN messages m ON m.ref = t.msgid
        LEFT JOIN LATERAL (
            SELECT c.id FROM messages c
            WHERE m.id IS NULL AND (strpos(t.msgid, '-') > 0 OR strpos(t.msgid, '.') > 0)
              AND c.ref = ANY (ARRAY(SELECT left(t.msgid, p - 1) FROM generate_series(length(t.msgid), 2, -1) AS p WHERE substr(t.msgid, p, 1) IN ('-', '.') ORDER BY p DESC LIMIT 4))
            ORDER BY length(c.ref) DESC LIMIT 1
        ) AS cut ON true
        ORDER BY t.ord
        RETURNING id, message_id, status, error_code, error_description, received_at
    ), d AS (
        SELECT DISTINCT ON (message_id) id, message_id, status, error_code, error_description,
               received_at, count(*) OVER (PARTITION BY message_id) AS n
        FROM ins WHERE message_id IS NOT NULL
        ORDER BY message_id, id DESC
    )
    UPDATE messages SET dn_count = messages.dn_count + d.n,
    last_dn_seq = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN d.id ELSE messages.last_dn_seq END,
    delivery_status = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN d.status ELSE messages.delivery_status END,
    error_code = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN d.error_code ELSE messages.error_code END,
    error_description = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN d.error_description ELSE messages.error_description END,
    status = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN CASE WHEN NOT (upper(d.status) IN ('DELIVERED', 'UNDELIVERED') AND coalesce(d.error_code, '') NOT IN ('556')) THEN
            CASE WHEN messages.status IN ('delivered', 'undelivered') THEN 'pending'
                 ELSE messages.status END
        WHEN upper(d.status) = 'DELIVERED' THEN 'delivered'
        ELSE 'undelivered' END ELSE messages.status END,
    final_at = CASE WHEN (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id) THEN CASE WHEN (upper(d.status) IN ('DELIVERED', 'UNDELIVERED') AND coalesce(d.error_code, '') NOT IN ('556')) THEN d.received_at
        WHEN messages.status IN ('delivered', 'undelivered') THEN NULL
        ELSE messages.final_at END ELSE messages.final_at END,
    updated_at = CURRENT_TIMESTAMP
    FROM d WHERE messages.id = d.message_id;
END
"""


def _previous():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("2026_12_01_0110-3b7e9c2d41f0_dn_store_batch_function.py")
    spec = importlib.util.spec_from_file_location("dn_store_batch_arrays", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    _previous().downgrade()
    op.execute(
        f"CREATE FUNCTION dn_store_batch({_ARGS}) RETURNS void LANGUAGE plpgsql"
        f" AS $body${_BODY}$body$"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION dn_store_batch({_ARGS})")
    _previous().upgrade()
