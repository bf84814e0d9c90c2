"""Bulk360 API v2.0 on the wire: the send form's recipients, both answer shapes, and what
each failure means for money (the transport that carries them is `client.py`).

A later protocol version (Bulk360's v3.0 drops OAuth2 and reports account problems in the DN)
would be a sibling of this module and of `client.py`, keeping these domain types and this
error tree, so nothing outside app/bulk360/ changes.

Exceptions (every failure of one upstream request is a `Bulk360Error`):

    Bulk360Error                  base; `code`/`desc` are what to record on the rows
    ├── NotSentError              the provider certainly did not act: nothing was charged
    │   ├── CredentialsRejectedError  the token endpoint answered `invalid_client`
    │   ├── TokenUnavailableError     the token endpoint failed otherwise (down, timeout)
    │   ├── UnauthorizedError         the send endpoint answered 401 twice (fresh token)
    │   ├── InsufficientCreditError   whole request refused: 402
    │   ├── AccountProblemError       whole request refused: 403, 412 or 413
    │   ├── RequestRefusedError       whole request refused otherwise (400, other 4xx)
    │   └── UnreachableError          no connection could be made: nothing was written
    └── AmbiguousError            the provider may have acted: never resend automatically
        ├── UpstreamTimeoutError      no answer within BULK360_TIMEOUT_S once sent
        └── UpstreamError             connection dropped after writing, 5xx, unreadable body
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson

from app.bulk360.codes import submit_description

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path
SEND_PATH = "/api/bulk360/v2.0"
MAX_TO_CHARS = 150  # the provider's limit on the `to` field
WHATSAPP_PREFIX = "whatsapp:"

Channel = Literal["sms", "whatsapp"]
TokenState = Literal["none", "valid", "expired", "failing"]


# -- errors -------------------------------------------------------------------------------------


class Bulk360Error(Exception):
    """One upstream request failed as a whole; `code`/`desc` describe it for the rows."""

    def __init__(self, desc: str, code: int | None = None) -> None:
        super().__init__(desc)
        self.desc = desc
        self.code = code


class NotSentError(Bulk360Error):
    """The provider certainly did not act on the message(s)."""


class CredentialsRejectedError(NotSentError):
    pass


class TokenUnavailableError(NotSentError):
    pass


class UnauthorizedError(NotSentError):
    pass


class InsufficientCreditError(NotSentError):
    pass


class AccountProblemError(NotSentError):
    pass


class RequestRefusedError(NotSentError):
    pass


class UnreachableError(NotSentError):
    pass


class AmbiguousError(Bulk360Error):
    """The provider may have acted: the messages stay `unknown`, never resent by us."""


class UpstreamTimeoutError(AmbiguousError):
    pass


class UpstreamError(AmbiguousError):
    pass


# -- domain types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    msisdn: str  # E.164 digits, no '+'
    channel: Channel

    @property
    def provider_to(self) -> str:
        return WHATSAPP_PREFIX + self.msisdn if self.channel == "whatsapp" else self.msisdn


@dataclass(frozen=True, slots=True)
class Submission:
    """The provider's answer for one recipient."""

    code: int
    desc: str
    ref: str | None
    rate: str | None  # decimal text
    currency: str | None

    @property
    def accepted(self) -> bool:
        return self.code == 200 and bool(self.ref)


@dataclass(slots=True)
class BatchResult:
    """One upstream request: which destinations it carried and what became of them.

    `submissions[i]` answers `indices[i]`; a `None` entry means the answer did not mention
    that recipient (treated as ambiguous). When `error` is set, `submissions` is empty.
    """

    indices: list[int]
    submissions: list[Submission | None]
    balance: str | None = None
    currency: str | None = None
    error: Bulk360Error | None = None


def pack_destinations(destinations: Sequence[Destination]) -> list[list[int]]:
    """Indices of `destinations` grouped so each group's `to` fits the 150-character limit.

    First fit, in request order: fewest requests for entries of (nearly) equal length, and
    each group keeps the request order of its members.
    """
    groups: list[list[int]] = []
    lengths: list[int] = []
    for i, dest in enumerate(destinations):
        size = len(dest.provider_to)
        for g, used in enumerate(lengths):
            if used + 1 + size <= MAX_TO_CHARS:
                groups[g].append(i)
                lengths[g] = used + 1 + size
                break
        else:
            groups.append([i])
            lengths.append(size)
    return groups


def decimal_text(value: object) -> str | None:
    """A provider number (float, int or string) as decimal text; None if it is not one."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, str | int | float):
        return None
    try:
        # str() first: Decimal(0.11) would carry the float's binary noise.
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return str(number) if number.is_finite() else None


# -- answer parsing -------------------------------------------------------------------------------

_ACCOUNT_CODES = frozenset({403, 412, 413})


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _int_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _whole_request_error(code: int, desc: str) -> Bulk360Error:
    if code == 402:
        return InsufficientCreditError(desc, code)
    if code in _ACCOUNT_CODES:
        return AccountProblemError(f"Bulk360 account problem ({code}): {desc}", code)
    if code == 401:
        return UnauthorizedError(desc, code)
    if 400 <= code < 500:
        return RequestRefusedError(f"Bulk360 refused the request ({code}): {desc}", code)
    return UpstreamError(f"Bulk360 answered {code}: {desc}; it may have sent", code)


def parse_send_answer(
    status: int, raw: bytes, indices: list[int], batch: list[Destination]
) -> BatchResult:
    body = json_object(raw)
    if status >= 500:
        raise UpstreamError(f"Bulk360 answered HTTP {status}; it may have sent", status)
    if body is None:
        raise UpstreamError(f"unreadable answer from Bulk360 (HTTP {status}); it may have sent")
    entries = _entries(body, status)
    if status != 200:
        raise UpstreamError(f"Bulk360 answered HTTP {status} with results; it may have sent")

    balance = decimal_text(body.get("balance"))
    currency = body.get("currency") if isinstance(body.get("currency"), str) else None
    by_to: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("to"), str):
            by_to.setdefault(entry["to"].strip().lower(), entry)
    submissions: list[Submission | None] = []
    for position, dest in enumerate(batch):
        entry = by_to.get(dest.provider_to)
        if entry is None and len(entries) == len(batch) and isinstance(entries[position], dict):
            entry = entries[position]  # the provider rewrote `to`: fall back to order
        submissions.append(_submission(entry, currency) if entry is not None else None)
    return BatchResult(indices, submissions, balance=balance, currency=currency)


def _entries(body: dict[str, Any], status: int) -> list[Any]:
    """The per-recipient entries of an answer; a whole-request answer raises its error."""
    if isinstance(body.get("messages"), list):
        return list(body["messages"])
    if "to" in body and status == 200:
        return [body]  # the flat shape of a single recipient
    # A whole-request answer: {"code": 402, "desc": "..."}, under whatever HTTP status.
    code = _int_code(body.get("code")) or status
    desc = body.get("desc")
    desc = desc if isinstance(desc, str) and desc else submit_description(code)
    if code == 200:
        raise UpstreamError("Bulk360 answered OK without per-recipient results")
    raise _whole_request_error(code, desc)


def _submission(entry: Mapping[str, Any], currency: str | None) -> Submission | None:
    code = _int_code(entry.get("code"))
    ref = entry.get("ref")
    ref = str(ref) if isinstance(ref, str | int) and str(ref) else None
    if code is None or (code == 200 and ref is None):
        return None  # no usable answer for this recipient: ambiguous
    desc = entry.get("desc")
    rate = decimal_text(entry.get("rate"))
    entry_currency = entry.get("currency")
    return Submission(
        code=code,
        desc=desc if isinstance(desc, str) and desc else submit_description(code),
        ref=ref if code == 200 else None,
        rate=rate,
        currency=entry_currency if isinstance(entry_currency, str) else currency if rate else None,
    )
