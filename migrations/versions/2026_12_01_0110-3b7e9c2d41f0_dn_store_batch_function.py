"""DN batches in one round trip: the database function dn_store_batch

The DN writer's batch (its locks, the INSERT of the DNs and the UPDATE of their messages) as
one plpgsql function, which the writer calls outside BEGIN so that its COMMIT comes in the
same round trip (app/notifications/repository.py explains why). The body is a frozen copy of
`app.notifications.repository.STORE_FUNCTION` at this revision; tests/test_migrations.py
compares the two, so a change to the batch's SQL comes with a migration replacing the function.

Revision ID: 3b7e9c2d41f0
Revises: 7c1b5e0a9d42
Create Date: 2026-12-01 01:10:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "3b7e9c2d41f0"
down_revision: str | None = "7c1b5e0a9d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ARGS = (
    "p_lock_keys bigint[], p_lock_exclusive boolean[], p_msgid text[], p_status text[], "
    "p_error_code text[], p_error_description text[], p_msisdn text[], p_raw text[], "
    "p_ts double precision[]"
)
_BODY = """
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


def upgrade() -> None:
    op.execute(
        f"CREATE FUNCTION dn_store_batch({_ARGS}) RETURNS void LANGUAGE plpgsql"
        f" AS $body${_BODY}$body$"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION dn_store_batch({_ARGS})")
