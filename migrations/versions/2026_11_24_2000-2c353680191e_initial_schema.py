"""initial schema

Revision ID: 2c353680191e
Revises:
Create Date: 2026-11-24 20:00:04.245317+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2c353680191e"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_name", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("api_key_name", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "messages",
        sa.Column(
            "id",
            sa.BigInteger(),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("send_id", sa.String(length=36), nullable=False),
        sa.Column("api_key_name", sa.String(length=64), nullable=False),
        sa.Column("client_ref", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("msisdn", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=11), nullable=True),
        sa.Column("encoding", sa.String(length=8), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=True),
        sa.Column("ref", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("submit_code", sa.Integer(), nullable=True),
        sa.Column("submit_desc", sa.String(length=255), nullable=True),
        sa.Column("rate", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("delivery_status", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("error_description", sa.String(length=255), nullable=True),
        sa.Column("last_dn_seq", sa.BigInteger(), nullable=True),
        sa.Column("dn_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("final_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "channel IN ('sms', 'whatsapp')", name=op.f("ck_messages_channel_valid")
        ),
        sa.CheckConstraint(
            "status IN ('unknown', 'pending', 'delivered', 'undelivered', 'rejected')",
            name=op.f("ck_messages_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("ref", name=op.f("uq_messages_ref")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_client_ref_created_at_id", ["client_ref", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_messages_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_messages_msisdn_created_at_id", ["msisdn", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_messages_send_id", ["send_id"], unique=False)
        batch_op.create_index(
            "ix_messages_status_created_at_id", ["status", "created_at", "id"], unique=False
        )

    op.create_table(
        "delivery_notifications",
        sa.Column(
            "id",
            sa.BigInteger(),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("msgid", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("error_description", sa.String(length=255), nullable=True),
        sa.Column("msisdn", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_delivery_notifications_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_notifications")),
    )
    with op.batch_alter_table("delivery_notifications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_notifications_message_id_id", ["message_id", "id"], unique=False
        )
        batch_op.create_index("ix_delivery_notifications_msgid_id", ["msgid", "id"], unique=False)
        batch_op.create_index(
            "ix_delivery_notifications_unmatched_id",
            ["id"],
            unique=False,
            postgresql_where=sa.text("message_id IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery_notifications", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_delivery_notifications_unmatched_id",
            postgresql_where=sa.text("message_id IS NULL"),
        )
        batch_op.drop_index("ix_delivery_notifications_msgid_id")
        batch_op.drop_index("ix_delivery_notifications_message_id_id")

    op.drop_table("delivery_notifications")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_status_created_at_id")
        batch_op.drop_index("ix_messages_send_id")
        batch_op.drop_index("ix_messages_msisdn_created_at_id")
        batch_op.drop_index("ix_messages_created_at_id")
        batch_op.drop_index("ix_messages_client_ref_created_at_id")

    op.drop_table("messages")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_expires_at")

    op.drop_table("idempotency_keys")
