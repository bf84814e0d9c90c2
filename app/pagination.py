"""Opaque keyset cursors shared by every list endpoint (messages, delivery notifications).

A list is ordered newest first by `(timestamp, id)`; a cursor is the key of the last row of
a page, and the next page is every row strictly before it. Rows inserted while a caller pages
are newer than the first page's key, so they never shift later pages (no skip, no repeat),
unlike OFFSET.

Format: base64url (no padding) of `<list>.<microseconds since the epoch, UTC>.<id>`, where
`<list>` names the list that issued it (`v1`: messages, `dn1`: delivery notifications), so a
cursor from one list is refused by another rather than read as a position in it. It is not
signed: lookups are not scoped per API key, so a hand-made cursor can only move where a page
starts, which the filters already allow. It is validated strictly instead: anything that is
not exactly a cursor this module wrote is a 400 `invalid_cursor`, never a 500 or a silently
empty page. A cursor used with different filters is accepted: it is only a position.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy import ColumnElement, literal, tuple_

from app.errors import AppError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500  # every list: a larger `limit` is a 422, never clamped
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")]
_PAYLOAD = re.compile(r"^([a-z0-9]{1,8})\.(-?[0-9]{1,18})\.([0-9]{1,19})$")
MESSAGES = "v1"
DELIVERY_NOTIFICATIONS = "dn1"
_MAX_ID = 2**63 - 1  # a BIGINT: larger would fail in the database, not here
_MAX_CURSOR_LEN = 64


@dataclass(frozen=True)
class Cursor:
    """The key of the last row of a page: (timestamp, id)."""

    at: datetime
    id: int


def encode_cursor(at: datetime, id_: int, list_: str = MESSAGES) -> str:
    if at.tzinfo is None:
        raise ValueError("cursor timestamps must be timezone-aware")
    delta = at.astimezone(UTC) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raw = f"{list_}.{micros}.{id_}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(value: str, list_: str = MESSAGES) -> Cursor:
    """Parse a cursor from a query string; 400 `invalid_cursor` unless it is well-formed and
    issued by this list."""
    invalid = AppError(400, "invalid_cursor", "cursor: not a cursor returned by this API")
    if not value or len(value) > _MAX_CURSOR_LEN:
        raise invalid
    try:
        padded = value + "=" * (-len(value) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (UnicodeError, binascii.Error, ValueError):
        raise invalid from None
    # Re-encoding must give back the exact input: rejects stray characters that base64
    # decoding would otherwise skip, and non-canonical padding bits.
    if base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode() != value:
        raise invalid
    match = _PAYLOAD.match(raw)
    if match is None or match.group(1) != list_:
        raise invalid
    micros, id_ = int(match.group(2)), int(match.group(3))
    if id_ > _MAX_ID:
        raise invalid
    try:
        at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise invalid from None
    return Cursor(at, id_)


def before(at_column: Any, id_column: Any, cursor: Cursor) -> ColumnElement[bool]:
    """`(at, id) < (cursor.at, cursor.id)`: rows after the cursor in newest-first order.

    A row-value comparison, so Postgres walks the `(…, created_at, id)` index from the
    cursor on.
    """
    return tuple_(at_column, id_column) < tuple_(
        _typed(at_column, cursor.at), _typed(id_column, cursor.id)
    )


def _typed(column: Any, value: object) -> Any:
    # Bound with the column's type so UTCDateTime converts it as it converts stored values.
    return literal(value, type_=column.type)
