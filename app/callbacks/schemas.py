"""Response models of the callback endpoints (CONTRACT §4.5) and the `callbacks` list of a
message (§4.2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import CallbackEvent

CallbackState = Literal["pending", "delivered", "failed", "superseded", "gone"]

_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "state": "delivered",
    "attempts": 1,
    "last_status_code": 200,
    "last_error": None,
    "next_attempt_at": None,
}
_EVENT_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "message_id": 42,
    "version": 2,
    "status": "delivered",
    "delivery_status": "DELIVERED",
    "error_code": "000",
    "recorded_at": "2026-11-24T20:15:07.883001Z",
    "delivered_at": "2026-11-24T20:15:07.901220Z",
    "host": "billing.internal",
}


class CallbackSummary(BaseModel):
    """One status-callback event of a message, as `GET /v1/messages/{ref}` lists it."""

    model_config = ConfigDict(json_schema_extra={"example": _SUMMARY_EXAMPLE})

    id: int
    state: CallbackState
    attempts: int = Field(description="attempts made (since the last redeliver)")
    last_status_code: int | None = Field(description="the receiver's last HTTP status")
    last_error: str | None = Field(description="the last attempt's error (timeout, refused…)")
    next_attempt_at: datetime | None = Field(description="when it is due, while pending")


class CallbackEventOut(CallbackSummary):
    """A status-callback event: one change of a message, to push to its callback URL."""

    model_config = ConfigDict(json_schema_extra={"example": _EVENT_EXAMPLE})

    message_id: int
    version: int = Field(description="the message's change counter this event reports")
    status: str = Field(description="the message's status at this version")
    delivery_status: str | None
    error_code: str | None
    recorded_at: datetime = Field(description="when the change was recorded")
    delivered_at: datetime | None
    host: str = Field(description="the callback URL's host (the URL itself is not shown)")


class CallbackPage(BaseModel):
    """A page of callback events, newest first; pass `next_cursor` as `cursor`."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"items": [_EVENT_EXAMPLE], "next_cursor": None}}
    )

    items: list[CallbackEventOut]
    next_cursor: str | None


class RedeliverOut(BaseModel):
    """The event queued again."""

    model_config = ConfigDict(json_schema_extra={"example": {"id": 7, "state": "pending"}})

    id: int
    state: Literal["pending"]


def summary(event: CallbackEvent) -> CallbackSummary:
    return CallbackSummary(
        id=event.id,
        state=event.state,
        attempts=event.attempts,
        last_status_code=event.last_status_code,
        last_error=event.last_error,
        next_attempt_at=event.next_attempt_at,
    )
