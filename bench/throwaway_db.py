"""A throw-away database for one benchmark run, on BENCH_DATABASE_URL's server.

`create_database(prefix)` creates `<prefix>_<random>`, migrates it to head and returns its
URL (postgresql+asyncpg, for the relay) and the server's admin DSN (plain postgresql, for
asyncpg); `drop_database` removes it, whoever is still connected.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from app.migrate import upgrade_async

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


async def create_database(prefix: str) -> tuple[str, str]:
    server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_SERVER))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = server.set(drivername="postgresql+asyncpg", database=name)
    url = db.render_as_string(hide_password=False)
    await upgrade_async(url)
    return url, admin_dsn


async def drop_database(admin_dsn: str, db: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(db).database}" WITH (FORCE)')
    finally:
        await admin.close()
