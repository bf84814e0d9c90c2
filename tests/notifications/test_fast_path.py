"""The DN hook's fast path answers the right token itself and passes everything else on."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from app.models import DeliveryNotification
from app.notifications.hook import DNHookFastPath
from tests.conftest import DN_TOKEN, Relay


async def test_right_token_is_stored_without_the_app_and_the_rest_falls_through(
    relay: Relay, engine: AsyncEngine
) -> None:
    passed_on: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        passed_on.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = DNHookFastPath(app)

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"relay": relay.state}  # what uvicorn copies from the lifespan
        await fast(scope, receive, send)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=with_state), base_url="http://relay.test"
    ) as client:
        ok = await client.post(f"/dn/{DN_TOKEN}", data={"msgid": "m1", "status": "DELIVERED"})
        wrong = await client.post("/dn/not-the-token", data={"msgid": "m2", "status": "DELIVERED"})
        other = await client.get("/v1/messages")
        put = await client.put(f"/dn/{DN_TOKEN}")

    assert (ok.status_code, ok.text) == (200, "OK")
    assert wrong.status_code == other.status_code == put.status_code == 404
    assert passed_on == ["POST /dn/not-the-token", "GET /v1/messages", f"PUT /dn/{DN_TOKEN}"]
    async with engine.connect() as conn:
        stored = await conn.scalar(select(func.count()).select_from(DeliveryNotification))
    assert stored == 1
