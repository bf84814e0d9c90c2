"""The relay with an httpx upstream client instead of aiohttp: for `bench/send.py --httpx` only.

    .venv/bin/python bench/httpx_client.py --port 8001   (environment as for `serve`)

Only the HTTP layer differs (`start`, `close`, `_post`); token caching, the semaphore, packing
and parsing are the product's. The product never uses this (ECOSYSTEM.md: httpx's pool is slow
under concurrency); it exists to measure that claim on the relay itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app.main
from app.bulk360 import client as upstream
from app.config import load_settings


class HttpxBulk360Client(upstream.Bulk360Client):
    _http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        self._http = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(self.timeout_s))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _post(
        self, path: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        assert self._http is not None
        try:
            resp = await self._http.post(self.base_url + path, data=dict(form), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise upstream._TransportError("not_written", type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise upstream._TransportError("timeout", "no answer in time") from exc
        except httpx.TransportError as exc:
            raise upstream._TransportError("dropped", type(exc).__name__) from exc
        return resp.status_code, resp.content


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app.main.Bulk360Client = HttpxBulk360Client  # type: ignore[misc]
    settings = load_settings()
    uvicorn.run(
        app.main.create_app(settings),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
