"""Callback receivers on real sockets (aiohttp servers in the test's loop) and helpers that
read the outbox and wait for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from tests.reliability import asyncpg_dsn
from tests.servers import bound_socket

SECRET = "whsec_" + "dGVzdC1jYWxsYmFjay1zZWNyZXQtb25lLTAwMDA="  # "test-callback-secret-one-0000"
OTHER_SECRET = "whsec_" + "b3RoZXItY2FsbGJhY2stc2VjcmV0LXR3by0wMDAw"
FAST_RETRIES = "0.05,0.05"  # two retries, 50 ms apart: a whole schedule in ~100 ms


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() at receipt

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


Responder = Callable[[Received], Awaitable[int] | int]


@dataclass
class Receiver:
    """A callback receiver: records every request, answers what `respond` says (200 unless
    `statuses` or `respond` decide otherwise), verifies signatures with `standardwebhooks`."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    respond: Responder | None = None
    headers: dict[str, str] = field(default_factory=dict)  # added to every answer
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        item = Received(dict(request.headers), await request.read(), time.time())
        self.received.append(item)
        self.changed.set()
        if self.respond is not None:
            result = self.respond(item)
            status = await result if not isinstance(result, int) else result
        else:
            status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, headers=self.headers)

    def verified(self, secret: str = SECRET) -> list[dict[str, Any]]:
        """Every received body, each verified as a receiver would (raises if one fails)."""
        return [Webhook(secret).verify(r.body, r.headers) for r in self.received]

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def run_receiver(
    receiver: Receiver | None = None, port: int | None = None
) -> AsyncIterator[Receiver]:
    receiver = receiver or Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bound_socket()
    if port is not None:
        sock.close()
        site: web.BaseSite = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    else:
        site = web.SockSite(runner, sock)
    await site.start()
    receiver.url = f"http://127.0.0.1:{port or sock.getsockname()[1]}/hook?token=s3cret"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as r:
        yield r


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection of the test's own, to set up and assert rows."""
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    yield conn
    await conn.close()


async def insert_message(
    db: asyncpg.Connection, callback_url: str | None, msisdn: str = "60123240066"
) -> int:
    """A message as the send path's first step leaves it (status unknown, no ref)."""
    message_id: int = await db.fetchval(
        """INSERT INTO messages (send_id, api_key_name, channel, msisdn, status, created_at,
                                 updated_at, callback_url)
           VALUES (gen_random_uuid()::text, 'tester', 'sms', $1, 'unknown', now(), now(), $2)
           RETURNING id""",
        msisdn,
        callback_url,
    )
    return message_id


async def record_answer(db: asyncpg.Connection, message_id: int, ref: str) -> None:
    """The provider accepted it: status pending with its ref (as the send path records it)."""
    await db.execute(
        """UPDATE messages SET status = 'pending', ref = $2, submit_code = 200,
               submit_desc = 'OK', submitted_at = now(), updated_at = now()
           WHERE id = $1""",
        message_id,
        ref,
    )


async def events(db: asyncpg.Connection, message_id: int | None = None) -> list[asyncpg.Record]:
    if message_id is None:
        return await db.fetch("SELECT * FROM callback_events ORDER BY id")
    return await db.fetch(
        "SELECT * FROM callback_events WHERE message_id = $1 ORDER BY id", message_id
    )


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10, interval: float = 0.02
) -> None:
    """Poll a database condition (the relay tells the test nothing else) until it holds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(interval)


async def wait_state(
    db: asyncpg.Connection, event_id: int, state: str, timeout: float = 10
) -> asyncpg.Record:
    async def reached() -> bool:
        sql = "SELECT state = $2 FROM callback_events WHERE id = $1"
        return bool(await db.fetchval(sql, event_id, state))

    await wait_until(reached, timeout)
    row: asyncpg.Record = await db.fetchrow("SELECT * FROM callback_events WHERE id = $1", event_id)
    return row
