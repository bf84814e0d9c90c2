"""Measuring helpers for the benchmarks: a process's CPU time, py-spy around a phase, the
database's connection count and its ceiling without group commit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


def _own_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by the process `pid` alone, from /proc; 0 once
    it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by `pid` and its children (uvicorn workers), from /proc."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return sum(_own_cpu(p) for p in pids)


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy so far (every process, every core: user,
    nice, system, irq, softirq, steal), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine (postmaster,
    backends, WAL writer, checkpointer: every process named `postgres`), from /proc. A backend
    that exits between two readings takes its CPU with it: read around a phase whose
    connections stay open."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "postgres":
                total += _own_cpu(int(entry.name))
    return total


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


def _frame(f: str) -> str:
    """`name (path:line)` as `name (dir/file)`."""
    if " (" not in f:
        return f
    name, _, where = f.partition(" (")
    return f"{name} ({'/'.join(where.split(':')[0].split('/')[-2:])})"


def summarise_profile(raw: Path, top: int = 25) -> None:
    """Print the hottest functions from py-spy's collapsed stacks: own time and total time
    (leaving out the frames under which nearly everything runs: the server's main loop)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";")]
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
    shown = [(f, n) for f, n in total.most_common() if n < 0.9 * samples]
    for f, n in shown[: top + 15]:
        print(f"    {n / samples:6.1%}  {f}")


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
                f"6019{n % 10_000_000:07d}",
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
