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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import asyncpg
import orjson
from sqlalchemy.engine import make_url

from app.config import hash_api_key
from tests.conftest import DN_TOKEN, TEST_API_KEY, empty_tables  # noqa: F401 - re-exported
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


async def send_statuses(url: str, numbers: Sequence[str]) -> list[int]:
    """HTTP status of a one-recipient send to each number, all at once."""
    async with aiohttp.ClientSession() as http:

        async def one(to: str) -> int:
            body = {"to": to, "text": "x"}
            async with http.post(f"{url}/v1/messages", json=body, headers=AUTH) as resp:
                return resp.status

        return list(await asyncio.gather(*(one(n) for n in numbers)))


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


def _error_code(body: bytes) -> str:
    """The `error` of a JSON error body, or a note that the body was not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not-json"
    return str(parsed.get("error")) if isinstance(parsed, dict) else "not-an-object"


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
    dn_workers: int = 20
    send_workers: int = 4
    phase: str = "before"
    samples: list[Sample] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _running: bool = True
    _seq: int = 0

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
                body = await resp.read()
            if status >= 400:
                error = _error_code(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        await self._record(
            Sample(kind, key, began, self.phase, status, error, time.monotonic() - started)
        )

    async def _worker(self, http: aiohttp.ClientSession, kind: str) -> None:
        while self._running:
            self._seq += 1
            # Unique keys: a msgid per DN, a recipient per send (60120000001, ...).
            key = f"traffic-{self._seq}" if kind == "dn" else f"6012{self._seq:07d}"
            await self._one(http, kind, key)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.dn_workers + self.send_workers)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await asyncio.gather(
                *(self._worker(http, "dn") for _ in range(self.dn_workers)),
                *(self._worker(http, "send") for _ in range(self.send_workers)),
            )

    def stop(self) -> None:
        self._running = False
