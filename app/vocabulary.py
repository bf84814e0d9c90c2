"""The domain's words, spelled once: message statuses and channels (used by the models' CHECK
constraints, the schemas and the SQL), and the string type every stored text field uses."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator


class MessageStatus(StrEnum):
    UNKNOWN = "unknown"  # written before the upstream call, or the provider may have acted
    PENDING = "pending"  # accepted with a ref, no final DN yet
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    REJECTED = "rejected"  # the provider refused it: nothing was sent
    EXPIRED = "expired"  # no final DN within DN_DEADLINE_H (a later DN still decides)


class Channel(StrEnum):
    SMS = "sms"
    WHATSAPP = "whatsapp"


def sql_in(column: str, values: type[StrEnum]) -> str:
    """`column IN ('a', 'b')` for a CHECK constraint (fixed enum values only, never input)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


def storable(value: str) -> str:
    """Refuse what JSON can carry but PostgreSQL text cannot hold: NUL (a 500 instead of a
    422) and a lone surrogate (no UTF-8 spelling: a send would fail after its rows were
    written)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (it holds an unpaired surrogate)") from None
    return value


StorableStr = Annotated[str, AfterValidator(storable)]
"""A string PostgreSQL can store (no NUL character); use it for every client-given text field."""


_NUMBER = re.compile(r"\s*[+-]?[0-9]+(\.[0-9]*)?\s*")


def _iso_only(value: object) -> object:
    # pydantic would read `since=15` as a Unix timestamp (1970): refuse it instead.
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("must be an ISO 8601 date-time with offset, e.g. 2026-11-24T00:00:00Z")
    return value


def _aware(value: datetime) -> datetime:
    # A naive time is refused rather than guessed: UTC and Malaysian time are 8 hours apart.
    if value.tzinfo is None:
        raise ValueError(
            f"needs a UTC offset, e.g. 2026-11-24T20:15:00Z (got {value.isoformat()!r})"
        )
    try:
        value.astimezone(UTC)  # as the column stores it: 9999-12-31T23:59-23:59 overflows
    except OverflowError:
        raise ValueError(f"out of range in UTC (got {value.isoformat()!r})") from None
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_aware)]
"""A time filter (`since`, `until`): ISO 8601 with a UTC offset, never a bare number."""
