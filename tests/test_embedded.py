"""The embedded PostgreSQL of `make run`: with DATABASE_URL unset, `bulk360-relay migrate` and
`serve` start (or join) a real server in ./.data/postgres, the data outlives a restart, and no
server process is left once the last command exits.

CI gives the rest of the suite a server of its own (TEST_DATABASE_URL), so this test is what
exercises the embedded path there; it never reads TEST_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.conftest import server_directory
from tests.servers import RelayProcess

SANDBOX_AUTH = {"Authorization": "Bearer sandbox"}  # sandbox mode's key when API_KEYS is unset


def _sandbox_env() -> dict[str, str]:
    """The environment of a newcomer's shell: no database, no keys, sandbox mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "API_KEYS")}
    env.update(BULK360_MODE="sandbox", SANDBOX_DN_DELAY_S="0", LOG_FORMAT="json")
    env.pop("DN_HOOK_TOKEN", None)
    env.pop("BULK360_BASE_URL", None)
    return env


def _servers_on(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "postgres" or not any(str(data_dir) in p for p in cmdline):
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:  # killed, not yet reaped by init
                found.append(proc)
    return found


async def _serve(cwd: Path, log: Path) -> RelayProcess:
    relay = RelayProcess(_sandbox_env(), cwd=cwd)
    await relay.start(log, timeout=60)
    return relay


async def _stop(relay: RelayProcess) -> None:
    relay.signal(signal.SIGINT)  # Ctrl-C, as after `make run`
    assert await relay.wait(60) == 0


async def _until_delivered(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    for _ in range(500):
        body: dict[str, object] = (await client.get(url, headers=SANDBOX_AUTH)).json()
        if body["status"] == "delivered":
            return body
        await asyncio.sleep(0.02)  # the simulator's DN arrives through the relay's own socket
    raise AssertionError(f"never delivered: {body}")


async def test_serve_without_database_url_runs_and_keeps_data_on_the_embedded_server() -> None:
    with server_directory() as tmp_path:
        await _serve_restart_and_stop(tmp_path)


async def _serve_restart_and_stop(tmp_path: Path) -> None:
    data_dir = (tmp_path / ".data" / "postgres").resolve()
    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=tmp_path,
        env=_sandbox_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    assert (data_dir / "PG_VERSION").exists()
    assert _servers_on(data_dir) == []  # migrate was the only user: its server stopped

    relay = await _serve(tmp_path, tmp_path / "first.log")
    try:
        assert _servers_on(data_dir), "serve did not start the embedded server"
        async with httpx.AsyncClient(base_url=relay.url, timeout=30) as client:
            sent = await client.post(
                "/v1/messages",
                json={"to": "012-324 0066", "text": "Your OTP is 123456"},
                headers=SANDBOX_AUTH,
            )
            assert sent.status_code == 201, sent.text
            ref = sent.json()["messages"][0]["ref"]
            await _until_delivered(client, f"/v1/messages/{ref}")
    finally:
        await _stop(relay)
    first_log = (tmp_path / "first.log").read_text()
    assert "embedded PostgreSQL" in first_log  # the sandbox WARNING line names it
    assert _servers_on(data_dir) == []

    relay = await _serve(tmp_path, tmp_path / "second.log")
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=30) as client:
            again = await client.get(f"/v1/messages/{ref}", headers=SANDBOX_AUTH)
    finally:
        await _stop(relay)
    assert again.status_code == 200 and again.json()["status"] == "delivered"
    assert _servers_on(data_dir) == []
    assert not (data_dir / "postmaster.pid").exists()


async def test_a_relay_killed_outright_does_not_keep_the_server_up_after_the_next_one() -> None:
    """A process killed with SIGKILL never lets go of the server (its pid stays in the wheel's
    list); the next relay to exit still stops it."""
    with server_directory() as tmp_path:
        data_dir = (tmp_path / ".data" / "postgres").resolve()
        killed = await _serve(tmp_path, tmp_path / "killed.log")
        killed.signal(signal.SIGKILL)
        assert await killed.wait(60) == -signal.SIGKILL
        assert _servers_on(data_dir), "nobody stopped the server: it outlives the killed relay"

        relay = await _serve(tmp_path, tmp_path / "next.log")  # joins the running server
        await _stop(relay)
        assert _servers_on(data_dir) == []
