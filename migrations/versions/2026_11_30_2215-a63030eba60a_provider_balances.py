"""provider balances

The latest balance Bulk360 reported, per currency: written in the background by each serve
process (app/bulk360/balance.py), read at start-up to seed /readyz and the gauge, and by the
operator console.

Revision ID: a63030eba60a
Revises: 02aab3674a5e
Create Date: 2026-11-30 22:15:38.019152+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a63030eba60a"
down_revision: str | None = "02aab3674a5e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_balances",
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("currency", name=op.f("pk_provider_balances")),
    )


def downgrade() -> None:
    op.drop_table("provider_balances")
