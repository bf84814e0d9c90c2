"""`bulk360-relay callback-receiver`: a status-callback receiver for the sandbox tour.

Verifies each callback's Standard Webhooks signature with the relay's secrets and prints one
line per event; answers 204 when the signature holds, 401 when it does not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from app.callbacks.signing import secret_key, verify


def receiver_app(secrets: Sequence[str], out: list[str] | None = None) -> web.Application:
    keys = [secret_key(s) for s in secrets]

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = verify(keys, headers, body, time.time())
        msg_id = headers.get("webhook-id", "?")
        try:
            event = orjson.loads(body)
            data = event["data"]
            line = (
                f"{msg_id} {'verified' if verified else 'SIGNATURE FAILED'} {event['type']} "
                f"v{data['version']} message {data['id']} ref={data['ref']} "
                f"status={data['status']} delivery_status={data['delivery_status']} "
                f"error_code={data['error_code']} ({data['error_category']})"
            )
        except (ValueError, KeyError, TypeError):
            line = f"{msg_id} unreadable body ({len(body)} bytes)"
        print(line, flush=True)
        if out is not None:
            out.append(line)
        return web.Response(status=204 if verified else 401)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    return app


def run(host: str, port: int, secrets: Sequence[str]) -> None:
    print(f"listening on http://{host}:{port}/ (send callback_url there)", flush=True)
    web.run_app(receiver_app(secrets), host=host, port=port, print=None, access_log=None)
