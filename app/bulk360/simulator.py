"""A stand-in for the Bulk360 gateway, faithful to its API document (v2.0).

Used by sandbox mode, the tests and the benchmarks, in another process's event loop
(`await Simulator(config).start()`) or standalone (`bulk360-relay simulator`). It implements:

- `POST /oauth/token` — form `grant_type=client_credentials&client_id=…&client_secret=…`;
  exactly the pair of its config is accepted, anything else gets the doc's `invalid_client`
  body with HTTP 401. Tokens expire `token_ttl_s` after issue.
- `POST /api/bulk360/v2.0` — `Authorization: Bearer <token>`, form `to, from, text, detail`.
  One recipient answers the flat shape, several the `messages` shape, as in the doc; with
  `detail=1`, `balance` is the balance *before* the send (a 4-decimal string) and `rate` is the
  number `0.11` for numbers ending in an even digit and the string `"0.2500"` for odd ones —
  the doc's own example has both types. Charges: `simulator_rules.charges`.
- Delivery notifications to `dn_url` (if set), `dn_delay_s` after the send, with fields
  `status`, `error-code`, `msisdn`, `msgid`. The doc does not say whether the provider uses GET
  or POST, so DNs alternate: the n-th DN scheduled since start/reset goes as a GET with a query
  string when n is even, as a POST with an urlencoded form when odd; retried when not answered
  200 (`dn_attempts`, doubling from `dn_backoff_s`); a message's DNs go one after the other.
- Latency: `latency_ms` (`SIMULATOR_LATENCY_MS`) holds every token and send answer that long,
  as the distance to the real provider would: a timer per request, not a queue.
- Inspection: `GET /_simulator/sent` (accepted MTs), `GET /_simulator/state` (every call to
  the token and send URLs counted, `balance`, each DN delivery attempt), `POST
  /_simulator/reset`, `POST /_simulator/expire-tokens` (every issued token stops working).

The reserved numbers and what each one does are in `simulator_rules.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import socket
import struct
import time
from decimal import Decimal
from typing import Any

import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from app.bulk360.simulator_rules import (
    DESCS,
    FAULTS,
    INVALID_CLIENT,
    MSGID_SUFFIXES,
    REJECT_CODES,
    SENDER,
    WHOLE_REQUEST_CODES,
    Charge,
    PlannedDN,
    Recipient,
    SimulatorConfig,
    charges,
    dn_plan,
    json_response,
    money,
    new_ref,
    new_token,
    parse_recipients,
)

__all__ = ["Simulator", "SimulatorConfig", "run"]

log = structlog.get_logger("app.bulk360.simulator")

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a password
SEND_PATH = "/api/bulk360/v2.0"


class Simulator:
    """The Bulk360 stand-in: an aiohttp app plus what it has seen, readable by tests."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.base_url = ""  # set by start()
        self.token_requests = 0
        self.mt_requests = 0
        self.sent: list[dict[str, Any]] = []
        self.dn_deliveries: list[dict[str, Any]] = []
        self._spent = Decimal(0)
        self._tokens: dict[str, float] = {}  # token → time.monotonic() it expires at
        self._ref_seq = 0
        self._dn_seq = 0
        self._dn_tasks: set[asyncio.Task[None]] = set()
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post(TOKEN_PATH, self._token),
                web.post(SEND_PATH, self._send),
                web.get("/_simulator/sent", self._sent_view),
                web.get("/_simulator/state", self._state_view),
                web.post("/_simulator/reset", self._reset_view),
                web.post("/_simulator/expire-tokens", self._expire_view),
            ]
        )
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._on_cleanup)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in the running loop (no signal handling); return the base URL."""
        # A short shutdown_timeout: a 0900 handler may still be parked when we stop.
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; pending DN deliveries are cancelled, the DN client closed."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._stopping.set()
            await runner.cleanup()

    async def wait_dns_sent(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - public API
        """Return once every scheduled DN delivery (retries included) has finished."""
        async with asyncio.timeout(timeout):
            while pending := {t for t in self._dn_tasks if not t.done()}:
                await asyncio.wait(pending)

    def reset(self) -> None:
        """Forget counters, sent MTs and DN outcomes; restore the configured balance."""
        self.token_requests = self.mt_requests = 0
        self.sent.clear()
        self.dn_deliveries.clear()
        self._spent = Decimal(0)
        self._dn_seq = 0  # refs keep counting: they must stay unique for the relay's store

    def expire_tokens(self) -> None:
        self._tokens.clear()

    @property
    def balance(self) -> Decimal:
        # Derived from the config so a test may change config.balance at run time.
        return self.config.balance - self._spent

    async def _on_startup(self, _app: web.Application) -> None:
        self._stopping.clear()
        self._session = ClientSession(timeout=ClientTimeout(total=10))

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._stopping.set()
        tasks = list(self._dn_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- provider endpoints ------------------------------------------------------------------

    async def _latency(self) -> None:
        # A timer per request, so concurrent requests wait together, never one after another.
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        await self._latency()
        form = await request.post()
        ok = (
            form.get("grant_type") == "client_credentials"
            and secrets.compare_digest(str(form.get("client_id", "")), self.config.app_key)
            and secrets.compare_digest(str(form.get("client_secret", "")), self.config.app_secret)
        )
        if not ok:
            return json_response(INVALID_CLIENT, 401)
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        token = new_token(self.config.token_ttl_s)
        self._tokens[token] = now + self.config.token_ttl_s
        expires_in = math.ceil(self.config.token_ttl_s)
        return json_response(
            {"token_type": "Bearer", "expires_in": expires_in, "access_token": token}
        )

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires_at = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        return expires_at is not None and time.monotonic() < expires_at

    async def _send(self, request: web.Request) -> web.StreamResponse:
        self.mt_requests += 1
        await self._latency()
        if not self._authorized(request):
            return json_response({"code": 401, "desc": DESCS[401]}, 401)
        form = await request.post()
        to, text = str(form.get("to", "")), str(form.get("text", ""))
        sender = str(form.get("from", "")).strip()
        detail = str(form.get("detail", "")).strip() == "1"
        recipients = parse_recipients(to) if to and text and len(to) <= 150 else None
        if recipients is None or (sender and not SENDER.fullmatch(sender)):
            return json_response({"code": 400, "desc": DESCS[400]}, 400)
        for r in recipients:
            if r.special in WHOLE_REQUEST_CODES:
                code = WHOLE_REQUEST_CODES[r.special]
                return json_response({"code": code, "desc": DESCS[code]}, code)

        balance_before = self.balance
        accepted = charges(recipients, text)
        total = sum((r.rate * segments for _, r, segments, _ in accepted), Decimal(0))
        if total > balance_before:
            return json_response({"code": 402, "desc": DESCS[402]}, 402)
        self._spent += total
        refs = self._record_sent(accepted, sender=sender, text=text, multi=len(recipients) > 1)
        faulty = await self._fault(request, recipients)
        if faulty is not None:
            return faulty
        return json_response(self._answer(recipients, refs, detail, balance_before))

    def _record_sent(
        self, accepted: list[Charge], *, sender: str, text: str, multi: bool
    ) -> dict[int, str]:
        """Record each accepted MT and schedule its DNs; position in `to` → ref (a number may
        appear twice)."""
        refs: dict[int, str] = {}
        for i, r, segments, encoding in accepted:
            ref = refs[i] = self._new_ref(multi)
            self.sent.append(
                {
                    "to": r.to,
                    "channel": r.channel,
                    "from": sender or None,
                    "text": text,
                    "ref": ref,
                    "encoding": encoding,
                    "segments": segments,
                    "charged": money(r.rate * segments),
                }
            )
            self._schedule_dns(ref, r)
        return refs

    async def _fault(
        self, request: web.Request, recipients: list[Recipient]
    ) -> web.StreamResponse | None:
        """The misbehaviour a reserved number asks for, after the MTs were recorded."""
        fault = next((r.special for r in recipients if r.special in FAULTS), None)
        if fault == "0900":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.slow_s)
        elif fault == "0901":
            return self._reset_connection(request)
        elif fault == "0902":
            return web.Response(
                status=200, text="<html><body>Bad Gateway</body></html>", content_type="text/html"
            )
        return None

    def _answer(
        self, recipients: list[Recipient], refs: dict[int, str], detail: bool, balance: Decimal
    ) -> dict[str, Any]:
        """The doc's flat shape for one recipient, the `messages` shape for several."""
        multi = len(recipients) > 1
        entries = []
        for i, r in enumerate(recipients):
            code = REJECT_CODES.get(r.special or "", 200)
            entry: dict[str, Any] = {"code": code, "desc": DESCS[code], "to": r.to}
            if code == 200:
                entry["ref"] = refs[i]
                if detail and multi:
                    entry["currency"] = self.config.currency
                    entry["rate"] = r.rate_json
            entries.append(entry)
        body: dict[str, Any] = {"messages": entries} if multi else entries[0]
        if detail:
            body["currency"] = self.config.currency
            body["balance"] = money(balance)  # the balance before this send
        return body

    def _reset_connection(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close() sends a TCP RST, the client sees a reset, not a clean EOF.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # Nothing reaches the closed transport; aiohttp drops the response quietly.
        return web.Response(status=204)

    def _new_ref(self, multi: bool) -> str:
        self._ref_seq += 1
        return new_ref(self._ref_seq, multi)

    # -- delivery notifications --------------------------------------------------------------

    def _schedule_dns(self, ref: str, r: Recipient) -> None:
        url = self.config.dn_url
        plan = dn_plan(r.special)
        if url is None or not plan:
            return
        msgid = ref + MSGID_SUFFIXES.get(r.special or "", "")
        dns = []
        for status, error_code in plan:
            how = "GET" if self._dn_seq % 2 == 0 else "POST"
            self._dn_seq += 1
            dns.append(PlannedDN(ref, msgid, r.msisdn, status, error_code, how))
        task = asyncio.get_running_loop().create_task(self._deliver_all(url, dns))
        self._dn_tasks.add(task)
        task.add_done_callback(self._dn_tasks.discard)

    async def _deliver_all(self, url: str, dns: list[PlannedDN]) -> None:
        await asyncio.sleep(self.config.dn_delay_s)
        for dn in dns:
            await self._deliver(url, dn)

    async def _deliver(self, url: str, dn: PlannedDN) -> None:
        fields = {"status": dn.status}
        if dn.error_code is not None:
            fields["error-code"] = dn.error_code
        fields |= {"msisdn": dn.msisdn, "msgid": dn.msgid}
        attempts = max(1, self.config.dn_attempts)
        for attempt in range(1, attempts + 1):
            http_status: int | None = None
            error = ""
            try:
                assert self._session is not None
                if dn.how == "GET":
                    request = self._session.get(url, params=fields)
                else:
                    request = self._session.post(url, data=fields)
                async with request as resp:
                    await resp.read()
                    http_status = resp.status
            except (ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            self.dn_deliveries.append(
                {
                    "ref": dn.ref,
                    "msgid": dn.msgid,
                    "msisdn": dn.msisdn,
                    "status": dn.status,
                    "error_code": dn.error_code,
                    "how": dn.how,
                    "http_status": http_status,
                    "attempt": attempt,
                }
            )
            if http_status == 200:
                return
            # Never the URL: it carries the DN hook's secret token.
            log.warning(
                "simulator DN delivery failed", ref=dn.ref, http_status=http_status, error=error
            )
            if attempt < attempts:
                await asyncio.sleep(self.config.dn_backoff_s * 2 ** (attempt - 1))
        log.warning("simulator DN abandoned", ref=dn.ref, attempts=attempts)

    # -- inspection --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "token_requests": self.token_requests,
            "mt_requests": self.mt_requests,
            "balance": money(self.balance),
            "dn_deliveries": self.dn_deliveries,
        }

    async def _sent_view(self, _request: web.Request) -> web.Response:
        return json_response({"count": len(self.sent), "messages": self.sent})

    async def _state_view(self, _request: web.Request) -> web.Response:
        return json_response(self.state())

    async def _reset_view(self, _request: web.Request) -> web.Response:
        self.reset()
        return json_response(self.state())

    async def _expire_view(self, _request: web.Request) -> web.Response:
        self.expire_tokens()
        return json_response({"expired": True})


def run(host: str, port: int) -> None:
    """Serve the simulator until interrupted (the `bulk360-relay simulator` command)."""
    config = SimulatorConfig.from_env()
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # Bound here so the printed address is the real one, even for --port 0.
    sock = socket.create_server((host, port), family=family)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    # The DN URL carries the hook's secret token: say only whether DNs are on.
    dns = "DNs to SIMULATOR_DN_URL" if config.dn_url else "no DNs (SIMULATOR_DN_URL unset)"
    print(f"Bulk360 simulator listening on http://{shown}:{bound_port}; {dns}", flush=True)
    web.run_app(Simulator(config).app, sock=sock, print=None, access_log=None)
