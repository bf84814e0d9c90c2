"""Send answers in one round trip: the database function record_send_answers

The send path's answers (the refs' locks, the rows filled in with the Idempotency-Key
responses, and the DNs that beat them attached) as one plpgsql function, which the writer
calls outside BEGIN so that its COMMIT comes in the same round trip
(app/messages/repository.py explains why). The body is a frozen copy of
`app.messages.repository.RECORD_FUNCTION` at this revision; tests/test_migrations.py compares
the two, so a change to that SQL comes with a migration replacing the function.

Revision ID: 9d4c1f6a2b85
Revises: 3b7e9c2d41f0
Create Date: 2026-12-01 01:40:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9d4c1f6a2b85"
down_revision: str | None = "3b7e9c2d41f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ARGS = (
    "p_lock_keys bigint[], p_id bigint[], p_status text[], p_ref text[], p_code integer[], "
    "p_descr text[], p_rate text[], p_currency text[], "
    "p_submitted_at timestamp with time zone[], p_now timestamp with time zone, "
    "p_key_api_key_name text[], p_key text[], p_key_status integer[], p_key_body text[]"
)
_BODY = """
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
        RETURNING m.id, m.ref, EXISTS (SELECT 1 FROM delivery_notifications d WHERE d.message_id IS NULL AND d.msgid ~>=~ m.ref AND d.msgid ~<~ (m.ref || '/')) AS waiting
    )
    SELECT array_agg(id), array_agg(ref) INTO waiting_ids, waiting_refs
    FROM recorded WHERE waiting;
    IF waiting_ids IS NOT NULL THEN
        WITH attached_dns AS (
WITH pick AS (
    SELECT DISTINCT ON (d.id) d.id, v.id AS message_id
    FROM unnest(waiting_ids, waiting_refs) AS v(id, ref)
    JOIN delivery_notifications d ON d.message_id IS NULL AND d.msgid ~>=~ v.ref AND d.msgid ~<~ (v.ref || '/')
    WHERE (d.msgid = v.ref OR (substr(d.msgid, length(v.ref) + 1, 1) IN ('-', '.') AND length(substr(d.msgid, length(v.ref) + 1)) - length(translate(substr(d.msgid, length(v.ref) + 1), '-.', '')) <= 4))
    ORDER BY d.id, length(v.ref) DESC
)
UPDATE delivery_notifications d SET message_id = pick.message_id
FROM pick WHERE d.id = pick.id
RETURNING d.message_id
)
        SELECT array_agg(DISTINCT message_id) INTO attached FROM attached_dns;
        IF attached IS NOT NULL THEN
UPDATE messages SET
    dn_count = (SELECT count(*) FROM delivery_notifications c WHERE c.message_id = messages.id),
    last_dn_seq = d.id,
    delivery_status = d.status,
    error_code = d.error_code,
    error_description = d.error_description,
    status = CASE WHEN NOT (upper(d.status) IN ('DELIVERED', 'UNDELIVERED') AND coalesce(d.error_code, '') NOT IN ('556')) THEN
            CASE WHEN messages.status IN ('delivered', 'undelivered') THEN 'pending'
                 ELSE messages.status END
        WHEN upper(d.status) = 'DELIVERED' THEN 'delivered'
        ELSE 'undelivered' END,
    final_at = CASE WHEN (upper(d.status) IN ('DELIVERED', 'UNDELIVERED') AND coalesce(d.error_code, '') NOT IN ('556')) THEN d.received_at
        WHEN messages.status IN ('delivered', 'undelivered') THEN NULL
        ELSE messages.final_at END,
    updated_at = CURRENT_TIMESTAMP
FROM (
    SELECT DISTINCT ON (dn.message_id)
           dn.id, dn.message_id, dn.status, dn.error_code, dn.error_description, dn.received_at
    FROM delivery_notifications dn
    WHERE dn.message_id = ANY(attached)
    ORDER BY dn.message_id, dn.id DESC
) AS d
WHERE messages.id = d.message_id
  AND (messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id);
        END IF;
    END IF;
END
"""


def upgrade() -> None:
    # Planned for each batch's own size: see RECORD_FUNCTION's comment.
    op.execute(
        f"CREATE FUNCTION record_send_answers({_ARGS}) RETURNS void LANGUAGE plpgsql"
        f" SET plan_cache_mode = force_custom_plan AS $body${_BODY}$body$"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION record_send_answers({_ARGS})")
