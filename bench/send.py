"""Send benchmark: what the relay adds on top of talking to Bulk360 directly.

    .venv/bin/python bench/send.py [--requests 3000] [--concurrency 64] [--httpx]

Starts the simulator in its own process (answers at once, no DNs) and the relay as
`bulk360-relay serve` (uvicorn, uvloop/httptools, BULK360_MODE=live, JSON logs to a file,
Postgres from BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1/postgres; a throw-away
database is created and dropped). Then, with an aiohttp load client in this process:

1. direct: the same sends straight to the simulator (token fetched once, form POST);
2. relay:  `POST /v1/messages` to the relay, one recipient each.

Each phase runs once serially (concurrency 1: the per-request overhead without queueing) and
once at `--concurrency` (throughput; latency then includes queueing). It reports p50/p99 of
both, the relay's overhead (relay minus direct) and the throughput ratio, plus the load
client's own CPU time so one can see whether the client was the bottleneck.

`--httpx` runs the relay with the httpx variant of the upstream client (bench/httpx_client.py)
instead of aiohttp, for comparison; the product always uses aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import hash_api_key  # noqa: E402
from app.migrate import upgrade_async  # noqa: E402
from tests.servers import free_port  # noqa: E402

API_KEY = "bench-key"
APP_KEY, APP_SECRET = "bench-app-key", "bench-app-secret"
TEXT = "Your verification code is 482913. It expires in 5 minutes."


async def create_database(base: str) -> tuple[str, str]:
    url = make_url(base)
    name = f"relay_bench_send_{uuid.uuid4().hex[:8]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    await upgrade_async(db)
    return db, admin_dsn


async def drop_database(admin_dsn: str, db: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(db).database}" WITH (FORCE)')
    finally:
        await admin.close()


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


async def run_phase(call: Call, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        for n in range(min(200, requests)):  # warm-up: connections, token, caches
            await call(http, 10_000_000 + n)

        async def worker() -> None:
            for n in counter:
                started = time.perf_counter()
                await call(http, n)
                latencies.append(time.perf_counter() - started)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    latencies.sort()
    return {
        "rps": requests / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "client_cpu": cpu / wall,
    }


def msisdn(n: int) -> str:
    return f"6012{n % 10_000_000:07d}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--httpx", action="store_true", help="relay upstream via httpx")
    args = parser.parse_args()

    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
    db, admin_dsn = await create_database(base)
    logs = Path(tempfile.mkdtemp(prefix="bench-send-"))
    sim_port, relay_port = free_port(), free_port()
    sim_url, relay_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{relay_port}"
    creds = {"BULK360_APP_KEY": APP_KEY, "BULK360_APP_SECRET": APP_SECRET}
    sim = spawn(
        ["-m", "app.cli", "simulator", "--port", str(sim_port)],
        {**creds, "SIMULATOR_BALANCE": "100000000"},
        logs / "simulator.log",
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
    if args.httpx:
        relay_args = [str(ROOT / "bench" / "httpx_client.py"), "--port", str(relay_port)]
    relay = spawn(relay_args, relay_env, logs / "relay.log")
    try:
        await wait_http(f"{sim_url}/_simulator/state", sim)
        await wait_http(f"{relay_url}/healthz", relay)

        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{sim_url}/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": APP_KEY,
                    "client_secret": APP_SECRET,
                },
            ) as resp,
        ):
            token = (await resp.json())["access_token"]
        direct_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        relay_headers = {"Authorization": f"Bearer {API_KEY}"}

        async def direct(http: aiohttp.ClientSession, n: int) -> None:
            form = {"to": msisdn(n), "text": TEXT, "detail": "1"}
            async with http.post(
                f"{sim_url}/api/bulk360/v2.0", data=form, headers=direct_headers
            ) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

        async def via_relay(http: aiohttp.ClientSession, n: int) -> None:
            async with http.post(
                f"{relay_url}/v1/messages",
                json={"to": msisdn(n), "text": TEXT},
                headers=relay_headers,
            ) as resp:
                body = await resp.read()
                assert resp.status == 201, (resp.status, body[:200])

        results: dict[tuple[str, int], dict[str, float]] = {}
        serial = min(args.requests, 1000)
        for conc, count in ((1, serial), (args.concurrency, args.requests)):
            results["direct", conc] = await run_phase(direct, count, conc)
            results["relay", conc] = await run_phase(via_relay, count, conc)
    finally:
        for proc in (relay, sim):
            proc.terminate()
            proc.wait(30)
        await drop_database(admin_dsn, db)

    client = "httpx" if args.httpx else "aiohttp"
    print(f"send benchmark: relay (uvicorn, Postgres, upstream client {client}) vs direct")
    print(f"{'':10}{'conc':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'load-client CPU':>18}")
    for (name, conc), r in results.items():
        print(
            f"{name:10}{conc:>6}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
            f"{r['client_cpu']:>17.0%}"
        )
    for conc in (1, args.concurrency):
        d, rl = results["direct", conc], results["relay", conc]
        print(
            f"concurrency {conc}: relay overhead p50 {rl['p50'] - d['p50']:.2f} ms, "
            f"p99 {rl['p99'] - d['p99']:.2f} ms; throughput ratio {rl['rps'] / d['rps']:.2f}"
        )
    print(f"logs: {logs}")


if __name__ == "__main__":
    asyncio.run(main())
