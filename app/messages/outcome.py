"""What a send answers, from the provider's answers: pure, no database, no I/O.

- `prepare`: one `Entry` per unique recipient, with what an SMS is billed as (encoding,
  segments, counting the provider's `RM0 ` prefix).
- `apply`: fills the entries from the upstream requests' `BatchResult`s and picks the failure
  that names the whole answer.
- `answer`: the HTTP status and the JSON body.

With several upstream requests the answer is 201 only when every recipient got a definite
answer (accepted or rejected). Otherwise the HTTP status is that of the worst failure
(ambiguous 504/502 first, then 402, then the account/credential 502s, `FAILURES`' order) and
the error body still lists every entry with its own status, so any accepted parts and their
refs are not lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from app.bulk360.client import (
    AccountProblemError,
    AmbiguousError,
    BatchResult,
    Bulk360Error,
    CredentialsRejectedError,
    Destination,
    InsufficientCreditError,
    RequestRefusedError,
    UnauthorizedError,
    UpstreamTimeoutError,
)
from app.bulk360.segments import count_segments, provider_prefix

DESC_MAX = 255  # messages.submit_desc

# Order decides which failure names the whole answer when upstream requests fail differently.
FAILURES: tuple[tuple[type[Bulk360Error], int, str], ...] = (
    (UpstreamTimeoutError, 504, "upstream_timeout"),
    (AmbiguousError, 502, "upstream_error"),
    (InsufficientCreditError, 402, "insufficient_credit"),
    (AccountProblemError, 502, "upstream_account_problem"),
    (CredentialsRejectedError, 502, "upstream_credentials_rejected"),
    (UnauthorizedError, 502, "upstream_unauthorized"),
    (RequestRefusedError, 502, "upstream_refused"),
    (Bulk360Error, 502, "upstream_unavailable"),
)


@dataclass(slots=True)
class SendAnswer:
    """What the endpoint answers: status, JSON body, extra headers; and what the request's
    log line adds about the send (`ops.middleware.LOG_FIELDS`)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    log_fields: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class Entry:
    """One recipient of a send: its row id once recorded, then the provider's answer."""

    dest: Destination
    encoding: str | None
    segments: int | None
    id: int = 0
    status: str = "unknown"
    ref: str | None = None
    code: int | None = None
    desc: str | None = None
    rate: str | None = None
    currency: str | None = None
    answered: bool = False  # the provider said something definite about it
    outcome: str = "unknown"  # the SENDS metric's label


def prepare(text: str, destinations: list[Destination]) -> list[Entry]:
    # Segments depend only on the provider's prefix: count once per distinct prefix.
    by_prefix: dict[str, tuple[str, int]] = {}
    entries = []
    for dest in destinations:
        if dest.channel == "whatsapp":
            entries.append(Entry(dest, None, None))
            continue
        prefix = provider_prefix(dest.msisdn, dest.channel)
        if prefix not in by_prefix:
            by_prefix[prefix] = count_segments(text, prefix=prefix)
        encoding, segments = by_prefix[prefix]
        entries.append(Entry(dest, encoding, segments))
    return entries


def apply(entries: list[Entry], batches: list[BatchResult]) -> Bulk360Error | None:
    """Fill the entries from the provider's answers; return the failure naming the answer."""
    failures: list[Bulk360Error] = []
    for batch in batches:
        if batch.error is not None:
            failures.append(batch.error)
            _apply_failure(entries, batch.indices, batch.error)
            continue
        for i, sub in zip(batch.indices, batch.submissions, strict=True):
            e = entries[i]
            if sub is None:
                e.desc = "Bulk360's answer did not mention this recipient; it may have sent"
                failures.append(AmbiguousError(e.desc))
                continue
            e.answered, e.code, e.desc = True, sub.code, sub.desc
            e.rate, e.currency = sub.rate, sub.currency
            if sub.accepted:
                e.status, e.ref, e.outcome = "pending", sub.ref, "pending"
            else:
                e.status, e.outcome = "rejected", "rejected"
    return worst(failures)


def _apply_failure(entries: list[Entry], indices: list[int], error: Bulk360Error) -> None:
    for i in indices:
        e = entries[i]
        e.desc = error.desc
        if isinstance(error, AmbiguousError):
            continue  # stays unknown: the provider may have sent it
        e.status, e.code, e.answered = "rejected", error.code, True
        e.outcome = (
            "insufficient_credit" if isinstance(error, InsufficientCreditError) else "rejected"
        )


def worst(failures: list[Bulk360Error]) -> Bulk360Error | None:
    """The failure that names the whole answer (`FAILURES`' order), or None."""
    if not failures:
        return None
    for kind, _, _ in FAILURES:
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    return failures[0]


def balance(batches: list[BatchResult]) -> tuple[str | None, str | None]:
    """The balance to report and its currency."""
    # Concurrent requests each report the balance before themselves: the lowest is the latest.
    reported = [b for b in batches if b.balance is not None]
    currency = next((b.currency for b in batches if b.currency), None)
    if not reported:
        return None, currency
    return min(reported, key=lambda b: Decimal(str(b.balance))).balance, currency


def http_status(failure: Bulk360Error | None) -> tuple[int, str | None]:
    """The HTTP status and error code of an answer whose worst failure is `failure`."""
    if failure is None:
        return 201, None
    return next((s, c) for kind, s, c in FAILURES if isinstance(failure, kind))


def answer(
    entries: list[Entry],
    *,
    failure: Bulk360Error | None,
    balance: str | None,
    currency: str | None,
    detail: bool,
    sandbox: bool,
) -> tuple[int, bytes]:
    """The HTTP status and JSON body of the answer."""
    messages = [
        {
            "id": e.id,
            "to": e.dest.provider_to,
            "channel": e.dest.channel,
            "ref": e.ref,
            "status": e.status,
            "code": e.code,
            "desc": e.desc,
            "rate": e.rate if detail else None,
            "currency": e.currency if detail else None,
            "encoding": e.encoding,
            "segments": e.segments,
        }
        for e in entries
    ]
    body: dict[str, Any] = {}
    status, code = http_status(failure)
    if failure is not None:
        body = {"error": code, "detail": failure.desc}
    body |= {
        "messages": messages,
        "balance": balance if detail else None,
        "currency": currency if detail else None,
        "sandbox": sandbox,
    }
    return status, orjson.dumps(body)
