"""Hostile input, case by case: every answer a clear 4xx in the error shape (never a 500),
nothing stored or sent for a refused request, and the tables intact.

The fuzz (test_fuzz.py) covers what schemathesis generates from the OpenAPI document; these
are the cases it would find only by luck: sizes past the limits, bytes that are not UTF-8,
characters a database cannot store, SQL in filters, absurd numbers and forged cursors.

Lists of cases run in one test each (one relay start) and report every case that failed.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.simulator import Simulator
from app.main import create_app
from app.models import DeliveryNotification, Message
from tests.conftest import DN_TOKEN, Relay, relay_settings
from tests.notifications.helpers import add_message, dns
from tests.servers import serve_in_loop

HOOK = f"/dn/{DN_TOKEN}"
SEND = "/v1/messages"
MIB = 1_048_576
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, status: int, *mentions: str) -> dict[str, Any]:
    """`status` with the contract's error shape, its detail naming each of `mentions`."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    for word in mentions:
        assert word in body["detail"], (word, body)
    return body


class Cases:
    """Runs `assert_error` on each case and reports all the failures together."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def error(self, label: str, response: httpx.Response, status: int, *mentions: str) -> None:
        try:
            assert_error(response, status, *mentions)
        except AssertionError as exc:
            self.failures.append(f"{label}: {exc}")

    def check(self) -> None:
        assert not self.failures, "\n".join(self.failures)


async def count(engine: AsyncEngine, model: type[Message] | type[DeliveryNotification]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def assert_nothing_stored_or_sent(engine: AsyncEngine, simulator: Simulator) -> None:
    assert await count(engine, Message) == 0
    assert await count(engine, DeliveryNotification) == 0
    assert simulator.mt_requests == 0


# -- sizes ---------------------------------------------------------------------------------


def _big_send() -> bytes:
    return b'{"to": "60123240066", "text": "' + b"a" * (MIB + 10) + b'"}'


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_over_1_mib_is_413_in_the_error_shape(
    relay: Relay, engine: AsyncEngine, simulator: Simulator, framing: str
) -> None:
    body = _big_send()
    content: bytes | AsyncIterator[bytes] = body if framing == "content-length" else _chunks(body)

    response = await relay.client.post(SEND, content=content, headers=JSON)

    assert_error(response, 413)
    assert response.headers["x-request-id"]
    await assert_nothing_stored_or_sent(engine, simulator)


async def test_dn_body_over_1_mib_is_413_in_the_error_shape(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    body = b"status=DELIVERED&msgid=" + b"a" * 2 * MIB

    response = await relay.client.post(HOOK, content=body, headers=FORM)

    assert_error(response, 413)
    await assert_nothing_stored_or_sent(engine, simulator)


async def test_oversized_headers_are_431_in_the_error_shape(relay: Relay) -> None:
    cases = Cases()
    for label, headers in {
        "one 64 KiB header": {"x-padding": "a" * 64 * 1024},
        "2,000 headers": {f"x-h{i}": "v" for i in range(2_000)},
        "a 64 KiB API key": {"authorization": "Bearer " + "k" * 64 * 1024},
    }.items():
        cases.error(label, await relay.client.get("/v1/messages", headers=headers), 431)
    cases.check()


async def test_oversized_headers_over_a_real_socket_are_refused_and_the_server_serves_on(
    db_url: str, simulator: Simulator
) -> None:
    # uvicorn's default parser (httptools) buffers headers of any size: the app must refuse.
    app = create_app(relay_settings(db_url, simulator.base_url))
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as client:
        big = await client.get("/healthz", headers={"x-padding": "a" * 1024 * 1024})
        many = await client.get("/healthz", headers={f"x-h{i}": "v" for i in range(5_000)})
        after = await client.get("/healthz")

    assert_error(big, 431)
    assert_error(many, 431)
    assert after.status_code == 200


async def test_long_header_values_are_refused_by_name_or_not_echoed(relay: Relay) -> None:
    key = await relay.client.post(
        SEND,
        json={"to": "60123240066", "text": "x"},
        headers={"Idempotency-Key": "k" * 256},
    )
    request_id = await relay.client.get("/healthz", headers={"x-request-id": "r" * 8 * 1024})

    assert_error(key, 422, "Idempotency-Key")
    assert len(request_id.headers["x-request-id"]) <= 128  # a fresh id, not the caller's 8 KiB


@pytest.mark.parametrize("shape", ["list", "comma-string"])
async def test_1001_recipients_is_422_naming_to_and_nothing_is_sent(
    relay: Relay, engine: AsyncEngine, simulator: Simulator, shape: str
) -> None:
    numbers = [f"6012{n:07d}" for n in range(1_001)]
    to: str | list[str] = numbers if shape == "list" else ",".join(numbers)

    response = await relay.client.post(SEND, json={"to": to, "text": "hello"})

    assert_error(response, 422, "to", "1000")
    await assert_nothing_stored_or_sent(engine, simulator)


# -- bytes and characters ------------------------------------------------------------------


async def test_json_body_that_is_not_utf8_is_400_and_nothing_is_sent(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    body = b'{"to": "60123240066", "text": "caf\xe9 \xff\xfe"}'

    response = await relay.client.post(SEND, content=body, headers=JSON)

    assert_error(response, 400)
    await assert_nothing_stored_or_sent(engine, simulator)


async def test_malformed_json_is_422_saying_where(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    cases = Cases()
    for body in (b'{"to": "60123240066", "text": ', b"{not json", b"[1, 2"):
        response = await relay.client.post(SEND, content=body, headers=JSON)
        cases.error(repr(body), response, 422, "body", "JSON")
    empty = await relay.client.post(SEND, content=b"", headers=JSON)
    cases.error("empty body", empty, 422, "body", "required")
    cases.check()
    await assert_nothing_stored_or_sent(engine, simulator)


async def test_characters_no_database_or_provider_takes_are_422_naming_the_field(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    # Valid JSON escapes, but no UTF-8 text holds a lone surrogate, and Postgres refuses NUL.
    cases = Cases()
    for body, field in [
        (rb'{"to": "60123240066", "text": "hi \ud800"}', "text"),
        (rb'{"to": "60123240066", "text": "hi \u0000"}', "text"),
        (rb'{"to": "60123240066", "text": "hi", "client_ref": "\udfff"}', "client_ref"),
        (rb'{"to": "60123240066", "text": "hi", "client_ref": "a\u0000b"}', "client_ref"),
    ]:
        response = await relay.client.post(SEND, content=body, headers=JSON)
        cases.error(body.decode(), response, 422, field)
    cases.check()
    await assert_nothing_stored_or_sent(engine, simulator)


async def test_dn_form_json_or_query_that_is_not_utf8_is_400_and_not_stored(
    relay: Relay, engine: AsyncEngine
) -> None:
    cases = Cases()
    for label, kwargs in {
        "raw form": {"content": b"status=DELIVERED&msgid=ab\xff\xfe", "headers": FORM},
        "percent-encoded form": {"content": b"status=DELIVERED&msgid=ab%FF%FE", "headers": FORM},
        "invalid sequence": {"content": b"status=DELIVERED&msgid=%C3%28", "headers": FORM},
        "json": {"content": b'{"status": "DELIVERED", "msgid": "ab\xff\xfe"}', "headers": JSON},
        "query": {"params": {"status": "DELIVERED"}, "content": b"", "headers": FORM},
    }.items():
        path = HOOK + ("?msgid=ab%FF%FE" if label == "query" else "")
        cases.error(label, await relay.client.post(path, **kwargs), 400)
    response = await relay.client.get(HOOK + "?status=D&msgid=ab%FF%FE")
    cases.error("GET query", response, 400, "UTF-8")
    cases.check()
    assert await dns(engine) == []


# -- filters, limits, cursors --------------------------------------------------------------


@pytest.fixture
async def seeded(relay: Relay, engine: AsyncEngine) -> dict[str, int]:
    """Two messages and two DNs, so every list has a second page."""
    for ref in ("ref-a", "ref-b"):
        await add_message(engine, ref)
        response = await relay.client.post(HOOK, data={"msgid": ref, "status": "DELIVERED"})
        assert response.status_code == 200
    return {
        "messages": await count(engine, Message),
        "dns": await count(engine, DeliveryNotification),
    }


async def test_sql_looking_values_match_nothing_and_leave_the_tables_intact(
    relay: Relay, engine: AsyncEngine, seeded: dict[str, int]
) -> None:
    cases = Cases()
    for path, params, expected in [
        ("/v1/messages", {"to": "' OR 1=1--"}, 422),
        ("/v1/messages", {"client_ref": "x'; DROP TABLE messages;--"}, 200),
        ("/v1/messages", {"client_ref": "' OR '1'='1"}, 200),
        ("/v1/messages", {"status": "pending' OR 1=1--"}, 422),
        ("/v1/messages", {"channel": "sms'--"}, 422),
        ("/v1/messages", {"since": "2026-01-01' OR 1=1--"}, 422),
        ("/v1/messages/' OR 1=1--", {}, 404),
        ("/v1/messages/1 OR 1=1", {}, 404),
        ("/v1/messages/1; DROP TABLE messages", {}, 404),
        ("/v1/delivery-notifications", {"msgid": "'; DROP TABLE delivery_notifications;--"}, 200),
    ]:
        response = await relay.client.get(path, params=params)
        label = f"{path} {params}"
        if expected != 200:
            cases.error(label, response, expected)
        elif (response.status_code, response.json()) != (200, {"items": [], "next_cursor": None}):
            cases.failures.append(f"{label}: {response.status_code} {response.text[:200]}")
    cases.check()
    assert await count(engine, Message) == seeded["messages"]
    assert await count(engine, DeliveryNotification) == seeded["dns"]
    listed = await relay.client.get("/v1/messages")
    assert {m["ref"] for m in listed.json()["items"]} == {"ref-a", "ref-b"}


async def test_nul_in_a_filter_is_422_naming_it_and_in_a_ref_404(relay: Relay) -> None:
    # Postgres cannot even compare a text holding NUL: without a check each is a 500.
    cases = Cases()
    for path, params, field in [
        ("/v1/messages", {"client_ref": "a\x00b"}, "client_ref"),
        ("/v1/messages", {"to": "6012\x003240066"}, "to"),
        ("/v1/delivery-notifications", {"msgid": "a\x00b"}, "msgid"),
    ]:
        cases.error(field, await relay.client.get(path, params=params), 422, field)
    cases.error("ref", await relay.client.get("/v1/messages/a%00b"), 404)
    cases.check()


async def test_enormous_or_invalid_limit_is_422_naming_limit(relay: Relay) -> None:
    cases = Cases()
    for path in ("/v1/messages", "/v1/delivery-notifications"):
        for limit in (str(10**30), "9" * 5000, "-1", "0", "501", "1e3", "ten", ""):
            response = await relay.client.get(path, params={"limit": limit})
            cases.error(f"{path} limit={limit[:40]}", response, 422, "limit")
    cases.check()


async def test_out_of_range_times_are_422_naming_the_field(relay: Relay) -> None:
    cases = Cases()
    for name, value in [
        ("since", "9999-12-31T23:59:59-23:59"),
        ("until", "0001-01-01T00:00:00+23:59"),
        ("since", "99999-01-01T00:00:00Z"),
        ("until", "2026-02-30T00:00:00Z"),
        ("since", "2026-01-01T00:00:00"),  # no offset
    ]:
        response = await relay.client.get("/v1/messages", params={name: value})
        cases.error(f"{name}={value}", response, 422, name)
    cases.check()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FORGED = {
    "random-base64": _b64(os.urandom(24)),
    "base64-of-junk": _b64(b"hello, cursor"),
    "base64-of-sql": _b64(b"v1.0.1 OR 1=1"),
    "message-shape-id-over-bigint": _b64(b"v1.1700000000000000.99999999999999999999"),
    "dn-shape-20-digit-id": _b64(b"dn1:99999999999999999999"),
    "dn-shape-id-over-bigint": _b64(b"dn1:9999999999999999999"),
    "message-shape-19-digit-id-over-bigint": _b64(b"v1.0.9999999999999999999"),
    "not-base64": "!!!***",
    "non-ascii": "cursör",
    "padding-only": "====",
}


async def test_forged_cursors_are_400(relay: Relay, seeded: dict[str, int]) -> None:
    cases = Cases()
    for path in ("/v1/messages", "/v1/delivery-notifications"):
        for label, cursor in FORGED.items():
            response = await relay.client.get(path, params={"cursor": cursor})
            cases.error(f"{path} {label}", response, 400, "cursor")
    cases.check()


async def test_a_cursor_from_one_list_is_400_on_the_other(
    relay: Relay, seeded: dict[str, int]
) -> None:
    dn_page = (await relay.client.get("/v1/delivery-notifications", params={"limit": 1})).json()
    message_page = (await relay.client.get("/v1/messages", params={"limit": 1})).json()
    assert dn_page["next_cursor"] and message_page["next_cursor"]

    on_messages = await relay.client.get("/v1/messages", params={"cursor": dn_page["next_cursor"]})
    on_dns = await relay.client.get(
        "/v1/delivery-notifications", params={"cursor": message_page["next_cursor"]}
    )

    assert_error(on_messages, 400, "cursor")
    assert_error(on_dns, 400, "cursor")


# -- the DN hook's msgid -------------------------------------------------------------------

_HUGE = "m" * 100_000


async def asgi_request(
    relay: Relay, method: str, path: str, query: bytes, body: bytes = b""
) -> httpx.Response:
    """One request straight into the app, for what httpx refuses to send (a 100 KB URL)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"relay.test")],
        "client": ("127.0.0.1", 40000),
        "server": ("relay.test", 80),
        "state": {"relay": relay.state},  # what the lifespan gives every request
    }
    sent = False
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))

    await relay.app(scope, receive, send)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    return httpx.Response(start["status"], headers=headers, content=b"".join(chunks))


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("POST", {"data": {"msgid": _HUGE, "status": "DELIVERED"}}),
        ("POST", {"json": {"msgid": _HUGE, "status": "DELIVERED"}}),
        ("POST", {"files": {"msgid": (None, _HUGE.encode()), "status": (None, b"DELIVERED")}}),
    ],
    ids=["post-form", "post-json", "post-multipart"],
)
async def test_dn_with_a_100_kb_msgid_in_the_body_is_413_and_not_stored(
    relay: Relay, engine: AsyncEngine, method: str, kwargs: dict[str, Any]
) -> None:
    response = await relay.client.request(method, HOOK, **kwargs)

    assert_error(response, 413)
    assert await dns(engine) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_dn_with_a_100_kb_msgid_in_the_query_is_413_and_not_stored(
    relay: Relay, engine: AsyncEngine, method: str
) -> None:
    query = b"status=DELIVERED&msgid=" + _HUGE.encode()

    response = await asgi_request(relay, method, HOOK, query)

    assert_error(response, 413)
    assert await dns(engine) == []


async def test_msgid_one_over_the_column_is_400_and_at_the_limit_is_stored_whole(
    relay: Relay, engine: AsyncEngine
) -> None:
    # The column is 128 characters: a longer msgid must be refused, never cut to fit.
    over = await relay.client.post(HOOK, data={"msgid": "x" * 129, "status": "DELIVERED"})
    at = await relay.client.post(HOOK, data={"msgid": "y" * 128, "status": "DELIVERED"})
    wide = await relay.client.post(HOOK, data={"msgid": "é" * 128, "status": "DELIVERED"})

    assert_error(over, 400, "msgid")
    assert at.status_code == 200 and wide.status_code == 200
    assert [row["msgid"] for row in await dns(engine)] == ["y" * 128, "é" * 128]


async def test_concurrent_hostile_requests_leave_the_service_healthy(
    relay: Relay, engine: AsyncEngine
) -> None:
    """A burst of the cases above at once: no 5xx, and the next honest DN is stored."""
    requests = [
        relay.client.post(SEND, content=_big_send(), headers=JSON),
        relay.client.get("/v1/messages", params={"limit": str(10**30)}),
        relay.client.get("/v1/messages", params={"cursor": FORGED["base64-of-junk"]}),
        relay.client.post(HOOK, content=b"status=D&msgid=\xff", headers=FORM),
        relay.client.post(HOOK, data={"msgid": _HUGE, "status": "DELIVERED"}),
        asgi_request(relay, "GET", HOOK, b"status=D&msgid=" + _HUGE.encode()),
    ] * 5
    answers = await asyncio.gather(*requests)

    assert all(400 <= r.status_code < 500 for r in answers), [r.status_code for r in answers]
    honest = await relay.client.post(HOOK, data={"msgid": "after", "status": "DELIVERED"})
    assert honest.status_code == 200
    assert [row["msgid"] for row in await dns(engine)] == ["after"]
