"""The console's callback pages over ASGI: the failed list, redeliver's CSRF check, and its
refusal of an event that is not failed or gone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from tests.callbacks.conftest import FAST_RETRIES, SECRET, Receiver, run_receiver
from tests.conftest import Relay
from tests.console.helpers import csrf_token, sign_in

MakeRelay = Callable[..., AbstractAsyncContextManager[Relay]]


async def event_in(relay: Relay, state: str) -> int:
    """The id of the one callback event once it is in `state` (the API, polled)."""
    async with asyncio.timeout(10):
        while True:
            listed = await relay.client.get("/v1/callbacks", params={"state": state})
            if items := listed.json()["items"]:
                return int(items[0]["id"])
            await asyncio.sleep(0.05)


async def test_failed_callback_is_listed_and_redelivered_once(make_relay: MakeRelay) -> None:
    async with (
        run_receiver(Receiver(statuses=[500, 500, 500])) as receiver,
        make_relay(None, callback_retry_s=FAST_RETRIES, callback_signing_secrets=SECRET) as relay,
    ):
        sent = await relay.client.post(
            "/v1/messages",
            json={"to": "60199993000", "text": "hi", "callback_url": receiver.url},
        )
        assert sent.status_code == 201
        event_id = await event_in(relay, "failed")
        await sign_in(relay.client)
        page = await relay.client.get("/console/callbacks")
        assert f'action="/console/callbacks/{event_id}/redeliver"' in page.text
        assert "s3cret" not in page.text  # the URL's query string is never shown
        overview = await relay.client.get("/console")
        assert re.search(r'<span class="n">1</span> failed callbacks', overview.text)

        path = f"/console/callbacks/{event_id}/redeliver"
        refused = await relay.client.post(path, data={"csrf_token": "0" * 64})
        assert refused.status_code == 403
        assert await event_in(relay, "failed") == event_id  # nothing changed
        token = csrf_token(page.text)
        queued = await relay.client.post(
            path, data={"csrf_token": token, "next": "/console/callbacks"}
        )
        assert queued.status_code == 303
        assert queued.headers["location"] == "/console/callbacks"
        assert await event_in(relay, "delivered") == event_id
        again = await relay.client.post(path, data={"csrf_token": token})
        assert again.status_code == 409
        assert "is delivered" in again.text
        missing = await relay.client.post(
            "/console/callbacks/999999/redeliver", data={"csrf_token": token}
        )
        assert missing.status_code == 404
