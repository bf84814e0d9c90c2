"""Faults on real components: relay processes (`bulk360-relay serve`) killed, stopped or run
side by side on one Postgres, the database cut under load, the upstream failing.

Shared helpers for these tests: the environment of a relay process, emptying the tables, and a
DN burst client (aiohttp: httpx would be the bottleneck at these rates) that records, for every
DN, how it was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

from app.config import hash_api_key
from tests.conftest import DN_TOKEN, TABLES, TEST_API_KEY
from tests.servers import RelayProcess

DN_PATH = f"/dn/{DN_TOKEN}"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


def relay_env(database_url: str, upstream: str, **extra: object) -> dict[str, str]:
    """Environment of a `bulk360-relay serve` child process (extra: SETTING_NAME=value)."""
    env = {
        "DATABASE_URL": database_url,
        "BULK360_MODE": "sandbox",
        "BULK360_BASE_URL": upstream,
        "API_KEYS": f"tester:{hash_api_key(TEST_API_KEY)}",
        "DN_HOOK_TOKEN": DN_TOKEN,
        "LOG_FORMAT": "json",
        "BULK360_TIMEOUT_S": "5",
    }
    env.update({name.upper(): str(value) for name, value in extra.items()})
    return env


@contextlib.asynccontextmanager
async def relay_processes(
    envs: Sequence[dict[str, str]], log_dir: Path
) -> AsyncIterator[list[RelayProcess]]:
    """Start one relay process per env (concurrently); stop any still alive on the way out."""
    processes = [RelayProcess(env) for env in envs]
    try:
        await asyncio.gather(*(p.start(log_dir / f"relay-{p.port}.log") for p in processes))
        yield processes
    finally:
        await asyncio.gather(*(p.stop() for p in processes))


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def empty_tables(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


async def stored_dns(url: str) -> list[tuple[str, str]]:
    """(msgid, status) of every stored DN, in receipt order."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT msgid, status FROM delivery_notifications ORDER BY id")
    finally:
        await conn.close()
    return [(row["msgid"], row["status"]) for row in rows]


DN = tuple[str, str]  # (msgid, status)


@dataclass
class Answer:
    """How one request was answered: an HTTP status, or the transport error instead."""

    index: int
    status: int | None
    error: str | None  # aiohttp exception class name when there was no HTTP answer
    elapsed: float
    body: str = ""

    @property
    def refused(self) -> bool:
        # Connection refused: the listener was closed (no bytes of the request were sent).
        return self.error == "ClientConnectorError"


class Burst:
    """Fire requests at `concurrency` in flight and keep every answer, in request order.

    `on_answer(answer)` runs in the loop as each answer arrives (e.g. to kill the server
    after the n-th 200); the burst goes on until every request has been tried.
    """

    def __init__(self, concurrency: int = 50, timeout_s: float = 30) -> None:
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def dns(
        self,
        dns: Sequence[DN],
        url_for: Callable[[int], str],
        on_answer: Callable[[Answer], None] | None = None,
    ) -> list[Answer]:
        """POST (even index) or GET (odd) each DN to the hook at `url_for(index)`, with
        error-code 000 when DELIVERED and 501 otherwise."""

        async def one(http: aiohttp.ClientSession, i: int) -> Answer:
            msgid, status = dns[i]
            code = "000" if status == "DELIVERED" else "501"
            fields = {"msgid": msgid, "status": status, "error-code": code}
            url = url_for(i) + DN_PATH
            request = http.post(url, data=fields) if i % 2 == 0 else http.get(url, params=fields)
            async with request as resp:
                return Answer(i, resp.status, None, 0.0, await resp.text())

        return await self.run(len(dns), one, on_answer)

    async def run(
        self,
        count: int,
        one: Callable[[aiohttp.ClientSession, int], Awaitable[Answer]],
        on_answer: Callable[[Answer], None] | None = None,
    ) -> list[Answer]:
        answers: list[Answer | None] = [None] * count
        next_index = 0

        async def worker(http: aiohttp.ClientSession) -> None:
            nonlocal next_index
            while next_index < count:
                i, next_index = next_index, next_index + 1
                started = time.monotonic()
                try:
                    answer = await one(http, i)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    answer = Answer(i, None, type(exc).__name__, 0.0)
                answer.elapsed = time.monotonic() - started
                answers[i] = answer
                if on_answer is not None:
                    on_answer(answer)

        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout) as http:
            await asyncio.gather(*(worker(http) for _ in range(self.concurrency)))
        return [a for a in answers if a is not None]


class Answered(Protocol):
    @property
    def status(self) -> int | None: ...

    @property
    def error(self) -> str | None: ...


def summary(answers: Sequence[Answered]) -> dict[str, int]:
    """Counts by outcome: HTTP status as text, or the transport error's class name."""
    counts: dict[str, int] = {}
    for a in answers:
        key = str(a.status) if a.status is not None else a.error or "?"
        counts[key] = counts.get(key, 0) + 1
    return counts
