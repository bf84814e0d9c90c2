"""DN ingestion benchmark (run by hand): the real relay process against Postgres, driven by wrk.

    .venv/bin/python bench/dn_ingest.py                      # 20,000 DNs at concurrency 256
    .venv/bin/python bench/dn_ingest.py -n 100000 --skip-baselines   # RSS growth over 100k DNs
    .venv/bin/python bench/dn_ingest.py --profile 10         # + py-spy on the relay (needs py-spy)
    .venv/bin/python bench/dn_ingest.py --workers 2          # the relay with 2 uvicorn workers
    .venv/bin/python bench/dn_ingest.py --old-messages 500000 --prune-during
                                             # while `bulk360-relay prune` deletes 500,000
                                             # 40-day-old messages and their DNs
    .venv/bin/python bench/dn_ingest.py --callbacks          # every message has a callback_url

What it does, in one run:
1. creates a throw-away database on BENCH_DATABASE_URL's server (default
   postgresql+asyncpg://postgres@127.0.0.1:5432/postgres), migrates it, and seeds messages whose
   refs the DNs will name (plus ~10% DNs for msgids that match nothing), ANALYZEs them and
   runs a CHECKPOINT before each measured phase (a checkpoint in progress delayed commits by
   100 ms and more, at random);
2. starts `bulk360-relay serve` (1 worker unless --workers, uvloop, httptools,
   LOG_FORMAT=json, LOG_LEVEL=INFO, logs to a file; BENCH_LOG_LEVEL overrides the level) and
   drives N DNs with wrk + a Lua script at concurrency C: a third each as
   GET query / POST urlencoded / POST JSON, ~20% duplicates, out-of-order pairs
   (DELIVERED then UNDELIVERED). wrk counts the 200s itself (the hook answers exactly "OK");
3. verifies: 200s == stored rows; every message carries its last received DN (highest seq),
   with the right dn_count; no DN naming a known ref left unmatched;
4. measures two plain-Starlette baselines (bench/baselines.py) under the same uvicorn settings
   with the same wrk: hello-world, and one INSERT + COMMIT per request (asyncpg pool);
5. prints DN/s, p50/p99, the ratios relay/naive (target >= 2x) and relay/hello (>= 0.5x), the
   relay's CPU per DN and RSS before and after (workers included), and the writer's batches
   (count, mean size, mean time) and server-side p99 from the relay's own metrics; and the
   whole machine's CPU per DN and per baseline request (/proc/stat: the app, PostgreSQL, wrk
   and anything else running) and PostgreSQL's share of it (every `postgres` process), with
   the DN/s that many cores could reach at that cost (with `--callbacks`, the callbacks sent
   in the second after the burst are counted too).

The relay's /metrics is polled once a second to see when every DN is answered (a scrape costs
it some CPU, counted per DN); DN/s comes from the stored receipt times, not from that loop.
When wrk has handed out every DN, its connections send a /healthz every 100 ms until the last
answer is in (sent as fast as possible, they delayed the last DNs' commits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callbacks import SECRET as CALLBACK_SECRET  # noqa: E402
from callbacks import start_receiver  # noqa: E402
from profiling import machine_cpu, postgres_cpu  # noqa: E402
from throwaway_db import create_database, drop_database  # noqa: E402

from tests.reliability import asyncpg_dsn  # noqa: E402

TOKEN = "bench-dn-token"
WRK_LUA = r"""
local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  thread:set("nthreads", NTHREADS)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local plan = {}
  for line in io.lines(PLAN_PATH) do  -- method, path, content type, body: tab-separated
    local m, p, c, b = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    table.insert(plan, {m, p, c, b})
  end
  reqs = {}
  for i = tid + 1, #plan, nthreads do
    local p = plan[i]
    local headers = {}
    if p[3] ~= "" then headers["Content-Type"] = p[3] end
    local body = nil
    if p[4] ~= "" then body = p[4] end
    table.insert(reqs, wrk.format(p[1], p[2], headers, body))
  end
  idx, answered, ok, s400, s503, s5xx, sother = 0, 0, 0, 0, 0, 0, 0
  sentinel = wrk.format("GET", "/healthz")
end
function request()
  if not verified then  -- wrk calls request() once to check it parses: not a DN
    verified = true
    return sentinel
  end
  idx = idx + 1
  if idx <= #reqs then return reqs[idx] end
  return sentinel  -- keeps connections busy until the last DN answer is in
end
function delay()
  -- Once every DN is handed out, a connection sends a /healthz every 100 ms, not as fast as it
  -- can: a flood of them delayed the last DNs' commits (they share the event loop).
  if idx >= #reqs then return 100 end
  return 0
end
function response(status, headers, body)
  if body == '{"status":"ok"}' then return end
  answered = answered + 1
  if status == 200 and body == "OK" then ok = ok + 1
  elseif status == 503 then s503 = s503 + 1
  elseif status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 and status < 500 then s400 = s400 + 1
  else sother = sother + 1 end
  if answered >= #reqs then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local t = {ok=0, s400=0, s503=0, s5xx=0, sother=0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  io.write(string.format(
    'WRKJSON {"ok":%d,"s400":%d,"s503":%d,"s5xx":%d,"other":%d,"p50_ms":%.3f,"p99_ms":%.3f,' ..
    '"requests":%d,"duration_s":%.3f,"socket_errors":%d}\n',
    t.ok, t.s400, t.s503, t.s5xx, t.sother, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""

BASELINE_LUA = r"""
function init(args)
  plan = {}
  for line in io.lines(PLAN_PATH) do table.insert(plan, line) end
  idx = 0
end
function request()
  idx = idx % #plan + 1
  return wrk.format("GET", plan[idx])
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"p50_ms":%.3f,"p99_ms":%.3f,"non2xx":%d,' ..
    '"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status, errors))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_plan(
    n: int, seed: int = 7
) -> tuple[list[tuple[str, str, str, str]], list[str], dict[str, str]]:
    """N DN requests; returns (plan, refs to seed as messages, last status sent per msgid)."""
    rng = random.Random(seed)
    n_msgids = max(1, n // 3)
    refs = [f"bench-{i:07d}" for i in range(n_msgids)]
    orphans = [f"orphan-{i:07d}" for i in range(max(1, n_msgids // 10))]
    fields: list[dict[str, str]] = []
    while len(fields) < n:
        msgid = rng.choice(refs) if rng.random() < 0.9 else rng.choice(orphans)
        roll = rng.random()
        if roll < 0.2 and fields:  # a duplicate of an earlier DN
            fields.append(dict(rng.choice(fields)))
        elif roll < 0.3:  # out of order: DELIVERED, then UNDELIVERED for the same msgid
            fields.append({"msgid": msgid, "status": "DELIVERED", "error-code": "000"})
            fields.append({"msgid": msgid, "status": "UNDELIVERED", "error-code": "501"})
        else:
            ok = rng.random() < 0.8
            fields.append(
                {
                    "msgid": msgid,
                    "status": "DELIVERED" if ok else "UNDELIVERED",
                    "error-code": "0" if ok else rng.choice(["50", "501", "512", "999"]),
                    "msisdn": "6012" + str(rng.randrange(10**7, 10**8)),
                }
            )
    fields = fields[:n]
    plan = []
    for i, f in enumerate(fields):
        form = i % 3
        if form == 0:
            plan.append(("GET", f"/dn/{TOKEN}?{urlencode(f)}", "", ""))
        elif form == 1:
            plan.append(("POST", f"/dn/{TOKEN}", "application/x-www-form-urlencoded", urlencode(f)))
        else:
            plan.append(("POST", f"/dn/{TOKEN}", "application/json", json.dumps(f)))
    last = {f["msgid"]: f["status"] for f in fields}
    return plan, refs, last


def write_lua(tmp: Path, name: str, template: str, entries: list[str], **consts: object) -> Path:
    plan_path = tmp / f"{name}_plan.lua"
    plan_path.write_text("".join(e + "\n" for e in entries))
    head = "".join(f"{k} = {v}\n" for k, v in consts.items())
    script = tmp / f"{name}.lua"
    script.write_text(f"PLAN_PATH = {lua_str(str(plan_path))}\n{head}{template}")
    return script


def wrk_json(output: str) -> dict[str, float]:
    for line in output.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line.removeprefix("WRKJSON ")))
    raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")


def family(pid: int) -> list[int]:
    """The process and its children (uvicorn's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its workers."""
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its workers: unlike req/s, barely moved by
    other load."""
    total = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def dn_answers(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(m) for m in re.findall(r'^relay_dn_total\{outcome="\w+"\} ([0-9.e+]+)$', text, re.M)
    )


def writer_stats(base: str) -> dict[str, float]:
    """Batches committed, their mean size and mean duration, from the relay's own metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()

    def metric(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    # Server-side latency of the hook (from the request's start in the app to its answer):
    # the share answered within each histogram bucket.
    buckets = re.findall(
        r'^relay_http_request_duration_seconds_bucket\{le="([^"]+)",method="(?:GET|POST)",'
        r'route="/dn/\{token\}"\} ([0-9.e+]+)$',
        text,
        re.M,
    )
    within: dict[str, float] = {}
    for le, count in buckets:
        within[le] = within.get(le, 0.0) + float(count)
    total = within.get("+Inf", 0.0)
    server_p99 = next(
        (float(le) * 1000 for le, count in within.items() if total and count >= 0.99 * total),
        float("nan"),
    )
    batches = metric("relay_dn_writer_batch_size_count")
    return {
        "server_p99_ms": server_p99,
        "batches": batches,
        "batch_mean": metric("relay_dn_writer_batch_size_sum") / batches if batches else 0.0,
        "batch_ms": 1000 * metric("relay_dn_writer_batch_duration_seconds_sum") / batches
        if batches
        else 0.0,
    }


def run_relay(
    args: argparse.Namespace, db_url: str, tmp: Path, plan: list[tuple[str, str, str, str]]
) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "BULK360_MODE": "live",
        "BULK360_BASE_URL": "http://127.0.0.1:9",  # never called: this run only ingests DNs
        "BULK360_APP_KEY": "bench",
        "BULK360_APP_SECRET": "bench",
        "API_KEYS": "bench:" + "0" * 64,
        "DN_HOOK_TOKEN": TOKEN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "PUBLIC_BASE_URL": base,
        **({"DN_BATCH_MAX": str(args.batch_max)} if args.batch_max else {}),
        # --callbacks: the relay delivers a status callback per change to a local receiver
        # (bench/callbacks.py's) while it ingests.
        **({"CALLBACK_SIGNING_SECRETS": CALLBACK_SECRET} if args.callbacks else {}),
    }
    if args.workers > 1:  # metrics of every worker in one /metrics answer
        (tmp / "prom").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "prom")
    log_path = tmp / "relay.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "app.cli", "serve", "--port", str(port)),
                *("--workers", str(args.workers)),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"{base}/healthz", proc)
        rss_before = rss_mb(proc.pid)
        entries = ["\t".join(p) for p in plan]
        script = write_lua(tmp, "relay", WRK_LUA, entries, NTHREADS=args.threads)
        profiler = None
        if args.profile:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            profiler = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(args.profile),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--gil",  # samples holding the GIL: where the CPU goes, not the waits
                    "-o",
                    str(tmp / "profile.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cpu_before, machine_before, pg_before = cpu_s(proc.pid), machine_cpu(), postgres_cpu()
        result_started = time.time()
        wrk = subprocess.Popen(
            [
                "wrk",
                "-t",
                str(args.threads),
                "-c",
                str(args.concurrency),
                "-d",
                "600s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                base,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        prune = None
        if args.prune_during:
            prune_started = time.monotonic()
            prune = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "prune", "--older-than", "30"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        # Until every DN is answered, or answers stop coming (a request wrk never sent).
        seen, last_change = 0.0, time.monotonic()
        while wrk.poll() is None:
            answers = dn_answers(base)
            if answers != seen:
                seen, last_change = answers, time.monotonic()
            if answers >= len(plan) or time.monotonic() - last_change > 3:
                break
            # Seldom: a scrape costs the relay some milliseconds of CPU, counted per DN. The
            # DN/s figure comes from the receipt times, not from this loop.
            time.sleep(1.0)
        time.sleep(0.3)  # the last answers are on their way to wrk
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)
        wrk_done = time.monotonic()
        prune_finished_first = prune is not None and prune.poll() is not None
        out, _ = wrk.communicate(timeout=60)
        result = wrk_json(out)
        if prune is not None:
            pruned, _ = prune.communicate(timeout=600)
            print(pruned.strip())
            print(
                f"prune: {'finished' if prune_finished_first else 'still running'} when the "
                f"last DN was answered, {wrk_done - prune_started:.1f} s after the prune started"
                f" ({time.monotonic() - prune_started:.1f} s to its end)"
            )
        if profiler is not None:
            profiler.wait(timeout=args.profile + 30)
            result["profile"] = str(tmp / "profile.txt")  # type: ignore[assignment]
        result["cpu_ms_per_dn"] = 1000 * (cpu_s(proc.pid) - cpu_before) / len(plan)
        result["machine_ms_per_dn"] = 1000 * (machine_cpu() - machine_before) / len(plan)
        result["postgres_ms_per_dn"] = 1000 * (postgres_cpu() - pg_before) / len(plan)
        result["wrk_started_ts"] = result_started
        result.update(writer_stats(base))
        result["rss_before_mb"] = rss_before
        result["rss_after_mb"] = rss_mb(proc.pid)
        if args.callbacks:  # while the relay still runs: it delivers the rest
            result.update(asyncio.run(callback_stats(asyncpg_dsn(db_url))))
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.keep_log:
            shutil.copy(log_path, args.keep_log)


def run_baseline(
    args: argparse.Namespace, app: str, tmp: Path, paths: list[str], dsn: str
) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(ROOT / "bench"),
            f"baselines:{app}",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "BENCH_PG_DSN": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"{base}/healthz", proc)
        script = write_lua(tmp, app, BASELINE_LUA, paths)
        cpu_before, machine_before, pg_before = cpu_s(proc.pid), machine_cpu(), postgres_cpu()
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(args.threads),
                "-c",
                str(args.concurrency),
                "-d",
                f"{args.baseline_s}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                base,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = wrk_json(out)
        result["cpu_ms_per_req"] = 1000 * (cpu_s(proc.pid) - cpu_before) / result["requests"]
        result["machine_ms_per_req"] = 1000 * (machine_cpu() - machine_before) / result["requests"]
        result["postgres_ms_per_req"] = 1000 * (postgres_cpu() - pg_before) / result["requests"]
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def checkpoint(dsn: str) -> None:
    """Flush what set-up (or the previous phase) wrote, so that no checkpoint is in progress
    during a measured phase: its writes and fsyncs delayed commits by 100 ms and more, at
    random, from one run to the next."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def seed_old(conn: asyncpg.Connection, count: int) -> None:
    """`count` delivered messages and their DN, 40 days old: what a prune deletes."""
    started = time.perf_counter()
    await conn.execute(
        """
        WITH m AS (
            INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,
                                  delivery_status, error_code, dn_count, created_at,
                                  updated_at)
            SELECT 'old', 'bench', 'sms', '60123240066', 'old-' || g, 'delivered',
                   'DELIVERED', '000', 1, now() - interval '40 days', now() - interval '40 days'
            FROM generate_series(1, $1::int) AS g
            RETURNING id, ref)
        INSERT INTO delivery_notifications
            (msgid, status, error_code, message_id, raw, received_at)
        SELECT ref, 'DELIVERED', '000', id, '{}', now() - interval '40 days' FROM m
        """,
        count,
    )
    print(f"seeded {count:,} old messages with a DN each in {time.perf_counter() - started:.1f}s")


# The DNs of this run only (seed_old's are 40 days old, and may be pruned meanwhile).
_THIS_RUN = "received_at > now() - interval '1 day'"


async def callback_stats(dsn: str) -> dict[str, float]:
    """The callback events the run made, by state, right after the last DN was answered; then
    how long the rest takes to go out once the burst is over."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT state, count(*) FROM callback_events GROUP BY state")
        found = {r["state"]: float(r["count"]) for r in rows}
        states = ("delivered", "superseded", "pending")
        stats = {"events": sum(found.values()), **{s: found.get(s, 0.0) for s in states}}
        started = time.monotonic()
        sql = "SELECT count(*) FROM callback_events WHERE state = 'pending'"
        while await conn.fetchval(sql) and time.monotonic() - started < 300:
            await asyncio.sleep(0.1)
        stats["drain_s"] = time.monotonic() - started
    finally:
        await conn.close()
    return stats


async def verify(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval(f"SELECT count(*) FROM delivery_notifications WHERE {_THIS_RUN}")
        wrong = await conn.fetchval(
            """
            SELECT count(*) FROM messages m
            JOIN LATERAL (SELECT * FROM delivery_notifications d WHERE d.message_id = m.id
                          ORDER BY d.id DESC LIMIT 1) d ON true
            WHERE m.created_at > now() - interval '1 day' AND (m.last_dn_seq <> d.id
               OR m.delivery_status IS DISTINCT FROM d.status
               OR m.error_code IS DISTINCT FROM d.error_code
               OR m.status <> lower(d.status)
               OR m.dn_count <> (SELECT count(*) FROM delivery_notifications x
                                 WHERE x.message_id = m.id))
            """
        )
        unattached = await conn.fetchval(
            "SELECT count(*) FROM delivery_notifications d JOIN messages m ON m.ref = d.msgid "
            "WHERE d.message_id IS DISTINCT FROM m.id"
        )
        span, first = await conn.fetchrow(
            "SELECT extract(epoch FROM max(received_at) - min(received_at)),"
            " extract(epoch FROM min(received_at)) FROM delivery_notifications"
            f" WHERE {_THIS_RUN}"
        )
        return {
            "rows": rows,
            "wrong_messages": wrong,
            "unattached": unattached,
            "span_s": float(span or 0),
            "first_ts": float(first or 0),
        }
    finally:
        await conn.close()


def top_of_profile(path: str, n: int = 15) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r" \(/.*?site-packages/", " (", f) for f in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for f in set(frames):
            incl[f] += samples
    out = [f"py-spy: {total} samples", "  self %  function"]
    out += [f"  {100 * c / total:5.1f}  {f}" for f, c in own.most_common(n)]
    out += ["  incl %  function (app code and libraries)"]
    out += [f"  {100 * c / total:5.1f}  {f}" for f, c in incl.most_common(60) if "(<" not in f][:n]
    return "\n".join(out)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--dns", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=256)
    parser.add_argument("-t", "--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--baseline-s", type=int, default=10, help="seconds per baseline run")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--profile", type=int, default=0, help="py-spy the relay for N seconds")
    parser.add_argument("--profile-out", default="/tmp/dn_ingest_profile.txt")
    parser.add_argument("--batch-max", type=int, default=0, help="DN_BATCH_MAX for the relay")
    parser.add_argument("--keep-log", help="copy the relay's log here")
    parser.add_argument(
        "--workers", type=int, default=1, help="relay worker processes (baselines keep 1)"
    )
    parser.add_argument(
        "--old-messages", type=int, default=0, help="also seed N 40-day-old messages, a DN each"
    )
    parser.add_argument(
        "--prune-during",
        action="store_true",
        help="run `bulk360-relay prune --older-than 30` while the DNs arrive",
    )
    parser.add_argument(
        "--callbacks", action="store_true", help="every message has a callback_url (a receiver)"
    )
    parser.add_argument(
        "--alter",
        action="append",
        default=[],
        help="SQL run after seeding (repeatable), e.g. to measure a schema variant",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get update && apt-get install -y wrk")

    db_url, admin_dsn = await create_database("relay_bench")
    receiver = None
    dsn = asyncpg_dsn(db_url)
    try:
        plan, refs, _last = build_plan(args.dns)
        conn = await asyncpg.connect(dsn)
        callback_url = None
        if args.callbacks:
            receiver_port = free_port()
            receiver = start_receiver(receiver_port)
            callback_url = f"http://127.0.0.1:{receiver_port}/hook"
        await conn.execute(
            "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status, dn_count,"
            " created_at, updated_at, callback_url) SELECT 'bench', 'bench', 'sms',"
            " '60123240066', r, 'pending', 0, now(), now(), $2 FROM unnest($1::text[]) AS r",
            refs,
            callback_url,
        )
        if args.old_messages:
            await seed_old(conn, args.old_messages)
        for statement in args.alter:
            await conn.execute(statement)
        # As a live database would have them: planner statistics for the seeded tables
        # (without, the first batches' plans scan `messages` until autovacuum catches up).
        await conn.execute("ANALYZE messages")
        await conn.execute("ANALYZE delivery_notifications")
        await conn.close()
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            await checkpoint(dsn)
            relay = await asyncio.to_thread(run_relay, args, db_url, tmp, plan)
            checks = await verify(dsn)
            profile = ""
            if args.profile:
                shutil.copy(str(relay["profile"]), args.profile_out)
                profile = top_of_profile(args.profile_out) + f"\n(raw stacks: {args.profile_out})"
            baselines: dict[str, dict[str, float]] = {}
            if not args.skip_baselines:
                paths = [
                    p[1] if p[0] == "GET" else f"{p[1]}?{p[3]}"
                    for p in plan
                    if p[2] != "application/json"
                ]
                for app in ("hello_app", "naive_app"):
                    await checkpoint(dsn)
                    baselines[app] = await asyncio.to_thread(
                        run_baseline, args, app, tmp, paths, dsn
                    )
    finally:
        if receiver is not None:
            receiver.kill()
            receiver.wait()
        await drop_database(admin_dsn, db_url)

    n = args.dns
    dn_per_s = n / checks["span_s"] if checks["span_s"] else float("nan")
    print(f"relay: {n} DNs at concurrency {args.concurrency} (wrk -t{args.threads})")
    print(
        f"  answers: 200={relay['ok']:.0f} 4xx={relay['s400']:.0f} 503={relay['s503']:.0f} "
        f"5xx={relay['s5xx']:.0f} socket errors={relay['socket_errors']:.0f}"
    )
    print(
        f"  DN/s: {dn_per_s:,.0f} (first to last receipt, server side); "
        f"the first DN was stored {checks['first_ts'] - relay['wrk_started_ts']:.2f} s after wrk "
        "was started"
    )
    print(
        f"  latency p50 {relay['p50_ms']:.2f} ms, p99 {relay['p99_ms']:.2f} ms; "
        f"relay CPU {relay['cpu_ms_per_dn']:.3f} ms per DN; the whole machine's (relay, "
        f"PostgreSQL, wrk, all) {relay['machine_ms_per_dn']:.3f} ms per DN, of which "
        f"PostgreSQL's {relay['postgres_ms_per_dn']:.3f}"
    )
    print(
        f"  writer: {relay['batches']:,.0f} batches, mean {relay['batch_mean']:.0f} DNs, "
        f"mean {relay['batch_ms']:.1f} ms from checkout to COMMIT; in the relay, 99% of DNs "
        f"answered within {relay['server_p99_ms']:.0f} ms (histogram bucket)"
    )
    print(
        f"  RSS before {relay['rss_before_mb']:.1f} MB, after {relay['rss_after_mb']:.1f} MB "
        f"(+{relay['rss_after_mb'] - relay['rss_before_mb']:.1f} MB)"
    )
    ok = (
        relay["ok"] == checks["rows"]
        and checks["wrong_messages"] == 0
        and checks["unattached"] == 0
    )
    print(
        f"  check: 200s {relay['ok']:.0f} == stored rows {checks['rows']}: "
        f"{relay['ok'] == checks['rows']}; "
        f"messages not on their last DN: {checks['wrong_messages']}; "
        f"DNs not attached to their message: {checks['unattached']} -> {'OK' if ok else 'FAILED'}"
    )
    if args.callbacks:
        print(
            f"  callbacks: {relay['events']:,.0f} events ({relay['delivered']:,.0f} "
            f"delivered, {relay['superseded']:,.0f} superseded, {relay['pending']:,.0f} "
            f"still pending when the DNs were all answered, all out {relay['drain_s']:.1f} s "
            "later)"
        )
    for app, r in baselines.items():
        rps = r["requests"] / r["duration_s"]
        print(
            f"{app}: {rps:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"non-2xx {r['non2xx']:.0f}, CPU {r['cpu_ms_per_req']:.3f} ms per request "
            f"(the whole machine's {r['machine_ms_per_req']:.3f}, PostgreSQL's "
            f"{r['postgres_ms_per_req']:.3f})"
        )
    if baselines:
        hello = baselines["hello_app"]["requests"] / baselines["hello_app"]["duration_s"]
        naive = baselines["naive_app"]["requests"] / baselines["naive_app"]["duration_s"]
        print(
            f"ratios: relay/naive = {dn_per_s / naive:.2f}x (target >= 2), "
            f"relay/hello = {dn_per_s / hello:.2f}x (target >= 0.5)"
        )
        cpu = relay["cpu_ms_per_dn"]
        print(
            f"CPU-based (what one core could do, robust to other load on the machine): relay "
            f"{1000 / cpu:,.0f} DN/s, hello {1000 / baselines['hello_app']['cpu_ms_per_req']:,.0f} "
            f"req/s, naive {1000 / baselines['naive_app']['cpu_ms_per_req']:,.0f} req/s (Python "
            f"side only; the naive baseline's limit is the COMMIT per request, not its CPU)"
        )
        cores = os.cpu_count() or 1
        ceiling = cores * 1000 / relay["machine_ms_per_dn"]
        print(
            f"machine-bound: at {relay['machine_ms_per_dn']:.3f} ms of the machine's CPU per DN, "
            f"its {cores} cores could do at most {ceiling:,.0f} DN/s = {ceiling / hello:.2f}x "
            f"hello, every core busy all the time"
        )
    if profile:
        print(profile)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
