"""Response shapes of the DN listing and the error-code tables (the hook itself has none).

`DeliveryNotificationOut` is the one shape of a DN, in the listing and in a message's
`notifications`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import BaseModel, Field

from app.bulk360.codes import ErrorCategory
from app.delivery import category_of_dn
from app.models import DeliveryNotification


class DeliveryNotificationOut(BaseModel):
    """One DN as received; `seq` is its receipt order (a database sequence)."""

    id: int
    seq: int = Field(description="Receipt sequence (the row id): the order DNs were received in.")
    msgid: str = Field(description="As received (`<ref>-0` and the like included).")
    status: str = Field(description="The DN status exactly as received, e.g. DELIVERED.")
    error_code: str | None = Field(description="Normalised: `0` and `000` are both `000`.")
    error_description: str | None
    error_category: ErrorCategory = Field(description="What can be done about it (§4.6).")
    msisdn: str | None
    received_at: datetime
    message_id: int | None = Field(
        description="The message whose ref is `msgid` (or `msgid` less a `-`/`.` suffix); "
        "null while there is none."
    )

    @classmethod
    def from_row(cls, row: DeliveryNotification) -> Self:
        return cls(
            id=row.id,
            seq=row.id,
            msgid=row.msgid,
            status=row.status,
            error_code=row.error_code,
            error_description=row.error_description,
            error_category=category_of_dn(row.status, row.error_code),
            msisdn=row.msisdn,
            received_at=row.received_at,
            message_id=row.message_id,
        )


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
                            "error_category": "temporary",
                            "msisdn": "60123240066",
                            "received_at": "2026-11-24T20:00:00.123456+00:00",
                            "message_id": None,
                        }
                    ],
                    "next_cursor": "djEuMTc5NTU1MTMwMjk5ODAxMi40Mg",
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
