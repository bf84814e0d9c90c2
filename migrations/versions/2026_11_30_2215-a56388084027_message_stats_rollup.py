"""message stats rollup

Hourly message counts (and spend) per API key, channel, status, error code, submit code and
currency, for `GET /v1/stats` (app/outcomes/stats.py explains the choice and its figures).
Statement-level triggers on `messages` append one signed delta row per key each statement
changed (from its transition tables: no per-row trigger, no shared row updated by concurrent
writers); the sweeper folds the deltas into `message_stats_hourly`. The rollup is filled from
the existing messages here, after the triggers exist and under their lock, so nothing written
meanwhile is missed or counted twice.

Revision ID: a56388084027
Revises: 5d1f0c2b7a93
Create Date: 2026-11-30 22:15:59.383502+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a56388084027"
down_revision: str | None = "5d1f0c2b7a93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "hour, api_key_name, channel, status, error_code, submit_code, currency"

# The rate the provider gave as text ("0.2500") or a number (0.11); anything else counts 0
# rather than failing the writer's statement. Inlined by the planner (a plain SQL function).
_RATE_FUNCTION = r"""
CREATE FUNCTION message_stats_rate(rate text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN rate ~ '^[0-9]{1,18}(\.[0-9]{1,12})?$' THEN rate::numeric ELSE 0 END
$$
"""
_SIGNED = """
        SELECT {sign} AS sign, created_at, api_key_name, channel, status, error_code,
               submit_code, currency, rate FROM {rows}"""
# Each statement's change summed per key: +1 per new row, -1 per old row. Keys whose count
# and spend did not change (a duplicate DN) leave no row. (A transition table exists only for
# the events that have it, hence one INSERT per event.)
_DELTA_INSERT = """
        INSERT INTO message_stats_deltas
            (hour, api_key_name, channel, status, error_code, submit_code, currency,
             messages, spend)
        SELECT date_trunc('hour', created_at, 'UTC'), api_key_name, channel, status,
               error_code, submit_code, currency, sum(sign),
               sum(sign * message_stats_rate(rate))
        FROM ({rows}) AS change
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        HAVING sum(sign) <> 0 OR sum(sign * message_stats_rate(rate)) <> 0;"""
_INSERT_ROWS = _DELTA_INSERT.format(rows=_SIGNED.format(sign=1, rows="new_rows"))
_DELETE_ROWS = _DELTA_INSERT.format(rows=_SIGNED.format(sign=-1, rows="old_rows"))
_UPDATE_ROWS = _DELTA_INSERT.format(
    rows=_SIGNED.format(sign=1, rows="new_rows")
    + "\n        UNION ALL"
    + _SIGNED.format(sign=-1, rows="old_rows")
)
_DELTA_FUNCTION = f"""
CREATE FUNCTION message_stats_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN{_INSERT_ROWS}
    ELSIF TG_OP = 'DELETE' THEN{_DELETE_ROWS}
    ELSE{_UPDATE_ROWS}
    END IF;
    RETURN NULL;
END $$
"""
# DELETE rather than TRUNCATE: a TRUNCATE that lists these tables too (the test suite empties
# every table in one statement) would find them in use.
_TRUNCATE_FUNCTION = """
CREATE FUNCTION message_stats_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_stats_hourly;
    DELETE FROM message_stats_deltas;
    RETURN NULL;
END $$
"""
_TRIGGERS = {
    "message_stats_insert": "AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows",
    "message_stats_update": (
        "AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    ),
    "message_stats_delete": "AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows",
}


def _stats_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_key_name", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("submit_code", sa.Integer(), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("spend", sa.Numeric(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table("message_stats_hourly", *_stats_columns())
    op.create_index(
        "uq_message_stats_hourly_key",
        "message_stats_hourly",
        _KEY.split(", "),
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.create_table("message_stats_deltas", *_stats_columns())
    op.execute(_RATE_FUNCTION)
    op.execute(_DELTA_FUNCTION)
    op.execute(_TRUNCATE_FUNCTION)
    for name, when in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT "
            "EXECUTE FUNCTION message_stats_delta()"
        )
    op.execute(
        "CREATE TRIGGER message_stats_truncate AFTER TRUNCATE ON messages "
        "FOR EACH STATEMENT EXECUTE FUNCTION message_stats_truncate()"
    )
    op.execute(
        r"""
INSERT INTO message_stats_hourly
    (hour, api_key_name, channel, status, error_code, submit_code, currency, messages, spend)
SELECT date_trunc('hour', created_at, 'UTC'), api_key_name, channel, status, error_code,
       submit_code, currency, count(*),
       sum(message_stats_rate(rate))
FROM messages
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
    )


def downgrade() -> None:
    for name in (*_TRIGGERS, "message_stats_truncate"):
        op.execute(f"DROP TRIGGER {name} ON messages")
    op.execute("DROP FUNCTION message_stats_truncate()")
    op.execute("DROP FUNCTION message_stats_delta()")
    op.execute("DROP FUNCTION message_stats_rate(text)")
    op.drop_table("message_stats_deltas")
    op.drop_index("uq_message_stats_hourly_key", table_name="message_stats_hourly")
    op.drop_table("message_stats_hourly")
