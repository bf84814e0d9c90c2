"""Send benchmark: what the relay adds on top of talking to Bulk360 directly.

    .venv/bin/python bench/send.py [--requests 3000] [--concurrency 64] [--httpx]
                                   [--workers 1] [--profile DIR]

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

Also in the same run, a database ceiling: a bare asyncpg loop doing what the relay must do
durably per one-recipient send (INSERT + COMMIT, then UPDATE + COMMIT), at `--concurrency`
over as many connections as the relay's pool may open (DB_POOL_SIZE), from this process
after the relay has stopped, with no HTTP at all. Relay throughput cannot exceed it.

`--profile DIR` samples the relay with py-spy (`.venv/bin/pip install py-spy`) during the
concurrent relay phase and prints the top functions by own and by total time (raw stacks are
kept in DIR). The sampler costs the relay some CPU: profile and measure in separate runs.

`--workers N` runs uvicorn with N workers (the ratio targets are for 1: this 2-core machine
also runs the simulator and the load client).

The relay runs with the product defaults (BULK360_MAX_CONCURRENCY 8, DB_POOL_SIZE 20) unless
`--upstream-concurrency` / `--pool-size` say otherwise, to check neither is the limiter.

`--httpx` runs the relay with the httpx variant of the upstream client (bench/httpx_client.py)
instead of aiohttp, for comparison; the product always uses aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import shutil
import signal
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

from throwaway_db import create_database, drop_database  # noqa: E402

from app.config import Settings, hash_api_key  # noqa: E402
from tests.servers import free_port  # noqa: E402

API_KEY = "bench-key"
DEFAULT_POOL_SIZE = Settings.model_fields["db_pool_size"].default
APP_KEY, APP_SECRET = "bench-app-key", "bench-app-secret"
TEXT = "Your verification code is 482913. It expires in 5 minutes."


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


async def db_ceiling(
    dsn: str, requests: int, concurrency: int, connections: int
) -> dict[str, float]:
    """The durable minimum per one-recipient send, with no HTTP: INSERT+COMMIT, UPDATE+COMMIT."""
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    latencies: list[float] = []
    counter = iter(range(requests))

    async def one(n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            mid = await conn.fetchval(
                "INSERT INTO messages (send_id, api_key_name, channel, msisdn, status,"
                " created_at, updated_at) VALUES ($1, 'bench', 'sms', $2, 'unknown',"
                " now(), now()) RETURNING id",
                str(uuid.uuid4()),
                msisdn(n),
            )
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET status = 'pending', ref = $2, submitted_at = now(),"
                " updated_at = now() WHERE id = $1",
                mid,
                f"ceiling-{n}",
            )

    async def worker() -> None:
        for n in counter:
            started = time.perf_counter()
            await one(n)
            latencies.append(time.perf_counter() - started)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await pool.close()
    latencies.sort()
    return {
        "rps": requests / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "client_cpu": float("nan"),
    }


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by `pid` and its children (uvicorn workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


async def sessions_opened(admin_dsn: str, db: str) -> int:
    """Connections ever opened to the bench database (pool churn shows up here)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", make_url(db).database
        )
        return int(value or 0)
    finally:
        await conn.close()


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return None
    # --subprocesses: with --workers > 1 the app runs in uvicorn's children.
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "--subprocesses",
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--gil",  # samples holding the GIL: where the CPU goes, not the waits
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise_profile(raw: Path, top: int = 25) -> None:
    """Print the hottest functions from py-spy's collapsed stacks: own time and total time."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        print("profile: no samples")
        return
    print(f"profile: {samples} samples ({raw})")
    print("  own time:")
    for f, n in own.most_common(top):
        print(f"    {n / samples:6.1%}  {f}")
    print("  total time (function and what it calls):")
    for f, n in total.most_common(top + 15):
        print(f"    {n / samples:6.1%}  {f}")


def msisdn(n: int) -> str:
    return f"6012{n % 10_000_000:07d}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--httpx", action="store_true", help="relay upstream via httpx")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for the relay")
    parser.add_argument("--pool-size", type=int, help="DB_POOL_SIZE for the relay")
    parser.add_argument("--upstream-concurrency", type=int, help="BULK360_MAX_CONCURRENCY")
    parser.add_argument("--profile", type=Path, help="py-spy the relay's concurrent phase")
    args = parser.parse_args()

    db, admin_dsn = await create_database("relay_bench_send")
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
    if args.pool_size:
        relay_env["DB_POOL_SIZE"] = str(args.pool_size)
    if args.upstream_concurrency:
        relay_env["BULK360_MAX_CONCURRENCY"] = str(args.upstream_concurrency)
    relay_args = ["-m", "app.cli", "serve", "--port", str(relay_port)]
    relay_args += ["--workers", str(args.workers)]
    if args.httpx:
        if args.workers != 1:
            parser.error("--httpx runs one worker")
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
        profile_raw: Path | None = None
        for conc, count in ((1, serial), (args.concurrency, args.requests)):
            results["direct", conc] = await run_phase(direct, count, conc)
            profiler = None
            if args.profile and conc > 1:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile_raw = args.profile / f"relay-c{conc}-{int(time.time())}.txt"
                profiler = start_profiler(relay.pid, profile_raw)
            cpu0, sessions0 = process_cpu(relay.pid), await sessions_opened(admin_dsn, db)
            results["relay", conc] = await run_phase(via_relay, count, conc)
            # The warm-up requests count too: CPU per request over count + warm-up.
            used = process_cpu(relay.pid) - cpu0
            results["relay", conc]["server_cpu_ms"] = used * 1000 / (count + min(200, count))
            results["relay", conc]["db_connects"] = await sessions_opened(admin_dsn, db) - sessions0
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
        # After the relay has gone (its connections too): the same connection budget as the
        # relay's pool (DB_POOL_SIZE), the same concurrency.
        relay.terminate()
        relay.wait(30)
        connections = min(args.concurrency, args.pool_size or DEFAULT_POOL_SIZE)
        ceiling_dsn = make_url(db).set(drivername="postgresql")
        results["db-ceiling", args.concurrency] = await db_ceiling(
            ceiling_dsn.render_as_string(hide_password=False),
            args.requests,
            args.concurrency,
            connections,
        )
    finally:
        for proc in (relay, sim):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        await drop_database(admin_dsn, db)

    client = "httpx" if args.httpx else "aiohttp"
    print(
        f"send benchmark: relay (uvicorn x{args.workers}, Postgres, upstream client {client},"
        f" DB_POOL_SIZE {args.pool_size or 'default'}, BULK360_MAX_CONCURRENCY"
        f" {args.upstream_concurrency or 'default'}) vs direct"
    )
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
            f"p99 {rl['p99'] - d['p99']:.2f} ms; throughput ratio {rl['rps'] / d['rps']:.2f};"
            f" relay CPU {rl['server_cpu_ms']:.2f} ms per send;"
            f" {rl['db_connects']:.0f} new DB connections"
        )
    ceiling = results["db-ceiling", args.concurrency]
    direct_rps = results["direct", args.concurrency]["rps"]
    print(
        f"database ceiling (bare asyncpg INSERT+COMMIT, UPDATE+COMMIT, c={args.concurrency},"
        f" {min(args.concurrency, args.pool_size or DEFAULT_POOL_SIZE)} connections):"
        f" {ceiling['rps']:.0f}/s = {ceiling['rps'] / direct_rps:.2f} x direct; relay reached"
        f" {results['relay', args.concurrency]['rps'] / ceiling['rps']:.2f} of it"
    )
    if profile_raw is not None and profile_raw.exists():
        summarise_profile(profile_raw)
    print(f"logs: {logs}")


if __name__ == "__main__":
    asyncio.run(main())
