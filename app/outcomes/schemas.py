"""Response shapes of the outcomes endpoints (`GET /v1/stats`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.bulk360.codes import ErrorCategory


class ErrorCodeCount(BaseModel):
    code: str = Field(description="A DN error code, or the send's code for rejected messages")
    description: str
    category: ErrorCategory
    count: int


class Spend(BaseModel):
    currency: str
    amount: str = Field(description="Decimal string: the sum of the provider's rates")


class StatsBucket(BaseModel):
    start: datetime = Field(description="Start of the bucket (UTC)")
    total: int
    delivered: int
    undelivered: int
    expired: int
    pending: int
    rejected: int
    unknown: int


class Stats(BaseModel):
    """How the messages created in [since, until) are doing now."""

    since: datetime
    until: datetime
    total: int
    by_status: dict[str, int] = Field(description="Every status, zeros included")
    delivery_rate: float | None = Field(
        description="delivered / (delivered + undelivered + expired); null when that is 0"
    )
    by_error_category: dict[str, int] = Field(description="Every category, zeros included")
    top_error_codes: list[ErrorCodeCount] = Field(description="The 10 most frequent, by count")
    spend: list[Spend] = Field(
        description="What the provider charged for the messages it accepted, per currency"
    )
    series: list[StatsBucket]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "since": "2026-11-24T00:00:00Z",
                    "until": "2026-11-25T00:00:00Z",
                    "total": 1200,
                    "by_status": {
                        "unknown": 1,
                        "pending": 30,
                        "delivered": 1100,
                        "undelivered": 50,
                        "rejected": 9,
                        "expired": 10,
                    },
                    "delivery_rate": 0.9483,
                    "by_error_category": {
                        "none": 1130,
                        "temporary": 40,
                        "permanent": 10,
                        "account": 9,
                        "expired": 10,
                        "unknown": 1,
                    },
                    "top_error_codes": [
                        {
                            "code": "501",
                            "description": "Absent Subscriber",
                            "category": "temporary",
                            "count": 40,
                        }
                    ],
                    "spend": [{"currency": "MYR", "amount": "132.0000"}],
                    "series": [
                        {
                            "start": "2026-11-24T00:00:00Z",
                            "total": 50,
                            "delivered": 46,
                            "undelivered": 2,
                            "expired": 1,
                            "pending": 1,
                            "rejected": 0,
                            "unknown": 0,
                        }
                    ],
                }
            ]
        }
    }
