"""The console script works from any directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from app import __version__
from tests.conftest import create_database, drop_database


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version(tmp_path: Path) -> None:
    proc = _run("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"bulk360-relay {__version__}"


def test_keygen_prints_a_key_and_its_api_keys_entry(tmp_path: Path) -> None:
    proc = _run("keygen", "billing", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    key = re.search(r"API key .*: (\S+)", proc.stdout)
    entry = re.search(r"API_KEYS entry: (\S+)", proc.stdout)
    assert key and entry
    assert entry.group(1) == f"billing:{hashlib.sha256(key.group(1).encode()).hexdigest()}"
    again = _run("keygen", "billing", cwd=tmp_path)
    assert key.group(1) not in again.stdout  # a new random key each time


def test_keygen_refuses_a_name_with_a_colon(tmp_path: Path) -> None:
    proc = _run("keygen", "bad:name", cwd=tmp_path)
    assert proc.returncode == 2


async def test_migrate_from_another_directory(tmp_path: Path, postgres_server: str) -> None:
    url = await create_database(postgres_server, f"relay_cli_{uuid.uuid4().hex[:8]}")
    try:
        proc = await asyncio.to_thread(_run, "migrate", cwd=tmp_path, env={"DATABASE_URL": url})
        assert proc.returncode == 0, proc.stderr
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        tables = {r["tablename"] for r in rows}
        assert {"messages", "delivery_notifications", "idempotency_keys", "alembic_version"} <= (
            tables
        )
    finally:
        await drop_database(url)
