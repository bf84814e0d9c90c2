"""Lookup by ref/id and the filtered, keyset-paginated list (CONTRACT §4.2).

Messages and DNs are inserted straight into the tables, so these tests pin the lookup alone.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import DeliveryNotification, Message
from app.pagination import decode_cursor, encode_cursor
from tests.conftest import Relay

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def add_messages(engine: AsyncEngine, *rows: dict[str, Any]) -> list[int]:
    """Insert messages (defaults filled in); returns their ids in order."""
    ids = []
    async with engine.begin() as conn:
        for row in rows:
            values: dict[str, Any] = {
                "send_id": str(uuid.uuid4()),
                "api_key_name": "tester",
                "channel": "sms",
                "msisdn": "60123240066",
                "status": "pending",
                "created_at": T0,
                "updated_at": T0,
                **row,
            }
            result = await conn.execute(insert(Message).values(**values).returning(Message.id))
            ids.append(result.scalar_one())
    return ids


async def add_dn(engine: AsyncEngine, **row: Any) -> int:
    values = {"status": "DELIVERED", "raw": "{}", "received_at": T0, **row}
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(DeliveryNotification).values(**values).returning(DeliveryNotification.id)
        )
        return int(result.scalar_one())


async def list_ids(client: httpx.AsyncClient, **params: Any) -> list[int]:
    response = await client.get("/v1/messages", params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# ---- one message --------------------------------------------------------------------------


async def test_get_by_ref_returns_every_contract_field_and_dns_in_receipt_order(
    relay: Relay, engine: AsyncEngine
) -> None:
    (mid,) = await add_messages(
        engine,
        {
            "ref": "REF-ABC",
            "msisdn": "60123240066",
            "channel": "whatsapp",
            "sender": "AEONSales",
            "client_ref": "otp-1",
            "status": "undelivered",
            "submit_code": 200,
            "submit_desc": "Success",
            "delivery_status": "UNDELIVERED",
            "error_code": "501",
            "error_description": "Absent subscriber",
            "rate": "0.1100",
            "currency": "MYR",
            "encoding": "gsm7",
            "segments": 1,
            "dn_count": 2,
            "submitted_at": T0 + timedelta(seconds=1),
            "final_at": T0 + timedelta(seconds=9),
        },
    )
    # Receipt order is the sequence, not the clock: the second DN carries an earlier time.
    first = await add_dn(
        engine,
        msgid="REF-ABC",
        message_id=mid,
        status="DELIVERED",
        error_code="000",
        error_description="Delivered",
        msisdn="60123240066",
        received_at=T0 + timedelta(seconds=9),
    )
    second = await add_dn(
        engine,
        msgid="REF-ABC",
        message_id=mid,
        status="UNDELIVERED",
        error_code="501",
        error_description="Absent subscriber",
        msisdn="60123240066",
        received_at=T0 + timedelta(seconds=5),
    )
    await add_dn(engine, msgid="OTHER", status="DELIVERED")  # unmatched: not listed

    response = await relay.client.get("/v1/messages/REF-ABC")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": mid,
        "to": "60123240066",
        "channel": "whatsapp",
        "from": "AEONSales",
        "client_ref": "otp-1",
        "api_key_name": "tester",
        "status": "undelivered",
        "code": 200,
        "desc": "Success",
        "delivery_status": "UNDELIVERED",
        "error_code": "501",
        "error_description": "Absent subscriber",
        "error_category": "temporary",
        "rate": "0.1100",
        "currency": "MYR",
        "encoding": "gsm7",
        "segments": 1,
        "ref": "REF-ABC",
        "submitted_at": "2026-11-24T12:00:01Z",
        "final_at": "2026-11-24T12:00:09Z",
        "dn_count": 2,
        "created_at": "2026-11-24T12:00:00Z",
        "notifications": [
            {
                "id": first,
                "seq": first,
                "msgid": "REF-ABC",
                "status": "DELIVERED",
                "error_code": "000",
                "error_description": "Delivered",
                "error_category": "none",
                "msisdn": "60123240066",
                "received_at": "2026-11-24T12:00:09Z",
                "message_id": mid,
            },
            {
                "id": second,
                "seq": second,
                "msgid": "REF-ABC",
                "status": "UNDELIVERED",
                "error_code": "501",
                "error_description": "Absent subscriber",
                "error_category": "temporary",
                "msisdn": "60123240066",
                "received_at": "2026-11-24T12:00:05Z",
                "message_id": mid,
            },
        ],
        "callbacks": [],  # no callback_url: no events
    }


async def test_timestamps_are_utc_with_an_offset(relay: Relay, engine: AsyncEngine) -> None:
    kl = datetime(2026, 11, 24, 20, 0, 0, 123456, tzinfo=UTC).astimezone(
        ZoneInfo("Asia/Kuala_Lumpur")
    )
    await add_messages(engine, {"ref": "TZ", "created_at": kl})

    body = (await relay.client.get("/v1/messages/TZ")).json()

    assert datetime.fromisoformat(body["created_at"]) == kl
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert body["notifications"] == []
    assert body["submitted_at"] is None


async def test_get_by_numeric_id_when_no_ref_matches(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(engine, {"ref": None, "status": "unknown"}, {"ref": "X1"})

    response = await relay.client.get(f"/v1/messages/{ids[0]}")

    assert response.status_code == 200
    assert response.json()["id"] == ids[0]
    assert response.json()["ref"] is None


async def test_a_digit_ref_wins_over_an_id(relay: Relay, engine: AsyncEngine) -> None:
    first, _second = await add_messages(engine, {"ref": "A"}, {"ref": "B"})
    # A third message whose provider ref happens to be the first message's id.
    (third,) = await add_messages(engine, {"ref": str(first)})

    body = (await relay.client.get(f"/v1/messages/{first}")).json()

    assert body["id"] == third


@pytest.mark.parametrize("ref", ["NOPE", "999999", "12345678901234567890123"])
async def test_unknown_ref_or_id_is_404_in_the_error_shape(relay: Relay, ref: str) -> None:
    response = await relay.client.get(f"/v1/messages/{ref}")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert ref in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/ANY"])
async def test_lookups_need_an_api_key(relay: Relay, path: str) -> None:
    missing = await relay.client.get(path, headers={"Authorization": ""})
    wrong = await relay.client.get(path, headers={"Authorization": "Bearer nope"})

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


async def test_lookups_are_not_scoped_to_the_callers_key(relay: Relay, engine: AsyncEngine) -> None:
    await add_messages(engine, {"ref": "THEIRS", "api_key_name": "other"})

    response = await relay.client.get("/v1/messages/THEIRS")

    assert response.status_code == 200
    assert response.json()["api_key_name"] == "other"


# ---- filters -----------------------------------------------------------------------------


async def test_filter_by_to_reads_the_number_like_a_send(relay: Relay, engine: AsyncEngine) -> None:
    mine, _other = await add_messages(engine, {"msisdn": "60123240066"}, {"msisdn": "60166600267"})

    for spelling in ("60123240066", "+60 12-324 0066", "+60123240066"):
        assert await list_ids(relay.client, to=spelling) == [mine], spelling


async def test_filter_by_whatsapp_prefixed_to_keeps_whatsapp_only(
    relay: Relay, engine: AsyncEngine
) -> None:
    _sms, wa = await add_messages(
        engine, {"msisdn": "60123240066"}, {"msisdn": "60123240066", "channel": "whatsapp"}
    )

    assert await list_ids(relay.client, to="whatsapp:60123240066") == [wa]
    contradiction = await relay.client.get(
        "/v1/messages", params={"to": "whatsapp:60123240066", "channel": "sms"}
    )
    assert contradiction.status_code == 422


async def test_filter_by_to_refuses_what_is_not_a_number(relay: Relay) -> None:
    response = await relay.client.get("/v1/messages", params={"to": "call-me"})

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "to" in response.json()["detail"] and "call-me" in response.json()["detail"]


async def test_filter_by_status(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(
        engine,
        *({"status": s} for s in ("pending", "delivered", "undelivered", "rejected", "unknown")),
    )

    for status, mid in zip(
        ("pending", "delivered", "undelivered", "rejected", "unknown"), ids, strict=True
    ):
        assert await list_ids(relay.client, status=status) == [mid], status


async def test_unknown_status_filter_is_422_naming_it(relay: Relay) -> None:
    response = await relay.client.get("/v1/messages", params={"status": "sent"})

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "status" in response.json()["detail"] and "sent" in response.json()["detail"]


async def test_filter_by_client_ref_and_channel(relay: Relay, engine: AsyncEngine) -> None:
    a, _b, c = await add_messages(
        engine,
        {"client_ref": "order-1"},
        {"client_ref": "order-2"},
        {"client_ref": "order-1", "channel": "whatsapp"},
    )

    assert await list_ids(relay.client, client_ref="order-1") == [c, a]
    assert await list_ids(relay.client, client_ref="order-1", channel="sms") == [a]
    assert await list_ids(relay.client, channel="whatsapp") == [c]


async def test_since_is_inclusive_and_until_exclusive(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(engine, *({"created_at": T0 + timedelta(minutes=m)} for m in range(5)))

    got = await list_ids(
        relay.client,
        since=(T0 + timedelta(minutes=1)).isoformat(),
        until=(T0 + timedelta(minutes=3)).isoformat(),
    )
    # The same instant spelled in Malaysian time selects the same rows.
    got_kl = await list_ids(
        relay.client, since="2026-11-24T20:01:00+08:00", until="2026-11-24T20:03:00+08:00"
    )

    assert got == got_kl == [ids[2], ids[1]]


@pytest.mark.parametrize("field", ["since", "until"])
async def test_a_time_without_offset_is_422(relay: Relay, field: str) -> None:
    response = await relay.client.get("/v1/messages", params={field: "2026-11-24T12:00:00"})

    assert response.status_code == 422
    assert field in response.json()["detail"]


async def test_filters_combine(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(
        engine,
        {"status": "delivered", "msisdn": "60123240066", "created_at": T0},
        {"status": "delivered", "msisdn": "60166600267", "created_at": T0},
        {"status": "pending", "msisdn": "60123240066", "created_at": T0},
        {"status": "delivered", "msisdn": "60123240066", "created_at": T0 - timedelta(days=1)},
    )

    got = await list_ids(relay.client, to="60123240066", status="delivered", since=T0.isoformat())

    assert got == [ids[0]]


# ---- pagination --------------------------------------------------------------------------


async def test_newest_first_with_ties_broken_by_id(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(
        engine,
        {"created_at": T0},
        {"created_at": T0 + timedelta(seconds=1)},
        {"created_at": T0},
    )

    assert await list_ids(relay.client) == [ids[1], ids[2], ids[0]]


async def test_paging_with_inserts_in_between_neither_skips_nor_repeats(
    relay: Relay, engine: AsyncEngine
) -> None:
    # 130 rows, many sharing a created_at, so the id tie-break matters at page edges.
    original = await add_messages(
        engine, *({"created_at": T0 + timedelta(seconds=i // 4)} for i in range(130))
    )
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 40}
        if cursor:
            params["cursor"] = cursor
        body = (await relay.client.get("/v1/messages", params=params)).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        # Between pages: a newer row (as a live system adds) and one at the page's edge time.
        edge = body["items"][-1]["created_at"] if body["items"] else T0.isoformat()
        await add_messages(
            engine,
            {"created_at": T0 + timedelta(hours=1)},
            {"created_at": datetime.fromisoformat(edge)},
        )
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert pages == 4
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert set(original) <= set(seen), "a row was skipped"
    assert seen[:40] == original[::-1][:40]


async def test_last_page_has_no_cursor_even_when_exactly_full(
    relay: Relay, engine: AsyncEngine
) -> None:
    await add_messages(engine, *({} for _ in range(4)))

    full = (await relay.client.get("/v1/messages", params={"limit": 4})).json()
    split = (await relay.client.get("/v1/messages", params={"limit": 3})).json()
    rest = (
        await relay.client.get("/v1/messages", params={"limit": 3, "cursor": split["next_cursor"]})
    ).json()

    assert len(full["items"]) == 4 and full["next_cursor"] is None
    assert len(split["items"]) == 3 and split["next_cursor"] is not None
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None


async def test_empty_list(relay: Relay) -> None:
    response = await relay.client.get("/v1/messages")

    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_cursor_keeps_its_filters_position(relay: Relay, engine: AsyncEngine) -> None:
    ids = await add_messages(
        engine,
        *(
            {"status": "delivered" if i % 2 else "pending", "created_at": T0 + timedelta(seconds=i)}
            for i in range(10)
        ),
    )
    delivered = [i for n, i in enumerate(ids) if n % 2][::-1]

    first = (
        await relay.client.get("/v1/messages", params={"status": "delivered", "limit": 2})
    ).json()
    second = (
        await relay.client.get(
            "/v1/messages",
            params={"status": "delivered", "limit": 10, "cursor": first["next_cursor"]},
        )
    ).json()

    assert [i["id"] for i in first["items"] + second["items"]] == delivered


@pytest.mark.parametrize("limit", ["501", "0", "-1", "ten"])
async def test_limit_outside_1_to_500_is_422_never_clamped(relay: Relay, limit: str) -> None:
    response = await relay.client.get("/v1/messages", params={"limit": limit})

    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "limit" in response.json()["detail"]


async def test_limit_500_is_accepted(relay: Relay) -> None:
    assert (await relay.client.get("/v1/messages", params={"limit": 500})).status_code == 200


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        _b64(b"v1.abc.1"),
        _b64(b"v2.1.1"),
        _b64(b"v1.1.-1"),
        _b64(b"v1.99999999999999999999.1"),
        _b64(b"v1.1.99999999999999999999"),
        _b64(b"v1.1.1") + "=",
        _b64("v1.1.1\u00e9".encode()),
        encode_cursor(T0, 7)[:-2],
        "A" * 200,
    ],
)
async def test_forged_or_garbled_cursor_is_400(relay: Relay, cursor: str) -> None:
    response = await relay.client.get("/v1/messages", params={"cursor": cursor})

    assert response.status_code in (400, 422), response.text  # 422 only for the over-long one
    assert response.json()["error"] in ("invalid_cursor", "validation_error")
    if len(cursor) <= 64:
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_cursor"


def test_cursor_round_trips_microseconds_and_offsets() -> None:
    at = datetime(2026, 11, 24, 20, 0, 0, 123456, tzinfo=UTC)

    decoded = decode_cursor(encode_cursor(at.astimezone(ZoneInfo("Asia/Tokyo")), 42))

    assert decoded.at == at and decoded.id == 42


@pytest.mark.parametrize("value", ["15", "1732406400", "-3", "1.5"])
async def test_a_bare_number_is_not_read_as_a_unix_time(relay: Relay, value: str) -> None:
    for field in ("since", "until"):
        r = await relay.client.get("/v1/messages", params={field: value})
        assert r.status_code == 422
        assert r.json()["error"] == "validation_error"
        assert field in r.json()["detail"] and "ISO 8601" in r.json()["detail"]
