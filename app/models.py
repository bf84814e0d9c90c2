"""All tables in one place (Alembic reads this one import).

- `messages`: one row per recipient of a send, written (status `unknown`, no ref) *before* the
  upstream request, then filled in from the answer; DNs update it, the last received wins.
- `delivery_notifications`: every DN ever received, raw; `id` is drawn from a database sequence
  at insert time and is the receipt order (`seq` in the API) - never a clock.
- `idempotency_keys`: one row per (API key name, Idempotency-Key), holding the stored response.
- `provider_balances`: the latest balance Bulk360 reported, per currency (app/bulk360/balance.py).
- `console_sign_in_failures`: the console's failed sign-ins per client address, and when it may
  try again (app/console/throttle.py).
- `callback_events`: the status-callback outbox. Triggers on `messages` (migration
  `callback_events`) bump `messages.version` on every change of status, delivery_status or
  error_code (and when the send's answer is first recorded) and, for a message with a
  `callback_url`, insert the event with a snapshot of the fields its body needs, in the same
  transaction as the change. `callback_attempts`: every delivery attempt of an event.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow
from app.vocabulary import Channel, MessageStatus, sql_in


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # All rows of one POST /v1/messages share it (a UUID), e.g. to find the rest of a batch.
    send_id: Mapped[str] = mapped_column(String(36))
    api_key_name: Mapped[str] = mapped_column(String(64))
    client_ref: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    msisdn: Mapped[str] = mapped_column(String(32))  # E.164 digits, no '+' or 'whatsapp:'
    sender: Mapped[str | None] = mapped_column(String(11))  # the `from` field
    encoding: Mapped[str | None] = mapped_column(String(8))
    segments: Mapped[int | None] = mapped_column(Integer)
    # Null until the provider answers; unique so a DN's msgid finds exactly one message.
    ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.UNKNOWN)
    submit_code: Mapped[int | None] = mapped_column(Integer)
    submit_desc: Mapped[str | None] = mapped_column(String(255))
    rate: Mapped[str | None] = mapped_column(String(32))  # decimal text, as the provider charged
    currency: Mapped[str | None] = mapped_column(String(8))
    # The last DN received (highest receipt sequence) decides these.
    delivery_status: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_description: Mapped[str | None] = mapped_column(String(255))
    last_dn_seq: Mapped[int | None] = mapped_column(BigInteger)
    dn_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Counts the message's changes (bumped by the database trigger); callbacks carry it.
    version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Where status callbacks for this message go (null: none).
    callback_url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(sql_in("status", MessageStatus), name="status_valid"),
        CheckConstraint(sql_in("channel", Channel), name="channel_valid"),
        # Lookups are newest first with keyset pagination on (created_at, id).
        Index("ix_messages_created_at_id", "created_at", "id"),
        Index("ix_messages_msisdn_created_at_id", "msisdn", "created_at", "id"),
        Index("ix_messages_status_created_at_id", "status", "created_at", "id"),
        # Partial: most messages have no client_ref, and each status change (a non-HOT
        # update) inserts into every index that takes the row.
        Index(
            "ix_messages_client_ref_created_at_id",
            "client_ref",
            "created_at",
            "id",
            postgresql_where=text("client_ref IS NOT NULL"),
        ),
        Index("ix_messages_send_id", "send_id"),
    )


class DeliveryNotification(Base):
    __tablename__ = "delivery_notifications"

    # An identity column (a database sequence): the receipt order.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    msgid: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(32))  # normalised ("0" -> "000")
    error_description: Mapped[str | None] = mapped_column(String(255))
    msisdn: Mapped[str | None] = mapped_column(String(64))
    # Null while no message carries this msgid as its ref (the DN may beat the send answer).
    message_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey("messages.id", ondelete="SET NULL"),
    )
    raw: Mapped[str] = mapped_column(Text)  # every field as received, JSON
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_delivery_notifications_msgid_id", "msgid", "id"),
        Index("ix_delivery_notifications_message_id_id", "message_id", "id"),
        Index(
            "ix_delivery_notifications_unmatched_id",
            "id",
            postgresql_where=text("message_id IS NULL"),
        ),
        # The unmatched DNs by msgid in byte order: a ref being recorded finds its waiting
        # DNs, suffixed msgids included (`ref-0`, `ref.0602-0`), as one range (app/delivery.py).
        Index(
            "ix_delivery_notifications_unmatched_msgid",
            "msgid",
            postgresql_ops={"msgid": "text_pattern_ops"},
            postgresql_where=text("message_id IS NULL"),
        ),
    )


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    api_key_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # NULL while the first request is in flight; then the stored answer.
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)


class ProviderBalance(Base):
    __tablename__ = "provider_balances"

    currency: Mapped[str] = mapped_column(String(8), primary_key=True)
    # Numeric with no scale keeps the provider's digits ("187.9236" stays "187.9236").
    amount: Mapped[Decimal] = mapped_column(Numeric)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsoleSignInFailure(Base):
    """Failed console sign-ins in a row from one client address (app/console/throttle.py)."""

    __tablename__ = "console_sign_in_failures"

    address: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)  # 0: a first try is being checked
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _stats_columns() -> list[Column[object]]:
    """The key of a statistics row (what `GET /v1/stats` groups and filters by) and its sums."""
    return [
        Column("hour", UTCDateTime, nullable=False),  # of messages.created_at, in UTC
        Column("api_key_name", String(64), nullable=False),
        Column("channel", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("error_code", String(16)),  # the last DN's
        Column("submit_code", Integer),  # the provider's answer to the send
        Column("currency", String(8)),
        Column("messages", BigInteger, nullable=False),
        Column("spend", Numeric, nullable=False),  # sum of the parsed `rate`s
    ]


# The statistics rollup (app/outcomes/stats.py): messages counted per hour of creation and key.
# Statement triggers on `messages` append signed deltas (one row per key a statement changed,
# never an update of a shared row); the sweeper folds them into the hourly table.
message_stats_hourly = Table(
    "message_stats_hourly",
    Base.metadata,
    *_stats_columns(),
    Index(
        "uq_message_stats_hourly_key",
        "hour",
        "api_key_name",
        "channel",
        "status",
        "error_code",
        "submit_code",
        "currency",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
)
message_stats_deltas = Table("message_stats_deltas", Base.metadata, *_stats_columns())
CALLBACK_STATES = ("pending", "delivered", "failed", "superseded", "gone")


class CallbackEvent(Base):
    """One status change of a message to push to its callback URL (written by the trigger)."""

    __tablename__ = "callback_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # No foreign key: its per-event check was most of the trigger's cost (see the migration);
    # a trigger deletes a message's events with it.
    message_id: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    # The message as it was at this version: the body is built from these, so every retry
    # sends the same bytes.
    ref: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    submit_code: Mapped[int | None] = mapped_column(Integer)  # for error_category
    delivery_status: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_description: Mapped[str | None] = mapped_column(String(255))
    dn_count: Mapped[int] = mapped_column(Integer)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Due time while pending (null otherwise); `claimed_until` is the lease of the process
    # sending it now: past it, another process may claim the event again.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'superseded', 'gone')",
            name="state_valid",
        ),
        Index(
            "ix_callback_events_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_callback_events_message_id_id", "message_id", "id"),
        # Lists are newest first with keyset pagination on (recorded_at, id).
        Index("ix_callback_events_recorded_at_id", "recorded_at", "id"),
        Index("ix_callback_events_state_recorded_at_id", "state", "recorded_at", "id"),
    )


class CallbackAttempt(Base):
    """One HTTP attempt to deliver a callback event, with its outcome."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("callback_events.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(255))
    duration_ms: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_callback_attempts_event_id_id", "event_id", "id"),)
