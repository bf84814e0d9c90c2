"""Status-callback benchmark (run by hand): the real relay process delivering to a local receiver.

    .venv/bin/python bench/callbacks.py                 # 20,000 at once, then 2,000/s for 10 s
    .venv/bin/python bench/callbacks.py -n 50000 --rate 3000 --seconds 10
    .venv/bin/python bench/callbacks.py receiver --port 9100   # the receiver alone

What it does, in one run:
1. a throw-away database on BENCH_DATABASE_URL's server (bench/throwaway_db.py), migrated,
   seeded with `-n` pending messages whose `callback_url` is the receiver;
2. the receiver: a separate process, raw asyncio + uvloop HTTP/1.1 keep-alive, answering 200 to
   every POST and noting each `webhook-id`'s arrival time (`time.time()`): as cheap as a
   receiver can be, so that the figures are the relay's;
3. `bulk360-relay serve` (1 worker, uvloop, httptools, live mode, LOG_LEVEL=INFO, logs to a file)
   with CALLBACK_SIGNING_SECRETS set;
4. burst: ONE transaction moves every seeded message to `delivered` (-n events at its COMMIT);
   delivered/s = n / (last arrival - COMMIT);
5. steady rate: messages move to `undelivered` at `--rate` per second for `--seconds`, in
   transactions of `--rate / 100` every 10 ms; each event's latency is its arrival at the
   receiver minus the moment its transaction's COMMIT was *sent* (conservative: the COMMIT's
   own time is counted). p50 / p99 / max;
6. checks: every event `delivered` in the database, the receiver saw every event, and how many
   arrived more than once (0 expected: no failed attempt in this run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from throwaway_db import create_database, drop_database  # noqa: E402

from tests.reliability import asyncpg_dsn  # noqa: E402

SECRET = "whsec_YmVuY2gtY2FsbGJhY2stc2VjcmV0LTAwMDAwMA=="
_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


# ---- the receiver (its own process) ------------------------------------------------------------


class _Receiver(asyncio.Protocol):
    arrivals: ClassVar[dict[str, list[float]]] = {}  # webhook-id -> arrival times

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length, msg_id = 0, None
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "webhook-id":
                    msg_id = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith("GET /_arrivals"):
                body = json.dumps(_Receiver.arrivals).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
                )
                continue
            if msg_id is not None:
                _Receiver.arrivals.setdefault(msg_id, []).append(time.time())
            self.transport.write(_OK)


def receive(port: int) -> None:
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Receiver, "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "receiver", "--port", str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("receiver did not start")


def arrivals(port: int) -> dict[str, list[float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_arrivals", timeout=30) as r:
        found: dict[str, list[float]] = json.loads(r.read())
        return found


# ---- the run -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_relay(db_url: str, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "BULK360_MODE": "live",
        "BULK360_BASE_URL": "http://127.0.0.1:9",  # never called
        "BULK360_APP_KEY": "bench",
        "BULK360_APP_SECRET": "bench",
        "API_KEYS": "bench:" + "0" * 64,
        "DN_HOOK_TOKEN": "bench-dn-token",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "CALLBACK_SIGNING_SECRETS": SECRET,
        **extra_env,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text()[-2000:]) from None
            time.sleep(0.1)
    raise RuntimeError("relay did not start")


async def seed(conn: asyncpg.Connection, n: int, url: str) -> None:
    await conn.execute(
        "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status, version,"
        " submit_code, submitted_at, created_at, updated_at, callback_url)"
        " SELECT 'bench', 'bench', 'sms', '60123240066', 'B' || g, 'pending', 1, 200, now(),"
        " now(), now(), $2 FROM generate_series(1, $1) AS g",
        n,
        url,
    )
    await conn.execute("ANALYZE messages")


async def wait_delivered(conn: asyncpg.Connection, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval("SELECT count(*) FROM callback_events WHERE state <> 'pending'")
        if done >= total:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{done} of {total} events done after {timeout} s")


async def burst(conn: asyncpg.Connection, n: int) -> float:
    """Every message changes in one transaction; returns when its COMMIT was sent."""
    async with conn.transaction():
        await conn.execute("UPDATE messages SET status = 'delivered'")
        committed_at = time.time()
    return committed_at


async def steady(conn: asyncpg.Connection, n: int, rate: int, seconds: float) -> dict[int, float]:
    """Messages 1..rate*seconds move to undelivered at `rate`/s; message id -> COMMIT sent."""
    per_tick = max(1, rate // 100)
    committed: dict[int, float] = {}
    started = time.monotonic()
    next_id, tick = 1, 0
    total = min(n, int(rate * seconds))
    while next_id <= total:
        ids = list(range(next_id, min(next_id + per_tick, total + 1)))
        tr = conn.transaction()
        await tr.start()
        await conn.execute(
            "UPDATE messages SET status = 'undelivered' WHERE id = ANY($1::bigint[])", ids
        )
        sent = time.time()
        await tr.commit()
        committed.update(dict.fromkeys(ids, sent))
        next_id += per_tick
        tick += 1
        delay = started + tick * 0.01 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return committed


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    db_url, admin_dsn = await create_database("relay_cb_bench")
    rport = free_port()
    receiver = start_receiver(rport)
    relay = None
    try:
        conn = await asyncpg.connect(asyncpg_dsn(db_url))
        await seed(conn, args.n, f"http://127.0.0.1:{rport}/hook?token=bench")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                relay = start_relay(db_url, Path(tmp) / "relay.log", {})
                profiler = None
                if args.profile:
                    profiler = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(relay.pid),
                            "--duration",
                            str(args.profile),
                            "--format",
                            "raw",
                            "--gil",
                            "-o",
                            args.profile_out,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                cpu_before = cpu_s(relay.pid)
                committed_at = await burst(conn, args.n)
                await wait_delivered(conn, args.n, timeout=120)
                burst_cpu_ms = 1000 * (cpu_s(relay.pid) - cpu_before) / args.n
                if profiler is not None:
                    profiler.wait()
                got = arrivals(rport)
                last = max(t for times in got.values() for t in times)
                burst_rate = args.n / (last - committed_at)
                burst_ids = set(got)

                sent = await steady(conn, args.n, args.rate, args.seconds)
                await wait_delivered(conn, args.n + len(sent), timeout=120)
                got = arrivals(rport)
                rows = await conn.fetch(
                    "SELECT id, message_id, state FROM callback_events WHERE version = 3"
                )
                latencies = []
                for row in rows:
                    times = got.get(f"msg_{row['id']}")
                    if times:
                        latencies.append((times[0] - sent[row["message_id"]]) * 1000)
                states = await conn.fetch(
                    "SELECT state, count(*) FROM callback_events GROUP BY state ORDER BY state"
                )
                dupes = sum(len(times) - 1 for times in got.values())
            finally:
                if args.keep_log:
                    Path(args.keep_log).write_bytes((Path(tmp) / "relay.log").read_bytes())
        await conn.close()
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=60)
        receiver.kill()
        receiver.wait()
        await drop_database(admin_dsn, db_url)

    print(
        f"burst: {args.n:,} events committed at once, delivered at {burst_rate:,.0f}/s; relay "
        f"CPU {burst_cpu_ms:.3f} ms per event ({1000 / burst_cpu_ms:,.0f}/s on one core)"
    )
    print(
        f"steady: {len(sent):,} events at {args.rate:,}/s for {args.seconds:g} s: commit to "
        f"receipt p50 {statistics.median(latencies):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, "
        f"max {max(latencies):.1f} ms"
    )
    print(
        "check: states "
        + ", ".join(f"{r['state']}={r['count']}" for r in states)
        + f"; receiver saw {len(burst_ids):,} + {len(latencies):,} events; "
        f"{dupes} arrived more than once"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "receiver":
        parser = argparse.ArgumentParser()
        parser.add_argument("receiver")
        parser.add_argument("--port", type=int, default=9100)
        receive(parser.parse_args().port)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=20_000, help="messages (burst events)")
    parser.add_argument("--rate", type=int, default=2_000, help="steady events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep-log", help="copy the relay's log here")
    parser.add_argument("--profile", type=int, default=0, help="py-spy the relay for N s")
    parser.add_argument("--profile-out", default="/tmp/callbacks_profile.txt")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
