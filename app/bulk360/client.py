"""The one place that talks to Bulk360 (API v2.0): the OAuth2 token and the send endpoint.

One long-lived aiohttp session per process (created in the lifespan), a connection limit and a
semaphore of `BULK360_MAX_CONCURRENCY` over every upstream request of the process, explicit
timeouts (`BULK360_TIMEOUT_S`). The token is cached until shortly before `expires_in` and
refreshed under a lock, so any number of concurrent sends on a cold start make one token
request. A 401 from the send endpoint triggers one refresh and one retry.

Everything provider-specific stays here: the form fields, the 150-character `to` limit and the
packing of recipients into as few requests as fit, both answer shapes (flat for one recipient,
`messages` for several), `rate`/`balance` arriving as numbers or strings, the `whatsapp:`
prefix. Callers speak in domain terms: `Destination` in, `Submission` (or an error) out.
Every answer's balance also goes to `balance` (a `BalanceTracker`: gauge, /readyz, saving).

What goes over the wire and comes back (the form, both answer shapes, the error tree every
failure of an upstream request belongs to) is in `protocol.py`; this module is the transport:
the session, the token, the concurrency bound, the retry on 401, the metrics and log lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import aiohttp
import orjson
import structlog

from app.bulk360.balance import BalanceTracker
from app.bulk360.protocol import (
    MAX_TO_CHARS,
    SEND_PATH,
    TOKEN_PATH,
    WHATSAPP_PREFIX,
    AccountProblemError,
    AmbiguousError,
    BatchResult,
    Bulk360Error,
    Channel,
    CredentialsRejectedError,
    Destination,
    InsufficientCreditError,
    NotSentError,
    RequestRefusedError,
    Submission,
    TokenState,
    TokenUnavailableError,
    UnauthorizedError,
    UnreachableError,
    UpstreamError,
    UpstreamTimeoutError,
    decimal_text,
    json_object,
    pack_destinations,
    parse_send_answer,
)
from app.config import Settings
from app.ops.metrics import TOKEN_REFRESHES, UPSTREAM_LATENCY, UPSTREAM_REQUESTS, labelled

log = structlog.get_logger("app.bulk360.client")

# Re-exported: callers speak to the provider through this module.
__all__ = [
    "MAX_TO_CHARS",
    "SEND_PATH",
    "TOKEN_PATH",
    "WHATSAPP_PREFIX",
    "AccountProblemError",
    "AmbiguousError",
    "BatchResult",
    "Bulk360Client",
    "Bulk360Error",
    "Channel",
    "CredentialsRejectedError",
    "Destination",
    "InsufficientCreditError",
    "NotSentError",
    "RequestRefusedError",
    "Submission",
    "TokenState",
    "TokenUnavailableError",
    "UnauthorizedError",
    "UnreachableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "decimal_text",
    "pack_destinations",
]

_FORM = "application/x-www-form-urlencoded"


# -- transport ------------------------------------------------------------------------------------


class _TransportError(Exception):
    """Raised by `_post`: what went wrong at the HTTP level, before any parsing."""

    def __init__(self, kind: Literal["not_written", "timeout", "dropped"], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float  # monotonic
    expires_at: float  # monotonic


class Bulk360Client:
    """The upstream client. `start()` in the lifespan, `close()` on shutdown."""

    def __init__(self, settings: Settings, *, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.timeout_s = settings.bulk360_timeout_s
        self.max_concurrency = settings.bulk360_max_concurrency
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        self._token_lock = asyncio.Lock()
        self._token: _Token | None = None
        self._token_failing = False
        # Token fetches started, and the failure of the last one: requests that queued on the
        # lock behind a failed fetch share that failure instead of each fetching in turn.
        self._token_fetches = 0
        self._token_error: Bulk360Error | None = None
        self._session: aiohttp.ClientSession | None = None
        self.balance = BalanceTracker(settings.low_balance_threshold)

    # -- lifecycle (the HTTP layer: a bench subclass may swap it) -------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _post(
        self, path: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """POST a form; return (status, body) or raise `_TransportError`."""
        if self._session is None:
            raise RuntimeError("Bulk360Client.start() was not called")
        try:
            # Encoded here: aiohttp's FormData builds a multipart writer even for a plain form.
            body = urlencode(form).encode()
            headers = {**headers, "Content-Type": _FORM}
            async with self._session.post(self.base_url + path, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        except aiohttp.ConnectionTimeoutError as exc:
            # Timed out before a connection existed: nothing was written.
            raise _TransportError("not_written", "connect timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            raise _TransportError("not_written", "cannot connect") from exc
        except TimeoutError as exc:
            raise _TransportError("timeout", "no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise _TransportError("dropped", type(exc).__name__) from exc

    # -- token ------------------------------------------------------------------------------------

    @property
    def token_state(self) -> TokenState:
        if self._token_failing:
            return "failing"
        if self._token is None:
            return "none"
        return "valid" if time.monotonic() < self._token.expires_at else "expired"

    def _fresh(self, token: _Token | None, stale: str | None) -> bool:
        return token is not None and token.value != stale and time.monotonic() < token.refresh_at

    async def _access_token(self, stale: str | None = None) -> str:
        """The cached token, or a new one; `stale` is a token the send endpoint refused."""
        token = self._token
        if self._fresh(token, stale):
            assert token is not None
            return token.value
        fetches = self._token_fetches
        async with self._token_lock:
            # Whoever held the lock before us may have refreshed it already.
            token = self._token
            if self._fresh(token, stale):
                assert token is not None
                return token.value
            failed = self._token_error
            if failed is not None and self._token_fetches != fetches:
                # A fetch failed while we waited: with a hung token endpoint, fetching again
                # per queued request would make the n-th caller wait n timeouts.
                raise type(failed)(failed.desc, failed.code)
            self._token_fetches += 1
            try:
                self._token = await self._fetch_token()
            except Bulk360Error as exc:
                self._token_error = exc
                raise
            self._token_error = None
            return self._token.value

    async def _fetch_token(self) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.settings.effective_app_key,
            "client_secret": self.settings.effective_app_secret,
        }
        started = time.perf_counter()
        result = "error"
        try:
            try:
                async with self._semaphore:
                    status, raw = await self._post(TOKEN_PATH, form, {"Accept": "application/json"})
            except _TransportError as exc:
                result = exc.kind
                raise TokenUnavailableError(f"Bulk360 token request failed: {exc.reason}") from None
            result = str(status)
            body = json_object(raw)
            if body is not None and body.get("error") == "invalid_client":
                result = "invalid_client"
                raise CredentialsRejectedError(
                    "Bulk360 rejected the client credentials (invalid_client): check "
                    "BULK360_APP_KEY and BULK360_APP_SECRET",
                    401,
                )
            access = body.get("access_token") if body is not None else None
            if status != 200 or not isinstance(access, str) or not access:
                raise TokenUnavailableError(f"Bulk360 token request failed: HTTP {status}")
            expires_in = body.get("expires_in") if body is not None else None
            ttl = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
            now = time.monotonic()
            # Refresh a little early so a token never expires between check and use.
            margin = min(60.0, ttl / 10)
            self._token_failing = False
            result = "ok"
            return _Token(access, refresh_at=now + ttl - margin, expires_at=now + ttl)
        except Bulk360Error:
            self._token_failing = True
            raise
        finally:
            duration = time.perf_counter() - started
            TOKEN_REFRESHES.labels(result).inc()
            self._observe("token", result, duration, recipients=0)

    # -- send -------------------------------------------------------------------------------------

    async def send(
        self, destinations: Sequence[Destination], *, text: str, sender: str | None
    ) -> list[BatchResult]:
        """Send one text to every destination, in as few upstream requests as fit, concurrently.

        Never raises for an upstream failure: each batch carries its submissions or its error.
        """
        groups = pack_destinations(destinations)
        if len(groups) == 1:
            # Awaited in place: a gather would run it as a task, two event loop turns later.
            return [await self._send_batch(destinations, groups[0], text=text, sender=sender)]
        return list(
            await asyncio.gather(
                *(self._send_batch(destinations, g, text=text, sender=sender) for g in groups)
            )
        )

    async def _send_batch(
        self,
        destinations: Sequence[Destination],
        indices: list[int],
        *,
        text: str,
        sender: str | None,
    ) -> BatchResult:
        batch = [destinations[i] for i in indices]
        form = {"to": ",".join(d.provider_to for d in batch), "text": text, "detail": "1"}
        if sender:
            form["from"] = sender
        try:
            token = await self._access_token()
            status, raw = await self._post_send(form, token, len(batch))
            if status == 401:
                # Expired or revoked early: one fresh token, one retry.
                token = await self._access_token(stale=token)
                status, raw = await self._post_send(form, token, len(batch))
                if status == 401:
                    raise UnauthorizedError(
                        "Bulk360 refused a freshly issued token (401): check the account's "
                        "API access",
                        401,
                    )
            result = parse_send_answer(status, raw, indices, batch)
        except Bulk360Error as exc:
            return BatchResult(indices, [], error=exc)
        self.balance.record(result.balance, result.currency)
        return result

    async def _post_send(self, form: dict[str, str], token: str, count: int) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        started = time.perf_counter()
        result = "error"
        try:
            async with self._semaphore:
                started = time.perf_counter()
                status, raw = await self._post(SEND_PATH, form, headers)
            result = str(status)
            return status, raw
        except _TransportError as exc:
            result = exc.kind
            if exc.kind == "not_written":
                raise UnreachableError(
                    f"Bulk360 unreachable ({exc.reason}); nothing was sent"
                ) from None
            if exc.kind == "timeout":
                raise UpstreamTimeoutError(
                    f"no answer from Bulk360 within {self.timeout_s:g}s; it may have sent"
                ) from None
            raise UpstreamError(
                f"connection to Bulk360 lost after sending ({exc.reason}); it may have sent"
            ) from None
        finally:
            self._observe("send", result, time.perf_counter() - started, recipients=count)

    def _observe(self, endpoint: str, result: str, duration: float, *, recipients: int) -> None:
        labelled(UPSTREAM_REQUESTS, endpoint, result).inc()
        labelled(UPSTREAM_LATENCY, endpoint).observe(duration)
        # One line per upstream call (the contract's operations promise), success included.
        log.info(
            "bulk360 request",
            endpoint=endpoint,
            result=result,
            duration_ms=round(duration * 1000, 2),
            recipients=recipients,
        )
