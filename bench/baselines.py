"""Plain Starlette baselines for the DN benchmark (bench/dn_ingest.py), served by uvicorn with
the relay's settings (uvloop, httptools, 1 worker, no access log):

- `hello_app`: answers "OK" to anything; the ceiling for one Python process on this machine.
- `naive_app`: reads `msgid`/`status` from the query string and does one INSERT + COMMIT per
  request through an asyncpg pool (BENCH_PG_DSN): what a DN hook without group commit costs.

    uvicorn --app-dir bench baselines:hello_app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

NAIVE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_naive_dn (
    id bigserial PRIMARY KEY, msgid text NOT NULL, status text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""


async def hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("OK")


hello_app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])


@asynccontextmanager
async def _pool(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(os.environ["BENCH_PG_DSN"], min_size=10, max_size=20)
    async with pool.acquire() as conn:
        await conn.execute(NAIVE_TABLE)
    yield {"pool": pool}
    await pool.close()


async def naive(request: Request) -> PlainTextResponse:
    params = request.query_params
    pool: asyncpg.Pool = request.state.pool
    async with pool.acquire() as conn:  # autocommit: one COMMIT (one fsync) per DN
        await conn.execute(
            "INSERT INTO bench_naive_dn (msgid, status) VALUES ($1, $2)",
            params.get("msgid", ""),
            params.get("status", ""),
        )
    return PlainTextResponse("OK")


naive_app = Starlette(
    routes=[Route("/{path:path}", naive, methods=["GET", "POST"])], lifespan=_pool
)
