"""The database goes away under load and comes back: a relay process talks to Postgres through
`PgProxy`, which the test stops (every connection cut, new ones refused) while DNs and sends
keep arriving, then starts again.

What must hold (CONTRACT §4, §5): a DN gets 200 only once stored and 503 otherwise, never a
500; a send whose rows cannot be written gets 503 before any upstream call; every request is
answered within the DN ack timeout plus a little; once the database is back the relay recovers
by itself, with its dead pooled connections replaced (no trail of errors afterwards).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from app.bulk360.simulator import Simulator
from tests.reliability import (
    AUTH,
    DN_PATH,
    Burst,
    empty_tables,
    relay_env,
    relay_processes,
    stored_dns,
    summary,
)
from tests.reliability.pgproxy import PgProxy
from tests.servers import RelayProcess

pytestmark = pytest.mark.postgres

ACK_TIMEOUT_S = 2.0
SLACK_S = 1.5  # scheduling on a busy 2-core machine; a hang would be far longer
DN_WORKERS, SEND_WORKERS = 20, 4


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    await empty_tables(postgres_url)
    return postgres_url


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[PgProxy]:
    pgproxy = PgProxy.for_url(pg_url)
    await pgproxy.start()
    yield pgproxy
    await pgproxy.stop()


@dataclass
class Sample:
    kind: str  # "dn" | "send"
    key: str  # the DN's msgid, or the send's one recipient
    began: str  # phase when the request was made
    ended: str  # phase when its answer came
    status: int | None
    error: str | None  # the JSON error code, or the transport error without an answer
    elapsed: float


@dataclass
class Traffic:
    """DNs and sends arriving continuously at one relay, each answer tagged with the phase
    (`before`, `down`, `back`) in which it was asked and answered."""

    url: str
    phase: str = "before"
    samples: list[Sample] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _running: bool = True

    async def until(self, predicate: Callable[[list[Sample]], bool], timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self.samples))
        except TimeoutError:
            seen: dict[tuple[str, str, int | None, str | None], int] = {}
            for s in self.samples:
                k = (s.kind, s.began, s.status, s.error)
                seen[k] = seen.get(k, 0) + 1
            raise AssertionError(f"traffic did not get there in {timeout}s: {seen}") from None

    def count(self, kind: str, phase: str, status: int | None = None) -> int:
        return sum(
            1
            for s in self.samples
            if s.kind == kind and s.began == phase and (status is None or s.status == status)
        )

    async def _record(self, sample: Sample) -> None:
        self.samples.append(sample)
        async with self._changed:
            self._changed.notify_all()

    async def _one(self, http: aiohttp.ClientSession, kind: str, key: str) -> None:
        began, started = self.phase, time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            if kind == "dn":
                request = http.post(self.url + DN_PATH, data={"msgid": key, "status": "DELIVERED"})
            else:
                request = http.post(
                    self.url + "/v1/messages", json={"to": key, "text": "x"}, headers=AUTH
                )
            async with request as resp:
                status = resp.status
                if status >= 400:
                    error = (await resp.json(content_type=None)).get("error")
                else:
                    await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        await self._record(
            Sample(kind, key, began, self.phase, status, error, time.monotonic() - started)
        )

    async def _worker(self, http: aiohttp.ClientSession, kind: str, worker: int) -> None:
        n = 0
        while self._running:
            key = f"db-{worker}-{n}" if kind == "dn" else f"6012{worker:02d}{n:05d}"
            await self._one(http, kind, key)
            n += 1

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(
                *(self._worker(http, "dn", w) for w in range(DN_WORKERS)),
                *(self._worker(http, "send", w) for w in range(SEND_WORKERS)),
            )

    def stop(self) -> None:
        self._running = False


@pytest.mark.slow
async def test_database_cut_mid_burst_503s_then_recovers_with_no_lost_or_phantom_dn(
    pg_url: str, proxy: PgProxy, simulator: Simulator, tmp_path: Path
) -> None:
    env = relay_env(proxy.url(pg_url), simulator.base_url, dn_ack_timeout_s=ACK_TIMEOUT_S)
    async with relay_processes([env], tmp_path) as [relay]:
        await cut_and_restore(relay, proxy, simulator, pg_url)


async def cut_and_restore(
    relay: RelayProcess, proxy: PgProxy, simulator: Simulator, pg_url: str
) -> None:
    traffic = Traffic(relay.url)
    running = asyncio.create_task(traffic.run())
    try:
        await traffic.until(
            lambda _s: (
                traffic.count("dn", "before", 200) >= 100
                and traffic.count("send", "before", 201) >= 5
            )
        )
        await proxy.stop()  # the database "stops": pooled connections die, new ones refused
        cut_at = time.monotonic()
        traffic.phase = "down"
        accepted_at_cut = proxy.accepted
        await traffic.until(
            lambda _s: traffic.count("dn", "down") >= 100 and traffic.count("send", "down") >= 8
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{relay.url}/readyz") as resp:
                ready_down = (resp.status, (await resp.json())["failed"])
            async with http.get(f"{relay.url}/v1/messages", headers=AUTH) as resp:
                lookup_down = (resp.status, (await resp.json())["error"])
        await proxy.start()
        back_at = time.monotonic()
        traffic.phase = "back"
        await traffic.until(
            lambda _s: (
                traffic.count("dn", "back", 200) >= 1 and traffic.count("send", "back", 201) >= 1
            )
        )
        recovered_in = time.monotonic() - back_at
    finally:
        traffic.stop()
        await running

    # Recovered: the next 50 DNs and 10 sends, all at once, all succeed.
    after = await Burst(50).dns(
        [(f"after-{i}", "DELIVERED") for i in range(50)], lambda _: relay.url
    )
    async with aiohttp.ClientSession() as http:

        async def one_send(n: int) -> int:
            body = {"to": f"601299{n:05d}", "text": "x"}
            async with http.post(f"{relay.url}/v1/messages", json=body, headers=AUTH) as resp:
                return resp.status

        sends_after = await asyncio.gather(*(one_send(n) for n in range(10)))

    dns = [s for s in traffic.samples if s.kind == "dn"]
    sends = [s for s in traffic.samples if s.kind == "send"]
    stored = {msgid for msgid, _ in await stored_dns(pg_url)}
    sent_to = {m["to"] for m in simulator.sent}
    dn_200 = {s.key for s in dns if s.status == 200}
    during = [s for s in traffic.samples if s.began == s.ended == "down"]

    # DNs: 200 (and stored) or 503, nothing else, ever; no 200 without its row.
    assert {s.status for s in dns} <= {200, 503}
    assert dn_200 <= stored
    # Sends: 201 or 503; a 503 never reached the provider.
    assert {s.status for s in sends} <= {201, 503}
    assert {s.error for s in sends if s.status == 503} == {"database_unavailable"}
    assert not {s.key for s in sends if s.status == 503} & sent_to
    assert simulator.mt_requests == sum(s.status == 201 for s in sends) + 10
    # While the database was away, every request made and answered then was refused.
    assert {(s.kind, s.status) for s in during} == {("dn", 503), ("send", 503)}
    assert ready_down == (503, ["database", "schema"])
    assert lookup_down == (503, "database_unavailable")
    # No hang: every answer came within the ack timeout (plus scheduling slack).
    assert max(s.elapsed for s in traffic.samples) < ACK_TIMEOUT_S + SLACK_S
    # Self-healed, with new connections replacing the ones cut.
    assert summary(after) == {"200": 50}
    assert sends_after == [201] * 10
    assert proxy.accepted > accepted_at_cut
    lost = dn_200 - stored
    print(
        f"\nproxy cut for {back_at - cut_at:.2f}s: DNs sent {len(dns)}, "
        f"200'd {len(dn_200)}, 503'd {sum(s.status == 503 for s in dns)}, "
        f"5xx other {sum(s.status not in (200, 503) for s in dns)}, stored "
        f"{len(stored & {s.key for s in dns})} (503'd but stored "
        f"{len(stored & {s.key for s in dns if s.status == 503})}), lost {len(lost)}; "
        f"sends {len(sends)}: {summary(sends)} (503'd sends upstream: 0); "
        f"recovered {recovered_in:.2f}s after the database came back; slowest answer "
        f"{max(s.elapsed for s in traffic.samples):.2f}s; then 50/50 DNs, 10/10 sends ok"
    )
