"""Response models of the lookup endpoints (CONTRACT §4.2)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.bulk360.codes import ErrorCategory
from app.callbacks.schemas import CallbackSummary
from app.notifications.schemas import DeliveryNotificationOut
from app.vocabulary import Channel, MessageStatus

_MESSAGE_EXAMPLE: dict[str, JsonValue] = {
    "id": 42,
    "to": "60123240066",
    "channel": "sms",
    "from": "AEONSales",
    "client_ref": "otp-7781",
    "api_key_name": "billing",
    "status": "delivered",
    "code": 200,
    "desc": "Success",
    "delivery_status": "DELIVERED",
    "error_code": "000",
    "error_description": "Delivered",
    "error_category": "none",
    "rate": "0.0800",
    "currency": "MYR",
    "encoding": "gsm7",
    "segments": 1,
    "ref": "BULK360-8f2c1e",
    "submitted_at": "2026-11-24T20:15:03.120431+00:00",
    "final_at": "2026-11-24T20:15:07.882190+00:00",
    "dn_count": 1,
    "created_at": "2026-11-24T20:15:02.998012+00:00",
}


class MessageOut(BaseModel):
    """A message (one recipient of a send) and what became of it."""

    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"example": _MESSAGE_EXAMPLE}
    )

    id: int
    to: str = Field(description="E.164 digits, no '+' or 'whatsapp:' prefix")
    channel: Channel
    sender: str | None = Field(alias="from", description="the sender ID asked for, if any")
    client_ref: str | None
    api_key_name: str = Field(description="name of the API key that sent it")
    status: MessageStatus
    code: int | None = Field(description="the provider's submit code (200 = accepted)")
    desc: str | None = Field(description="the provider's submit description")
    delivery_status: str | None = Field(description="raw status of the last DN received")
    error_code: str | None = Field(description="error code of the last DN received")
    error_description: str | None
    error_category: ErrorCategory = Field(
        description="what can be done about its outcome (none, temporary, permanent, account, "
        "expired, unknown): from its last DN's code, or its submit code when rejected"
    )
    rate: str | None = Field(description="price charged, a decimal string")
    currency: str | None
    encoding: Literal["gsm7", "ucs2"] | None
    segments: int | None
    ref: str | None = Field(description="the provider's reference; null until it answered")
    submitted_at: datetime | None
    final_at: datetime | None = Field(description="when a DELIVERED/UNDELIVERED DN arrived")
    dn_count: int
    created_at: datetime


class MessageDetail(MessageOut):
    """A message with every DN received for it, in order of receipt."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "example": {
                **_MESSAGE_EXAMPLE,
                "notifications": [
                    {
                        "id": 9001,
                        "seq": 9001,
                        "msgid": "BULK360-8f2c1e",
                        "status": "DELIVERED",
                        "error_code": "000",
                        "error_description": "Delivered",
                        "error_category": "none",
                        "msisdn": "60123240066",
                        "received_at": "2026-11-24T20:15:07.882190+00:00",
                        "message_id": 42,
                    }
                ],
                "callbacks": [
                    {
                        "id": 7,
                        "state": "delivered",
                        "attempts": 1,
                        "last_status_code": 200,
                        "last_error": None,
                        "next_attempt_at": None,
                    }
                ],
            }
        },
    )

    notifications: list[DeliveryNotificationOut]
    callbacks: list[CallbackSummary] = Field(description="its status-callback events, oldest first")


class MessagePage(BaseModel):
    """A page of messages, newest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "items": [_MESSAGE_EXAMPLE],
                "next_cursor": "djEuMTc5NTU1MTMwMjk5ODAxMi40Mg",
            }
        }
    )

    items: list[MessageOut]
    next_cursor: str | None
