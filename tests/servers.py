"""Helpers that run real servers for tests: the relay on a real socket, in the test's loop,
or as a separate `bulk360-relay serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp


class _InLoopServer(uvicorn.Server):
    # The test runner owns the signals; an in-loop server must not capture them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def free_port() -> int:
    with contextlib.closing(bound_socket()) as sock:
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_in_loop(app: ASGIApp, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) on a real socket in the current event loop."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="none")
    server = _InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class RelayProcess:
    """`bulk360-relay serve` in a child process (for SIGKILL/SIGTERM and two-replica tests)."""

    def __init__(
        self, env: dict[str, str], port: int | None = None, cwd: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "PUBLIC_BASE_URL": self.url}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    async def start(self, log_path: Path, timeout: float = 20) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # a long-lived child, not awaited here
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient() as client:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"relay exited: {log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("relay did not start")
                await asyncio.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await self.wait(30)
            except TimeoutError:
                self.proc.kill()
                await self.wait(10)
