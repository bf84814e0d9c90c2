"""One callback attempt on the wire, and what its outcome means for the event.

`post` sends the signed body and reports the status code or the error (never the URL: its
query may hold the receiver's token), the duration, and a 429/503's `Retry-After`.
`next_state` applies CONTRACT §4.5: 2xx delivered, 410 gone, anything else retried after the
schedule's next delay (+0-10% jitter, or `Retry-After` when longer), failed once it is used up.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from app.db import utcnow

MAX_RETRY_AFTER_S = 86_400.0
_RESPONSE_READ_MAX = 65_536  # what we read of a receiver's answer (only its status matters)


@dataclass(slots=True)
class Outcome:
    code: int | None  # the receiver's HTTP status, None when there was none
    error: str | None  # timeout or connection failure, for `last_error`
    retry_after: float | None  # seconds, from a 429/503
    duration_s: float

    @property
    def label(self) -> str:
        """The metric label: 2xx, 3xx, 4xx, 410, 429, 5xx, timeout, connection_error."""
        if self.code is None:
            timed_out = self.error is not None and self.error.startswith("timeout")
            return "timeout" if timed_out else "connection_error"
        if self.code in (410, 429):
            return str(self.code)
        return f"{self.code // 100}xx"


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> Outcome:
    """POST one attempt (the session's timeout bounds it; redirects are not followed)."""
    started = time.perf_counter()
    code = retry_after = error = None
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as r:
            code = r.status
            if code in (429, 503):
                retry_after = _retry_after(r.headers.get("Retry-After"))
            await r.content.read(_RESPONSE_READ_MAX)
    except TimeoutError:
        error = f"timeout after {session.timeout.total:g} s"
    except aiohttp.ClientError as exc:
        error = _describe(exc)
    return Outcome(code, error, retry_after, time.perf_counter() - started)


def next_state(
    attempt: int, outcome: Outcome, schedule: Sequence[float]
) -> tuple[str, float | None]:
    """(new state, seconds until the next attempt) after attempt number `attempt` (1, 2, …)."""
    code = outcome.code
    if code is not None and 200 <= code < 300:
        return "delivered", None
    if code == 410:
        return "gone", None
    if attempt > len(schedule):
        return "failed", None
    delay = schedule[attempt - 1] * (1 + random.random() * 0.1)
    if outcome.retry_after is not None and outcome.retry_after > delay:
        delay = outcome.retry_after
    return "pending", delay


class NoLinkLocalResolver(aiohttp.ThreadedResolver):
    """Refuses host names that resolve to link-local addresses (169.254.0.0/16, fe80::/10:
    cloud metadata) when an attempt connects: a name that passed the send's check may point
    there later. IP literals are checked when the send names them."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = [r for r in await super().resolve(host, port, family) if not link_local(r["host"])]
        if not found:
            raise OSError(f"{host} resolves to a link-local address only; refused")
        return found


def link_local(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local


def origin(url: str) -> str:
    """The receiver an attempt goes to: the URL up to its path, as stored (scheme://netloc).
    Claims skip URLs starting with a full origin's text; that may also hold back a URL that
    merely extends it (`http://a:80` and `http://a:8080`) for a moment, never send one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return url[: len(parts.scheme) + 3 + len(parts.netloc)]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - utcnow()).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def _describe(exc: aiohttp.ClientError) -> str:
    """An attempt's error for `last_error`: never the URL (its query may hold a token)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc.os_error}"
    return type(exc).__name__
