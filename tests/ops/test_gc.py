"""The served app tunes the garbage collector once started; apps built in tests do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, gc, json
from asgi_lifespan import LifespanManager
from app.main import create_app, serve_app

async def main():
    seen = {}
    for name, factory in (("test_app", create_app), ("served", serve_app)):
        async with LifespanManager(factory()):
            seen[name] = [list(gc.get_threshold()), gc.get_freeze_count()]
    print(json.dumps(seen))

asyncio.run(main())
"""


def test_served_app_freezes_startup_objects_and_raises_the_young_threshold(
    db_url: str,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "BULK360_MODE": "sandbox",
        "BULK360_BASE_URL": "http://127.0.0.1:9",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["test_app"] == [[700, 10, 10], 0]
    threshold, frozen = seen["served"]
    assert threshold == [20_000, 20, 20] and frozen > 10_000
