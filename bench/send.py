"""Send benchmark: what the relay adds on top of talking to Bulk360 directly.

    .venv/bin/python bench/send.py [--requests 3000] [--concurrency 64] [--latency-ms 0,100]
                                   [--bulk 10] [--workers 1] [--httpx] [--profile DIR]

For each provider latency (`SIMULATOR_LATENCY_MS`: every answer held that long, the distance
to the real provider), starts the simulator in its own process (no DNs) and the relay as
`bulk360-relay serve` (uvicorn, uvloop/httptools, BULK360_MODE=live, JSON logs to a file,
product defaults, Postgres from BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1/postgres; a throw-away database is created and dropped).
Then, with an aiohttp load client in this process:

1. direct: the same sends straight to the simulator (token fetched once, form POST);
2. relay:  `POST /v1/messages` to the relay, one recipient each;
3. bulk:   `--bulk` requests in a row, each to 1,000 recipients (84 upstream requests),
           checked to come back in request order.

Sends run at `--concurrency` callers (throughput; latency then includes queueing) and, at
0 ms only, once serially (the per-request overhead without queueing). It reports p50/p99, the
throughput ratio, the relay's CPU per send (from /proc), the group commit's mean batch sizes
(from /metrics) and the load client's own CPU, so one can see whether it was the bottleneck.

Last, in the same run, the database ceiling: a bare asyncpg loop doing durably what a
one-recipient send needs without group commit (INSERT + COMMIT, then UPDATE + COMMIT), at
`--concurrency` over as many connections as the relay's pool (DB_POOL_SIZE), after the relay
has stopped, with no HTTP at all.

`--profile DIR` samples the relay with py-spy during the concurrent relay phase (at 0 ms, or
`--profile-latency-ms`) and
prints the top functions by own and by total time (raw stacks are kept in DIR). The sampler
costs the relay some CPU: profile and measure in separate runs. `--workers N` runs uvicorn
with N workers (the targets are for 1: this 2-core machine also runs the simulator and the
load client). `--httpx` runs the relay with the httpx variant of the upstream client
(bench/httpx_client.py), for comparison; the product uses aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiling import (  # noqa: E402
    db_ceiling,
    process_cpu,
    sessions_opened,
    start_profiler,
    summarise_profile,
)
from throwaway_db import create_database, drop_database  # noqa: E402

from app.config import Settings, hash_api_key  # noqa: E402
from tests.servers import free_port  # noqa: E402

API_KEY = "bench-key"
DEFAULT_POOL_SIZE = Settings.model_fields["db_pool_size"].default
APP_KEY, APP_SECRET = "bench-app-key", "bench-app-secret"
TEXT = "Your verification code is 482913. It expires in 5 minutes."
BULK_RECIPIENTS = 1000
WARM_UP = 200


async def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited early ({url})")
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


Call = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


def stats(latencies: list[float], count: int, wall: float) -> dict[str, float]:
    latencies.sort()
    return {
        "rps": count / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def run_phase(call: Call, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def workers(numbers: range, record: bool) -> None:
            counter = iter(numbers)

            async def worker() -> None:
                for n in counter:
                    started = time.perf_counter()
                    await call(http, n)
                    if record:
                        latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        # Warm-up (connections, token, caches) at the same concurrency.
        await workers(range(10_000_000, 10_000_000 + min(WARM_UP, requests)), record=False)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        t0 = time.perf_counter()
        await workers(range(requests), record=True)
        wall = time.perf_counter() - t0
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    return {**stats(latencies, requests, wall), "client_cpu": cpu / wall}


def msisdn(n: int) -> str:
    return f"6012{n % 10_000_000:07d}"


async def batch_sizes(relay_url: str) -> dict[str, float]:
    """Mean sends per group-committed statement so far, by kind, from the relay's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{relay_url}/metrics") as resp:
        text = await resp.text()
    found: dict[str, dict[str, float]] = {}
    for kind, part, value in re.findall(
        r'relay_send_batch_size_(sum|count)\{kind="(\w+)"\} ([0-9.e+]+)', text
    ):
        found.setdefault(part, {})[kind] = float(value)
    return {k: found[k]["sum"] / found[k]["count"] for k in found if found[k].get("count")}


@dataclass
class Stack:
    """The simulator and the relay of one latency."""

    sim_url: str
    relay_url: str
    relay: subprocess.Popen[bytes]
    token: str


@contextlib.asynccontextmanager
async def stack(
    args: argparse.Namespace, db: str, latency_ms: int, logs: Path
) -> AsyncIterator[Stack]:
    sim_port, relay_port = free_port(), free_port()
    sim_url, relay_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{relay_port}"
    creds = {"BULK360_APP_KEY": APP_KEY, "BULK360_APP_SECRET": APP_SECRET}
    sim = spawn(
        ["-m", "app.cli", "simulator", "--port", str(sim_port)],
        {**creds, "SIMULATOR_BALANCE": "100000000", "SIMULATOR_LATENCY_MS": str(latency_ms)},
        logs / f"simulator-{latency_ms}ms.log",
    )
    relay_env = {
        **creds,
        "DATABASE_URL": db,
        "BULK360_MODE": "live",
        "BULK360_BASE_URL": sim_url,
        "API_KEYS": f"bench:{hash_api_key(API_KEY)}",
        "DN_HOOK_TOKEN": "bench-dn-token",
        "LOG_FORMAT": "json",
    }
    relay_args = ["-m", "app.cli", "serve", "--port", str(relay_port)]
    relay_args += ["--workers", str(args.workers)]
    if args.httpx:
        relay_args = [str(ROOT / "bench" / "httpx_client.py"), "--port", str(relay_port)]
    relay = spawn(relay_args, relay_env, logs / f"relay-{latency_ms}ms.log")
    try:
        await wait_http(f"{sim_url}/_simulator/state", sim)
        await wait_http(f"{relay_url}/healthz", relay)
        form = {"grant_type": "client_credentials", "client_id": APP_KEY}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{sim_url}/oauth/token", data={**form, "client_secret": APP_SECRET}) as resp,
        ):
            token = (await resp.json())["access_token"]
        yield Stack(sim_url, relay_url, relay, token)
    finally:
        for proc in (relay, sim):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


async def bulk_phase(relay_url: str, count: int) -> dict[str, float]:
    """`count` sends in a row, each to BULK_RECIPIENTS recipients, answered in request order."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for i in range(count + 1):  # the first one warms up
            numbers = [msisdn(5_000_000 + i * BULK_RECIPIENTS + n) for n in range(BULK_RECIPIENTS)]
            started = time.perf_counter()
            async with http.post(
                f"{relay_url}/v1/messages", json={"to": numbers, "text": TEXT}, headers=headers
            ) as resp:
                body = await resp.json()
                assert resp.status == 201, (resp.status, str(body)[:200])
            if i:
                latencies.append(time.perf_counter() - started)
            assert [m["to"] for m in body["messages"]] == numbers, "not in request order"
    return stats(latencies, count, sum(latencies))


Results = dict[tuple[str, int, int], dict[str, float]]  # (phase, latency ms, concurrency)


async def measure_latency(
    args: argparse.Namespace, db: str, admin_dsn: str, latency: int, results: Results, logs: Path
) -> Path | None:
    """Every phase at one provider latency; the path of the profile taken, if any."""
    profile_raw = None
    async with stack(args, db, latency, logs) as s:
        direct_headers = {"Authorization": f"Bearer {s.token}", "Accept": "application/json"}
        relay_headers = {"Authorization": f"Bearer {API_KEY}"}

        async def direct(http: aiohttp.ClientSession, n: int) -> None:
            form = {"to": msisdn(n), "text": TEXT, "detail": "1"}
            url = f"{s.sim_url}/api/bulk360/v2.0"
            async with http.post(url, data=form, headers=direct_headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

        async def via_relay(http: aiohttp.ClientSession, n: int) -> None:
            body = {"to": msisdn(n + latency * 100_000), "text": TEXT}
            url = f"{s.relay_url}/v1/messages"
            async with http.post(url, json=body, headers=relay_headers) as resp:
                answer = await resp.read()
                assert resp.status == 201, (resp.status, answer[:200])

        phases = [(args.concurrency, args.requests)]
        if latency == 0:
            phases.insert(0, (1, min(args.requests, 1000)))
        for conc, count in phases:
            results["direct", latency, conc] = await run_phase(direct, count, conc)
            profiler = None
            if args.profile and conc > 1 and latency == args.profile_latency_ms:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile_raw = args.profile / f"relay-c{conc}-{int(time.time())}.txt"
                profiler = start_profiler(s.relay.pid, profile_raw)
            cpu0, sessions0 = process_cpu(s.relay.pid), await sessions_opened(admin_dsn, db)
            r = results["relay", latency, conc] = await run_phase(via_relay, count, conc)
            # The warm-up requests count too: CPU per request over count + warm-up.
            used = process_cpu(s.relay.pid) - cpu0
            r["server_cpu_ms"] = used * 1000 / (count + min(WARM_UP, count))
            r["db_connects"] = await sessions_opened(admin_dsn, db) - sessions0
            r |= {f"batch_{k}": v for k, v in (await batch_sizes(s.relay_url)).items()}
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
        if args.bulk:
            results["bulk", latency, 1] = await bulk_phase(s.relay_url, args.bulk)
    return profile_raw


def report(args: argparse.Namespace, results: Results) -> None:
    client = "httpx" if args.httpx else "aiohttp"
    print(
        f"send benchmark: relay (uvicorn x{args.workers}, Postgres, upstream client {client},"
        " product defaults) vs direct; provider latency in ms"
    )
    print(f"{'':11}{'lat':>5}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'client CPU':>12}")
    for (name, latency, conc), r in results.items():
        cpu = f"{r['client_cpu']:.0%}" if "client_cpu" in r else ""
        print(
            f"{name:11}{latency:>5}{conc:>6}{r['rps']:>9.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
            f"{cpu:>12}"
        )
    ceiling = results["db-ceiling", 0, args.concurrency]["rps"]
    for (name, latency, conc), r in results.items():
        if name != "relay":
            continue
        d = results["direct", latency, conc]
        batches = ", ".join(f"{k[6:]} {v:.1f}" for k, v in r.items() if k.startswith("batch_"))
        print(
            f"{latency} ms, c={conc}: relay/direct {r['rps'] / d['rps']:.2f}x,"
            f" p50 {r['p50']:.1f} ms (direct {d['p50']:.1f}),"
            f" relay CPU {r['server_cpu_ms']:.2f} ms/send,"
            f" relay/ceiling {r['rps'] / ceiling:.2f}x; mean batch: {batches or '-'};"
            f" {r['db_connects']:.0f} new DB connections"
        )
    print(
        f"database ceiling (bare asyncpg INSERT+COMMIT, UPDATE+COMMIT, c={args.concurrency},"
        f" {min(args.concurrency, DEFAULT_POOL_SIZE)} connections): {ceiling:.0f}/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", default="0,100", help="provider latencies, ms")
    parser.add_argument("--bulk", type=int, default=10, help="1,000-recipient sends (0: none)")
    parser.add_argument("--httpx", action="store_true", help="relay upstream via httpx")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for the relay")
    parser.add_argument("--profile", type=Path, help="py-spy the relay's concurrent phase")
    parser.add_argument("--profile-latency-ms", type=int, default=0, help="at this latency")
    args = parser.parse_args()
    if args.httpx and args.workers != 1:
        parser.error("--httpx runs one worker")

    db, admin_dsn = await create_database("relay_bench_send")
    logs = Path(tempfile.mkdtemp(prefix="bench-send-"))
    results: Results = {}
    profile_raw = None
    try:
        for latency in (int(x) for x in args.latency_ms.split(",")):
            taken = await measure_latency(args, db, admin_dsn, latency, results, logs)
            profile_raw = profile_raw or taken
        # After the relay has gone (its connections too): the relay's connection budget.
        connections = min(args.concurrency, DEFAULT_POOL_SIZE)
        ceiling_dsn = make_url(db).set(drivername="postgresql")
        results["db-ceiling", 0, args.concurrency] = await db_ceiling(
            ceiling_dsn.render_as_string(hide_password=False),
            args.requests,
            args.concurrency,
            connections,
        )
    finally:
        await drop_database(admin_dsn, db)
    report(args, results)
    if profile_raw is not None and profile_raw.exists():
        summarise_profile(profile_raw)
    print(f"logs: {logs}")


if __name__ == "__main__":
    asyncio.run(main())
