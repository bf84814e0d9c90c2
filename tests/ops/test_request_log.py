"""One log line per request; the DN hook's 200s at DEBUG (stored and counted anyway)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import DN_TOKEN, Relay

HOOK = f"/dn/{DN_TOKEN}"


class Lines(logging.Handler):
    """Request lines as the process writes them (with the root handler's formatter)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.getLogger().handlers[0].formatter)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.format(record))
        if line["event"] == "request":
            self.lines.append(line)


@contextmanager
def request_lines() -> Iterator[list[dict[str, Any]]]:
    handler = Lines()
    logging.getLogger().addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_dn_200s_are_logged_at_debug_and_everything_else_at_info(
    make_relay: Callable[..., AbstractAsyncContextManager[Relay]], level: str
) -> None:
    async with make_relay("http://127.0.0.1:9", log_level=level) as relay:
        with request_lines() as lines:
            stored = await relay.client.get(HOOK, params={"msgid": "m1", "status": "DELIVERED"})
            refused = await relay.client.get(HOOK, params={"status": "DELIVERED"})
            health = await relay.client.get("/healthz", headers={"X-Request-ID": "h-1"})

    assert (stored.status_code, refused.status_code, health.status_code) == (200, 400, 200)
    seen = [(line["route"], line["status"], line["level"]) for line in lines]
    expected = [("/dn/{token}", 400, "info"), ("/healthz", 200, "info")]
    if level == "DEBUG":
        expected.insert(0, ("/dn/{token}", 200, "debug"))
    assert seen == expected
    # Each line carries its request's id, on the hook too (no context variable there).
    assert [line["request_id"] for line in lines][-1] == "h-1"
    assert all(len(line["request_id"]) == 32 for line in lines[:-1])


async def test_a_send_is_one_request_line_with_its_outcome_and_one_line_per_upstream_call(
    relay: Relay, engine: AsyncEngine
) -> None:
    handler = Lines()
    every: list[dict[str, Any]] = []
    handler.emit = lambda record: every.append(json.loads(handler.format(record)))  # type: ignore[method-assign,assignment]
    logging.getLogger().addHandler(handler)
    try:
        r = await relay.client.post(
            "/v1/messages", json={"to": "60123240066,60199990405", "text": "Your code is 918273"}
        )
    finally:
        logging.getLogger().removeHandler(handler)

    assert r.status_code == 201
    # The relay's own lines: the request's, and one per upstream call (the token's, the send's).
    ours = [line for line in every if line["logger"].startswith("app")]
    assert [(line["event"], line.get("endpoint")) for line in ours] == [
        ("bulk360 request", "token"),
        ("bulk360 request", "send"),
        ("request", None),
    ]
    line = ours[-1]
    assert line["route"] == "/v1/messages" and line["status"] == 201
    async with engine.connect() as conn:
        send_ids = (await conn.execute(text("SELECT DISTINCT send_id FROM messages"))).scalars()
        assert list(send_ids) == [line["send_id"]]
    assert (line["recipients"], line["upstream_requests"]) == (2, 1)
    # 60199990405: a number the simulator rejects.
    assert (line["pending"], line["rejected"], line["unknown"]) == (1, 1, 0)
