"""Standard Webhooks v1 signatures (standardwebhooks.com): the headers of one attempt.

`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
base64-decoded part of a `whsec_` secret; one space-separated signature per configured secret,
so a receiver rotating its secret verifies with either. A few lines of `hmac` rather than the
`standardwebhooks` package at run time: the tests verify with that package, as receivers do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from app import __version__

USER_AGENT = f"bulk360-relay/{__version__}"
TOLERANCE_S = 300  # how far a receiver accepts a webhook-timestamp from its clock


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (validated by Settings)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def verify(keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: float) -> bool:
    """A receiver's check (the `callback-receiver` command): one of the signatures matches one
    key, and the timestamp is within `TOLERANCE_S` of `now`, as `standardwebhooks` checks."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_S:
        return False
    presented = headers.get("webhook-signature", "").split(" ")
    expected = signature_header(keys, msg_id, int(timestamp), body).split(" ")
    return any(hmac.compare_digest(p, e) for p in presented for e in expected)


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt (the timestamp is the attempt's, the id the event's)."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
    }
