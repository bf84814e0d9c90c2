"""Idempotency-Key for sends, kept in the database so it holds across processes.

A key is scoped to the caller's API key name and remembered for `IDEMPOTENCY_TTL_H`. The first
request claims it with `INSERT … ON CONFLICT` in the same statement that records its messages
(`repository.insert_rows`: a claim never exists without its rows, and a failure before sending
leaves no claim; an expired claim of the key is replaced there). A concurrent request with the
same key blocks on that insert until the first commits, then finds the row: 409 while it has
no response, the stored response once it has one, 422 if the body differs.

The final response is stored in the transaction that records the provider's answer. If that
transaction fails, the key stays "in flight" until it expires: a retry gets 409 rather than a
second send, since the provider may have acted.

The body hash is over the normalised request (recipients after normalisation, text, from,
client_ref, detail), so `+60 12-324 0066` and `60123240066` are the same request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from app.bulk360.client import Destination
from app.errors import AppError
from app.messages.outcome import SendAnswer
from app.messages.schemas import SendRequest

REPLAY_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request owns the key: go ahead and send."""


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class InFlight:
    since: datetime


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used with a different body."""


ClaimResult = Claimed | Replay | InFlight | Mismatch


def request_hash(request: SendRequest, destinations: list[Destination]) -> str:
    canonical = {
        "to": [d.provider_to for d in destinations],
        "text": request.text,
        "from": request.sender,
        "client_ref": request.client_ref,
        "detail": request.detail,
    }
    if request.callback_url is not None:  # only when given: earlier keys keep their hash
        canonical["callback_url"] = request.callback_url
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def classify(row: Any, body_hash: str, now: datetime) -> Replay | InFlight | Mismatch:
    """What an existing claim (not ours: `repository.existing_claim`) means for this request."""
    if row is None:
        # Deleted (expired) between our insert and select: treat as in flight, the caller
        # may retry; never send twice on a guess.
        return InFlight(now)
    if row[0] != body_hash:
        return Mismatch()
    if row[1] is None or row[2] is None:
        return InFlight(row[3])
    return Replay(row[1], row[2].encode())


def claim_answer(claim: Replay | InFlight | Mismatch) -> SendAnswer:
    """The answer to a request whose key another request holds (AppError for 409/422)."""
    if isinstance(claim, Replay):
        return SendAnswer(claim.status, claim.body, {REPLAY_HEADER: "true"})
    if isinstance(claim, Mismatch):
        raise AppError(
            422,
            "idempotency_key_reused",
            "Idempotency-Key: already used with a different request body",
        )
    raise AppError(
        409,
        "idempotency_key_in_flight",
        "Idempotency-Key: a request with this key is still in progress (or did not finish; "
        f"started {claim.since.isoformat()}); look its messages up instead of resending",
    )
