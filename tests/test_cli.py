"""The console script works from any directory."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from app import __version__


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


def test_migrate_from_another_directory(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    proc = _run("migrate", cwd=tmp_path, env={"DATABASE_URL": f"sqlite+aiosqlite:///{db}"})
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"messages", "delivery_notifications", "idempotency_keys", "alembic_version"} <= tables
