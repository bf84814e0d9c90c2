"""The domain's words, spelled once: message statuses and channels (used by the models' CHECK
constraints, the schemas and the SQL), and the string type every stored text field uses."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator


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
