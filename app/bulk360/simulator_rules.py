"""The simulator's rules: its configuration, the recipients it accepts, and the reserved
numbers that make it misbehave on purpose (the server is `simulator.py`).

Special behaviour is reserved to recipients 60199990000 to 60199999999 (019-999 xxxx), chosen by
the last four digits. Every other valid number is accepted and gets exactly one DELIVERED DN
with error-code `000`.

| last 4 | behaviour |
|---|---|
| `0402` | whole request: HTTP 402 `Insufficient Account credit`, nothing sent |
| `0403` | whole request: HTTP 403, the doc's 403 desc, nothing sent |
| `0412` | whole request: HTTP 412 `Account suspended / Terminated / Not activated`, nothing sent |
| `0413` | whole request: HTTP 413, the doc's 413 desc, nothing sent |
| `0405` | this recipient rejected: code 405 `Invalid Message Type`, no ref (HTTP 200) |
| `0406` | this recipient rejected: code 406 `Message content is not approved`, no ref |
| `0407` | this recipient rejected: code 407 `Banned Content detected. Your account is suspended` |
| `0500` | whole request: HTTP 500 `{"code":500,"desc":"Internal server error"}`, nothing sent |
| `0900` | accepted and recorded as sent, but answered only after `slow_s` (past a client timeout) |
| `0901` | accepted and recorded as sent, then the connection is reset without an answer |
| `0902` | accepted and recorded as sent, answered HTTP 200 with a non-JSON (HTML) body |
| `2ccc` | accepted; one UNDELIVERED DN, error-code `str(int(ccc))`: `2501` → `501`, `2050` → `50` |
| `3000` | accepted; no DN at all |
| `3001` | accepted; DNs UNDELIVERED `511`, then DELIVERED `000` (final: DELIVERED) |
| `3002` | accepted; DELIVERED `000` twice (a duplicate) |
| `3003` | accepted; DELIVERED `000`, then UNDELIVERED `501` (out of order: final UNDELIVERED) |
| `3004` | accepted; one DELIVERED DN without the optional `error-code` field |
| `3005` | accepted; one DELIVERED `000` DN whose `msgid` is `<ref>-0` |
| `3006` | accepted; one DELIVERED `000` DN whose `msgid` is `<ref>.0602-0` |

When a request holds several whole-request specials, the first in `to` order decides.
Recipient entries that are not 6 to 15 digits (after an optional `whatsapp:` prefix), or a `from`
that is not 1 to 11 letters/digits, make the whole request a 400, like a missing field.
"""

from __future__ import annotations

import base64
import os
import random
import re
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from app.bulk360.codes import SUBMIT_CODES
from app.bulk360.segments import RM0_PREFIX, Encoding, count_segments

# The doc's table (codes.py), with 406 cut to its first sentence: the rest is advice to the
# reader of the doc, not what an API answer would carry.
DESCS = {**SUBMIT_CODES, 406: "Message content is not approved"}
INVALID_CLIENT = {
    "error": "invalid_client",
    "error_description": "Client authentication failed",
    "message": "Client authentication failed",
}

SPECIAL = re.compile(r"6019999(\d{4})")
MSISDN = re.compile(r"\d{6,15}")
SENDER = re.compile(r"[A-Za-z0-9]{1,11}")
WHOLE_REQUEST_CODES = {"0402": 402, "0403": 403, "0412": 412, "0413": 413, "0500": 500}
REJECT_CODES = {"0405": 405, "0406": 406, "0407": 407}
FAULTS = ("0900", "0901", "0902")
_EVEN_RATE, _ODD_RATE = Decimal("0.11"), Decimal("0.25")
_CENTS4 = Decimal("0.0001")
ALNUM = string.digits + string.ascii_letters


def money(value: Decimal) -> str:
    return str(value.quantize(_CENTS4))


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass
class SimulatorConfig:
    app_key: str = "sandbox-app-key"
    app_secret: str = "sandbox-app-secret"  # noqa: S105 - the public sandbox value
    token_ttl_s: float = 3600
    dn_url: str | None = None
    dn_delay_s: float = 1.0
    slow_s: float = 60.0
    balance: Decimal = Decimal("1000.0000")
    currency: str = "MYR"
    dn_attempts: int = 4
    dn_backoff_s: float = 0.2
    latency_ms: float = 0.0

    @classmethod
    def from_env(cls) -> SimulatorConfig:
        """Read BULK360_APP_KEY/SECRET and SIMULATOR_* (unset or empty → the default)."""
        d = cls()
        raw_balance = os.environ.get("SIMULATOR_BALANCE", "").strip()
        try:
            balance = Decimal(raw_balance) if raw_balance else d.balance
        except ArithmeticError:
            raise ValueError(f"SIMULATOR_BALANCE must be a number, got {raw_balance!r}") from None
        return cls(
            app_key=os.environ.get("BULK360_APP_KEY") or d.app_key,
            app_secret=os.environ.get("BULK360_APP_SECRET") or d.app_secret,
            token_ttl_s=_env_float("SIMULATOR_TOKEN_TTL_S", d.token_ttl_s),
            dn_url=os.environ.get("SIMULATOR_DN_URL") or None,
            dn_delay_s=_env_float("SIMULATOR_DN_DELAY_S", d.dn_delay_s),
            slow_s=_env_float("SIMULATOR_SLOW_S", d.slow_s),
            balance=balance,
            latency_ms=_env_float("SIMULATOR_LATENCY_MS", d.latency_ms),
        )


@dataclass
class Recipient:
    to: str  # as given, echoed back
    msisdn: str
    channel: str  # "sms" | "whatsapp"
    special: str | None  # last 4 digits inside the reserved range

    @property
    def rate(self) -> Decimal:
        return _EVEN_RATE if int(self.msisdn[-1]) % 2 == 0 else _ODD_RATE

    @property
    def rate_json(self) -> float | str:
        # The doc's example shows both types; a client must cope with either.
        return 0.11 if self.rate == _EVEN_RATE else money(self.rate)


def parse_recipients(to: str) -> list[Recipient] | None:
    result = []
    for entry in to.split(","):
        given = entry.strip()
        number, channel = given, "sms"
        if given[:9].lower() == "whatsapp:":
            number, channel = given[9:], "whatsapp"
        if not MSISDN.fullmatch(number):
            return None
        match = SPECIAL.fullmatch(number)
        result.append(Recipient(given, number, channel, match.group(1) if match else None))
    return result


def dn_plan(special: str | None) -> list[tuple[str, str | None]]:
    """(status, error-code) of each DN for one accepted recipient, in sending order."""
    plans: dict[str, list[tuple[str, str | None]]] = {
        "3000": [],
        "3001": [("UNDELIVERED", "511"), ("DELIVERED", "000")],
        "3002": [("DELIVERED", "000"), ("DELIVERED", "000")],
        "3003": [("DELIVERED", "000"), ("UNDELIVERED", "501")],
        "3004": [("DELIVERED", None)],
    }
    if special in plans:
        return plans[special]
    if special is not None and special[0] == "2":
        return [("UNDELIVERED", str(int(special[1:])))]
    return [("DELIVERED", "000")]


# Public Bulk360 integrations report DN msgids with these suffixes on the ref (CONTRACT §4.3).
MSGID_SUFFIXES = {"3005": "-0", "3006": ".0602-0"}


@dataclass
class PlannedDN:
    ref: str
    msgid: str  # the ref, or the ref with a suffix (3005, 3006)
    msisdn: str
    status: str
    error_code: str | None
    how: str  # "GET" | "POST"


def new_token(ttl_s: float) -> str:
    """Opaque, but shaped like the doc's Passport JWT (header.claims.signature)."""
    now = time.time()
    header = {"typ": "JWT", "alg": "RS256"}
    claims = {
        "aud": "18",
        "jti": uuid.uuid4().hex + secrets.token_hex(24),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "sub": "",
        "scopes": ["*"],
    }
    return ".".join(
        (b64(orjson.dumps(header)), b64(orjson.dumps(claims)), b64(secrets.token_bytes(512)))
    )


def new_ref(seq: int, multi: bool) -> str:
    """A ref shaped like the doc's (`E2104…`, multi-recipient ones with a `-` part). `seq` (per
    simulator) keeps refs unique; the random part keeps two simulator runs' refs apart."""
    n, digits = seq, ""
    while n or len(digits) < 5:
        n, digit = divmod(n, 62)
        digits = ALNUM[digit] + digits
    body = time.strftime("%y%m") + "".join(random.choices(ALNUM, k=5)) + digits
    if multi:
        return f"E{body}-{''.join(random.choices(ALNUM, k=10))}"
    return f"E{body}"


Charge = tuple[int, Recipient, int, Encoding]  # position in `to`, recipient, segments, encoding


def charges(recipients: list[Recipient], text: str) -> list[Charge]:
    """What each accepted recipient is charged for: segments of the text as the provider
    counts them (with its `RM0 ` prefix for Malaysian SMS; WhatsApp: one charge)."""
    accepted: list[Charge] = []
    for i, r in enumerate(recipients):
        if r.special in REJECT_CODES:
            continue
        if r.channel == "sms" and r.msisdn.startswith("60"):
            encoding, segments = count_segments(text, prefix=RM0_PREFIX)  # the provider's own
        elif r.channel == "sms":
            encoding, segments = count_segments(text)
        else:
            encoding, segments = count_segments(text)[0], 1
        accepted.append((i, r, segments, encoding))
    return accepted
