"""expired message status

A `pending` message with no final DN within DN_DEADLINE_H becomes `expired` (CONTRACT §4.6).
The expiry sweep finds its candidates through `ix_messages_status_created_at_id`
(status = 'pending' AND created_at < cutoff), so no new index is needed.

Revision ID: 02aab3674a5e
Revises: 2c353680191e
Create Date: 2026-11-30 22:06:14.521064+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "02aab3674a5e"
down_revision: str | None = "2c353680191e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('unknown', 'pending', 'delivered', 'undelivered', 'rejected')"
_NEW = "status IN ('unknown', 'pending', 'delivered', 'undelivered', 'rejected', 'expired')"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint(op.f("ck_messages_status_valid"), type_="check")
        batch_op.create_check_constraint("status_valid", _NEW)


def downgrade() -> None:
    # An expired message had no final DN: it is pending again under the old vocabulary.
    op.execute("UPDATE messages SET status = 'pending', final_at = NULL WHERE status = 'expired'")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint(op.f("ck_messages_status_valid"), type_="check")
        batch_op.create_check_constraint("status_valid", _OLD)
