"""Response shapes of the DN listing and the error-code tables (the hook itself has none)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.bulk360.codes import ErrorCategory


class DeliveryNotificationOut(BaseModel):
    id: int
    seq: int = Field(description="Receipt sequence (the row id): the order DNs were received in.")
    msgid: str
    status: str = Field(description="The DN status exactly as received, e.g. DELIVERED.")
    error_code: str | None = Field(description="Normalised: `0` and `000` are both `000`.")
    error_description: str | None
    msisdn: str | None
    received_at: datetime
    message_id: int | None = Field(description="The message whose ref is `msgid`; null if none.")


class DeliveryNotificationPage(BaseModel):
    items: list[DeliveryNotificationOut]
    next_cursor: str | None = Field(
        description="Pass as `?cursor=` for the next page; null at the end."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "items": [
                        {
                            "id": 42,
                            "seq": 42,
                            "msgid": "a1b2c3d4e5",
                            "status": "UNDELIVERED",
                            "error_code": "501",
                            "error_description": "Absent subscriber",
                            "msisdn": "60123240066",
                            "received_at": "2026-11-24T20:00:00.123456+00:00",
                            "message_id": None,
                        }
                    ],
                    "next_cursor": "ZG4xOjQy",
                }
            ]
        }
    }


class ErrorCode(BaseModel):
    code: str
    description: str
    category: ErrorCategory = Field(description="What can be done about it (CONTRACT §4.6).")


class ErrorCodeTables(BaseModel):
    submit_codes: list[ErrorCode] = Field(description="Codes of the send answer (per recipient).")
    dn_error_codes: list[ErrorCode] = Field(description="`error-code` values of a DN.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "submit_codes": [
                        {"code": "200", "description": "OK", "category": "none"},
                        {
                            "code": "402",
                            "description": "Insufficient Account credit",
                            "category": "account",
                        },
                    ],
                    "dn_error_codes": [
                        {"code": "000", "description": "No Error", "category": "none"},
                        {
                            "code": "501",
                            "description": "Absent Subscriber",
                            "category": "temporary",
                        },
                        {
                            "code": "505",
                            "description": "Unknown subscriber. The IMSI is unknown in the HLR",
                            "category": "permanent",
                        },
                    ],
                }
            ]
        }
    }
