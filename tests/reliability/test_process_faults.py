"""A relay process killed or stopped under a DN burst; the upstream's token endpoint failing.

The crash and shutdown tests run `bulk360-relay serve` as a child process on the real Postgres
(the production setting), with the simulator (in this loop) as its upstream. The promise under
test: a DN answered 200 is in the database, whatever happens to the process afterwards. The
upstream tests run the relay in this loop (the fault is on the other side) and pin that a send
either reached the provider exactly once or is recorded as not sent, and never waits long.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal

import aiohttp
import asyncpg
import httpx
import pytest
from aiohttp import web

from app.bulk360.client import SEND_PATH, TOKEN_PATH
from app.bulk360.simulator import Simulator, SimulatorConfig
from tests.conftest import Relay, relay_settings, run_relay
from tests.reliability import (
    DN,
    Answer,
    Burst,
    asyncpg_dsn,
    empty_tables,
    relay_env,
    relay_processes,
    stored_dns,
    summary,
)
from tests.servers import RelayProcess, free_port

SEND = "/v1/messages"
BURST = 2_000
CONCURRENCY = 50


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    await empty_tables(postgres_url)
    return postgres_url


def burst_dns(prefix: str, count: int = BURST) -> list[DN]:
    # One DN per msgid: the (msgid, status) pairs acked and stored compare as sets.
    return [(f"{prefix}-{i}", "DELIVERED") for i in range(count)]


def acked(dns: list[DN], answers: list[Answer]) -> set[DN]:
    return {dns[a.index] for a in answers if a.status == 200}


def signal_after(process: RelayProcess, signum: int, oks: int) -> Callable[[Answer], None]:
    """An `on_answer` that signals `process` once `oks` DNs have been answered 200."""
    count = 0

    def on_answer(answer: Answer) -> None:
        nonlocal count
        if answer.status == 200:
            count += 1
            if count == oks:
                process.signal(signum)

    return on_answer


# -- 1. crash mid-burst ---------------------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_mid_burst_loses_no_acknowledged_dn_and_a_restart_takes_the_rest(
    pg_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    env = relay_env(pg_url, simulator.base_url)
    dns = burst_dns("kill")
    async with relay_processes([env], tmp_path) as [relay]:
        answers = await Burst(CONCURRENCY).dns(
            dns, lambda _i: relay.url, signal_after(relay, signal.SIGKILL, BURST // 2)
        )
        assert await relay.wait() == -signal.SIGKILL

    ok = acked(dns, answers)
    stored = await stored_dns(pg_url)
    lost = ok - set(stored)
    # Only 200s, or no HTTP answer at all (the process died): never a 5xx.
    assert {a.status for a in answers if a.status is not None} == {200}
    assert BURST // 2 <= len(ok) < BURST  # killed midway, with work left
    assert lost == set()
    # Stored but never answered: committed just before the kill. The provider retries these
    # and the duplicate is harmless (the last DN received is final).
    unanswered_but_stored = set(stored) - ok

    rest = [dns[a.index] for a in answers if a.status != 200]
    async with relay_processes([env], tmp_path) as [again]:
        retried = await Burst(CONCURRENCY).dns(rest, lambda _i: again.url)
    assert summary(retried) == {"200": len(rest)}
    final = set(await stored_dns(pg_url))
    assert final == set(dns)
    print(
        f"\nSIGKILL after {BURST // 2} acks: DNs sent {BURST}, 200'd {len(ok)}, "
        f"unanswered {BURST - len(ok)} {summary([a for a in answers if a.status != 200])}, "
        f"stored {len(stored)} (of them unanswered {len(unanswered_but_stored)}), "
        f"lost {len(lost)}; after restart {len(rest)} retried, all 200, "
        f"{len(final)} distinct stored"
    )


# -- 7. graceful shutdown -------------------------------------------------------------------


@pytest.mark.slow
async def test_sigterm_mid_burst_drains_in_flight_dns_and_drops_none(
    pg_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    dns = burst_dns("term")
    async with relay_processes([relay_env(pg_url, simulator.base_url)], tmp_path) as [relay]:
        answers = await Burst(CONCURRENCY).dns(
            dns, lambda _i: relay.url, signal_after(relay, signal.SIGTERM, BURST // 4)
        )
        # uvicorn re-raises the signal once its graceful shutdown is done: -SIGTERM, after the
        # lifespan (and with it the DN writer's drain) has run to its end.
        assert await relay.wait() == -signal.SIGTERM
        assert relay.log_path is not None
        assert "Application shutdown complete." in relay.log_path.read_text()

    ok = acked(dns, answers)
    stored = await stored_dns(pg_url)
    failed = [a for a in answers if a.status != 200]
    # No HTTP error at all: what was accepted was answered 200. The rest found the listener
    # closed (refused) or their keep-alive connection closed (reset or disconnected) before
    # the server read them; the set comparison below shows none of those was stored.
    assert {a.status for a in answers if a.status is not None} == {200}
    assert {a.error for a in failed} <= {
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
    }
    assert len(ok) < BURST  # SIGTERM really came mid-burst
    # Nothing queued was dropped, and nothing was stored without its 200.
    assert len(stored) == len(ok) and set(stored) == ok
    print(
        f"\nSIGTERM after {BURST // 4} acks: DNs sent {BURST}, 200'd {len(ok)} "
        f"({len(ok) - BURST // 4} of them answered after the signal), "
        f"not accepted {summary(failed)}, stored {len(stored)}, lost 0"
    )


# -- 3. upstream faults not covered by tests/messages/test_send.py --------------------------
# These need no process boundary (the fault is upstream): the relay runs in this loop (its
# lifespan, over ASGI) on Postgres, which keeps the suite fast.


def upstream_relay(
    pg_url: str, upstream: str, **overrides: Any
) -> AbstractAsyncContextManager[Relay]:
    return run_relay(relay_settings(pg_url, upstream, **overrides))


async def send(relay: Relay, to: list[str]) -> httpx.Response:
    return await relay.client.post(SEND, json={"to": to, "text": "x"})


async def message_rows(url: str) -> list[tuple[str, str, str | None]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT msisdn, status, ref FROM messages ORDER BY id")
    finally:
        await conn.close()
    return [(r["msisdn"], r["status"], r["ref"]) for r in rows]


async def test_provider_stopped_then_restarted_sends_nothing_while_down_and_recovers(
    pg_url: str,
) -> None:
    # Nothing listens on the upstream port when the relay needs its first token.
    port = free_port()
    first, second = Simulator(SimulatorConfig()), Simulator(SimulatorConfig())
    async with upstream_relay(pg_url, f"http://127.0.0.1:{port}") as relay:
        refused = await send(relay, ["60123240066"])
        ready = (await relay.client.get("/readyz")).json()
        await first.start(port=port)
        try:
            recovered = await send(relay, ["60166600267"])
        finally:
            await first.stop()
        # A provider restart forgets every token: the cached one is refused (401), refreshed
        # once, and the MT goes out once.
        await second.start(port=port)
        try:
            after_restart = await send(relay, ["60126660125"])
        finally:
            await second.stop()

    assert refused.status_code == 502, refused.text
    assert refused.json()["error"] == "upstream_unavailable"
    assert "token" in refused.json()["detail"]
    assert refused.json()["messages"][0]["status"] == "rejected"  # certainly not sent
    assert ready["upstream_token"] == "failing" and ready["status"] == "ready"
    assert recovered.status_code == 201 and after_restart.status_code == 201
    assert (first.token_requests, first.mt_requests, len(first.sent)) == (1, 1, 1)
    assert first.sent[0]["to"] == "60166600267"  # the refused send was never sent later
    assert (second.token_requests, second.mt_requests, len(second.sent)) == (1, 2, 1)
    assert await message_rows(pg_url) == [
        ("60123240066", "rejected", None),
        ("60166600267", "pending", first.sent[0]["ref"]),
        ("60126660125", "pending", second.sent[0]["ref"]),
    ]


class TokenGate:
    """Bulk360 with a token endpoint that fails on its own: a pass-through to the simulator
    whose `/oauth/token` answers 503 (`down`) or never answers (`hung`) while told to (the
    simulator's token and send endpoints can only fail together)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.token: Literal["up", "down", "hung"] = "up"
        self.failed = 0  # token requests answered 503 or left hanging
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._http = aiohttp.ClientSession()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._release.set()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path == TOKEN_PATH and self.token != "up":
            self.failed += 1
            if self.token == "hung":
                await self._release.wait()
            return web.Response(status=503, text="<html>503 Service Unavailable</html>")
        assert request.path in (TOKEN_PATH, SEND_PATH) and self._http is not None
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        async with self._http.post(
            self.upstream + request.path, data=await request.read(), headers=headers
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )


async def test_token_endpoint_down_after_expiry_is_a_502_with_nothing_sent(
    pg_url: str, simulator: Simulator
) -> None:
    gate = TokenGate(simulator.base_url)
    try:
        async with upstream_relay(pg_url, await gate.start()) as relay:
            assert (await send(relay, ["60123240066"])).status_code == 201
            simulator.expire_tokens()
            gate.token = "down"
            refused = await send(relay, ["60166600267", "60126660125"])
            gate.token = "up"
            recovered = await send(relay, ["60126660127"])
    finally:
        await gate.stop()

    assert refused.status_code == 502, refused.text
    body = refused.json()
    assert body["error"] == "upstream_unavailable" and "HTTP 503" in body["detail"]
    assert [m["status"] for m in body["messages"]] == ["rejected", "rejected"]
    assert recovered.status_code == 201
    # The refused send's one MT attempt was answered 401 (not sent); the token refresh failed;
    # nothing was retried. Then one refresh for the next send.
    assert gate.failed == 1 and simulator.token_requests == 2
    assert simulator.mt_requests == 1 + 1 + 2  # ok, 401, then 401 + retry of the recovery
    assert [s["to"] for s in simulator.sent] == ["60123240066", "60126660127"]
    rows = await message_rows(pg_url)
    assert [(to, status) for to, status, _ in rows] == [
        ("60123240066", "pending"),
        ("60166600267", "rejected"),
        ("60126660125", "rejected"),
        ("60126660127", "pending"),
    ]


async def test_token_expired_mid_flight_is_refreshed_once_and_no_mt_is_sent_twice(
    pg_url: str, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends, per_send = 40, 13  # 13 numbers take 2 upstream requests (150-character `to`)
    # A provider 25 ms away: the 80 upstream requests through 8 slots take 250 ms, so that many
    # are still queued when the first send is answered (at once, a loaded machine sent them all
    # before that).
    monkeypatch.setattr(simulator.config, "latency_ms", 25)
    numbers = [[f"6012{s:03d}{r:04d}" for r in range(per_send)] for s in range(sends)]
    # Fewer upstream slots than requests, so that some are still queued when tokens expire.
    async with upstream_relay(pg_url, simulator.base_url, bulk360_max_concurrency=8) as relay:
        tasks = [asyncio.create_task(send(relay, to)) for to in numbers]
        # Expire every token while most sends are still queued or in flight upstream.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        expired_after = len(simulator.sent)
        simulator.expire_tokens()
        responses = await asyncio.gather(*tasks)

    assert [r.status_code for r in responses] == [201] * sends
    assert expired_after < sends * per_send
    assert simulator.token_requests == 2  # one refresh, however many requests saw the 401
    sent_to = sorted(s["to"] for s in simulator.sent)
    assert sent_to == sorted(n for to in numbers for n in to)  # each exactly once
    refused_401 = simulator.mt_requests - sends * 2
    assert refused_401 >= 1
    rows = await message_rows(pg_url)
    refs = {s["to"]: s["ref"] for s in simulator.sent}
    assert all(status == "pending" and ref == refs[to] for to, status, ref in rows)
    print(
        f"\ntoken expired after {expired_after} of {sends * per_send} MTs: "
        f"{refused_401} upstream requests got 401 and were retried, 1 refresh, "
        f"{len(simulator.sent)} MTs sent for {sends * per_send} recipients"
    )


async def test_a_hung_token_endpoint_fails_queued_sends_together_not_one_timeout_each(
    pg_url: str, simulator: Simulator
) -> None:
    timeout_s, sends = 1.0, 8
    gate = TokenGate(simulator.base_url)
    gate.token = "hung"
    try:
        async with upstream_relay(pg_url, await gate.start(), bulk360_timeout_s=timeout_s) as relay:

            async def timed_send(n: int) -> tuple[int, float]:
                started = time.monotonic()
                r = await send(relay, [f"601234{n:05d}"])
                return r.status_code, time.monotonic() - started

            answers = await asyncio.gather(*(timed_send(n) for n in range(sends)))
    finally:
        await gate.stop()

    assert [status for status, _ in answers] == [502] * sends
    assert simulator.mt_requests == 0
    # Sends queued behind one token request that timed out share its failure; they must not
    # each ask again and wait out the timeout in turn (the last would answer after
    # sends x BULK360_TIMEOUT_S: minutes, with the default 30 s).
    slowest = max(elapsed for _, elapsed in answers)
    assert slowest < 2 * timeout_s + 1.0, f"slowest send answered after {slowest:.1f}s"
    assert gate.failed <= 2
