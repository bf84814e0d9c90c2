"""unmatched DNs by msgid, in byte order (suffixed msgids)

Revision ID: 5d1f0c2b7a93
Revises: a63030eba60a
Create Date: 2026-11-30 22:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d1f0c2b7a93"
down_revision: str | None = "a63030eba60a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only DNs without a message are in it: ingest of matched DNs pays nothing for it.
    op.create_index(
        "ix_delivery_notifications_unmatched_msgid",
        "delivery_notifications",
        ["msgid"],
        postgresql_ops={"msgid": "text_pattern_ops"},
        postgresql_where=sa.text("message_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_notifications_unmatched_msgid", "delivery_notifications")
