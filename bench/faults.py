"""Fault runs, by hand: a real crash, a real shutdown and a REAL Postgres restart under load.

    .venv/bin/python bench/faults.py                      # kill, term and restart
    .venv/bin/python bench/faults.py kill --dns 20000 --concurrency 100
    .venv/bin/python bench/faults.py restart --down-s 3 [--force]

Each scenario runs `bulk360-relay serve` as a child process on a throw-away database of
BENCH_DATABASE_URL's server (default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres),
with the simulator (in this process) as its upstream, and drives it with aiohttp:

- kill: --dns DNs at --concurrency; SIGKILL once half are answered 200; start a new process
  and resend every DN that did not get a 200. Lost = answered 200 but not stored.
- term: the same with SIGTERM once a quarter are answered: every 200 stored, nothing stored
  without its 200 (the in-flight requests and the DN writer's queue are drained).
- restart: DNs (--dn-clients) and one-recipient sends (--send-clients) arrive continuously;
  the Postgres cluster itself is stopped (`pg_ctlcluster ... stop -m fast`), kept down
  --down-s seconds and started again; then 200 DNs and 20 sends must all succeed. DNs must get
  200 or 503 (never a 200 without its row, never a 500); a send answered 503 must never have
  reached the provider. The cluster is started again whatever happens (finally).

The restart stops the server every other test run on this machine uses: the script waits (up to
--quiet-wait seconds) until no other database on it has a client, unless --force.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from throwaway_db import create_database, drop_database  # noqa: E402

from app.bulk360.simulator import Simulator, SimulatorConfig  # noqa: E402
from tests.reliability import (  # noqa: E402
    DN,
    Answer,
    Burst,
    Traffic,
    asyncpg_dsn,
    relay_env,
    relay_processes,
    send_statuses,
    stored_dns,
    summary,
)
from tests.servers import RelayProcess  # noqa: E402


def cluster_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        raise SystemExit("no cluster under /etc/postgresql")
    return versions[-1]


async def pg_ctlcluster(action: str) -> float:
    """Stop or start the real cluster; return how long the command took."""
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster_version(), "main", action]
    if action == "stop":
        args += ["-m", "fast"]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {out.decode(errors='replace')}")
    return time.monotonic() - started


async def cluster_running() -> bool:
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        cluster_version(),
        "main",
        "status",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


async def ensure_cluster_started() -> None:
    """Start the cluster if it is down: whatever happened, leave the server running."""
    if not await cluster_running():
        print("starting the Postgres cluster again", flush=True)
        await pg_ctlcluster("start")


async def empty(db: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(
            "TRUNCATE delivery_notifications, messages, idempotency_keys RESTART IDENTITY"
        )
    finally:
        await conn.close()


async def unknown_rows(db: str, wait_s: float) -> tuple[int, float]:
    """Messages still `unknown` (a send whose provider answer is not recorded yet), waiting up
    to `wait_s` for the relay to record the answers it kept during the outage."""
    started = time.monotonic()
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        while True:
            left = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'unknown'")
            waited = time.monotonic() - started
            if not left or waited > wait_s:
                return int(left), waited
            await asyncio.sleep(0.5)  # the relay process offers nothing to await
    finally:
        await conn.close()


def signal_after(process: RelayProcess, signum: int, oks: int) -> Callable[[Answer], None]:
    count = 0

    def on_answer(answer: Answer) -> None:
        nonlocal count
        if answer.status == 200:
            count += 1
            if count == oks:
                process.signal(signum)

    return on_answer


def log_errors(path: Path) -> Counter[str]:
    """ERROR lines of a relay log, by event."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") == "error":
                found[str(entry.get("event", "?"))[:60]] += 1
    return found


def logs(directory: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in directory.glob("*.log"):
        total += log_errors(path)
    return total


# -- scenarios -------------------------------------------------------------------------------


async def kill_or_term(
    db: str, sim: Simulator, logdir: Path, *, signum: int, dns_n: int, concurrency: int
) -> bool:
    name = signal.Signals(signum).name
    await empty(db)
    env = relay_env(db, sim.base_url)
    dns: list[DN] = [(f"{name.lower()}-{i}", "DELIVERED") for i in range(dns_n)]
    at = dns_n // 2 if signum == signal.SIGKILL else dns_n // 4
    started = time.monotonic()
    async with relay_processes([env], logdir) as [relay]:
        answers = await Burst(concurrency).dns(
            dns, lambda _i: relay.url, signal_after(relay, signum, at)
        )
        code = await relay.wait()
    elapsed = time.monotonic() - started
    ok = {dns[a.index] for a in answers if a.status == 200}
    stored = await stored_dns(db)
    lost = ok - set(stored)
    not_ok = [a for a in answers if a.status != 200]
    print(f"\n== {name} after {at} DNs answered 200 (exit status {code}, {elapsed:.1f}s)")
    print(f"DNs sent {dns_n}, 200'd {len(ok)}, other answers {summary(not_ok)}")
    print(
        f"stored {len(stored)} (answered 200: {len(ok & set(stored))}, "
        f"stored without a 200: {len(set(stored) - ok)}), lost {len(lost)}"
    )
    passed = not lost and {a.status for a in answers if a.status is not None} <= {200}
    if signum == signal.SIGTERM:
        passed = passed and set(stored) == ok and len(stored) == len(ok)
        return passed
    rest = [dns[a.index] for a in not_ok]
    async with relay_processes([env], logdir) as [again]:
        retried = await Burst(concurrency).dns(rest, lambda _i: again.url)
    final = await stored_dns(db)
    missing = set(dns) - set(final)
    print(
        f"restarted: {len(rest)} resent -> {summary(retried)}; stored now {len(final)} rows, "
        f"{len(set(final))} distinct DNs, missing {len(missing)}"
    )
    return passed and not missing and summary(retried) == {"200": len(rest)}


async def other_clients(admin_dsn: str, own: str) -> dict[str, int]:
    admin = await asyncpg.connect(admin_dsn)
    try:
        rows = await admin.fetch(
            "SELECT datname, count(*) AS n FROM pg_stat_activity WHERE backend_type = "
            "'client backend' AND pid <> pg_backend_pid() AND datname IS DISTINCT FROM $1 "
            "GROUP BY datname",
            own,
        )
    finally:
        await admin.close()
    return {str(r["datname"]): int(r["n"]) for r in rows}


async def wait_quiet(admin_dsn: str, own: str, quiet_wait: float) -> None:
    deadline = time.monotonic() + quiet_wait
    while busy := await other_clients(admin_dsn, own):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"other clients on the server {busy}: not stopping it under them (--force)"
            )
        print(f"waiting for other clients to finish: {busy}", flush=True)
        await asyncio.sleep(2)


async def restart(
    db: str,
    admin_dsn: str,
    sim: Simulator,
    logdir: Path,
    *,
    down_s: float,
    dn_clients: int,
    send_clients: int,
    force: bool,
    quiet_wait: float,
) -> bool:
    await empty(db)
    sim.reset()
    env = relay_env(db, sim.base_url)
    async with relay_processes([env], logdir) as [relay]:
        if not force:
            await wait_quiet(admin_dsn, str(make_url(db).database), quiet_wait)
        traffic = Traffic(relay.url, dn_workers=dn_clients, send_workers=send_clients)
        running = asyncio.create_task(traffic.run())
        cluster_stopped = False
        try:
            await traffic.until(
                lambda _s: (
                    traffic.count("dn", "before", 200) >= 500
                    and traffic.count("send", "before", 201) >= 20
                ),
                timeout=60,
            )
            cluster_stopped = True
            traffic.phase = "down"  # from the moment the stop is asked for
            stop_s = await pg_ctlcluster("stop")
            await asyncio.sleep(down_s)  # the outage itself: nothing to await
            start_s = await pg_ctlcluster("start")
            cluster_stopped = False
            back_at = time.monotonic()
            traffic.phase = "back"
            await traffic.until(
                lambda _s: (
                    traffic.count("dn", "back", 200) >= 1
                    and traffic.count("send", "back", 201) >= 1
                ),
                timeout=60,
            )
            recovered_s = time.monotonic() - back_at
        finally:
            if cluster_stopped:
                await ensure_cluster_started()
            traffic.stop()
            await running
        after = await Burst(50).dns(
            [(f"after-{i}", "DELIVERED") for i in range(200)], lambda _: relay.url
        )
        sends_after = await send_statuses(relay.url, [f"601299{n:05d}" for n in range(20)])
        # Answers the database missed during the outage are recorded once it is back.
        unknown, waited = await unknown_rows(db, wait_s=60)

    dns = [s for s in traffic.samples if s.kind == "dn"]
    sends = [s for s in traffic.samples if s.kind == "send"]
    stored = {msgid for msgid, _ in await stored_dns(db)}
    dn_200 = {s.key for s in dns if s.status == 200}
    dn_503 = {s.key for s in dns if s.status == 503}
    sent_to = {m["to"] for m in sim.sent}
    sends_503 = {s.key for s in sends if s.status == 503}
    lost = dn_200 - stored
    bad_dn = Counter(str(s.status or s.error) for s in dns if s.status not in (200, 503))
    bad_send = Counter(str(s.status or s.error) for s in sends if s.status not in (201, 503))
    slowest = max(s.elapsed for s in traffic.samples)
    print(
        f"\n== REAL Postgres restart: stop took {stop_s:.1f}s, down {down_s:g}s, start took "
        f"{start_s:.1f}s; relay recovered {recovered_s:.2f}s after start returned"
    )
    print(
        f"DNs sent {len(dns)}, 200'd {len(dn_200)}, 503'd {len(dn_503)}, other {dict(bad_dn)}; "
        f"stored {len(stored & {s.key for s in dns})} (503'd but stored {len(dn_503 & stored)}), "
        f"lost {len(lost)}"
    )
    other_sends = {s.key for s in sends if s.status not in (201, 503)}
    print(
        f"sends {len(sends)}: {summary(sends)}; reached the provider: 503'd "
        f"{len(sends_503 & sent_to)}, other non-201 {len(other_sends & sent_to)}"
    )
    by_phase = Counter((s.kind, s.began, str(s.status or s.error)) for s in traffic.samples)
    print("by phase:", dict(sorted(by_phase.items())))
    print(f"slowest answer {slowest:.2f}s")
    print(f"after recovery: 200 DNs -> {summary(after)}; 20 sends -> {Counter(sends_after)}")
    print(f"messages still unknown: {unknown} (after waiting {waited:.1f}s for late answers)")
    return (
        unknown == 0
        and not lost
        and not bad_dn
        and not bad_send
        and not (sends_503 & sent_to)
        and summary(after) == {"200": 200}
        and sends_after == [201] * 20
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", nargs="*", choices=["kill", "term", "restart"])
    parser.add_argument("--dns", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--dn-clients", type=int, default=30)
    parser.add_argument("--send-clients", type=int, default=6)
    parser.add_argument("--force", action="store_true", help="restart even with other clients")
    parser.add_argument("--quiet-wait", type=float, default=300)
    args = parser.parse_args()
    scenarios = args.scenario or ["kill", "term", "restart"]
    results: dict[str, bool] = {}
    db, admin_dsn = await create_database("relay_bench_faults")
    sim = Simulator(SimulatorConfig(dn_delay_s=0))
    await sim.start()
    logdir = Path(tempfile.mkdtemp(prefix="relay-faults-"))
    try:
        for scenario in scenarios:
            if scenario in ("kill", "term"):
                signum = signal.SIGKILL if scenario == "kill" else signal.SIGTERM
                results[scenario] = await kill_or_term(
                    db, sim, logdir, signum=signum, dns_n=args.dns, concurrency=args.concurrency
                )
            else:
                results[scenario] = await restart(
                    db,
                    admin_dsn,
                    sim,
                    logdir,
                    down_s=args.down_s,
                    dn_clients=args.dn_clients,
                    send_clients=args.send_clients,
                    force=args.force,
                    quiet_wait=args.quiet_wait,
                )
    finally:
        await ensure_cluster_started()
        await sim.stop()
        with contextlib.suppress(Exception):
            await drop_database(admin_dsn, db)
    print(f"\nrelay logs: {logdir}; ERROR lines by event: {dict(logs(logdir))}")
    print("results:", {k: "ok" if v else "FAILED" for k, v in results.items()})
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
