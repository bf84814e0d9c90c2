"""The DN hook over ASGI: input forms, validation, token, allow-list,
and the last-DN-final rule for DNs arriving one after another."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.notifications.inbound import BadDN, urlencoded_fields
from tests.conftest import DN_TOKEN, Relay, relay_settings
from tests.notifications.helpers import add_message, dns, message, record_refs

HOOK = f"/dn/{DN_TOKEN}"
DN = {"msgid": "ref-1", "status": "UNDELIVERED", "error-code": "0", "msisdn": "60123240066"}


def _send_kwargs(form: str, fields: dict[str, str]) -> dict[str, object]:
    if form == "get-query":
        return {"method": "GET", "params": fields}
    if form == "post-urlencoded":
        return {"method": "POST", "data": fields}
    if form == "post-multipart":
        return {"method": "POST", "files": {k: (None, v) for k, v in fields.items()}}
    if form == "post-json":
        return {"method": "POST", "json": fields}
    if form == "post-query":  # a POST with the fields in the query string and no body
        return {"method": "POST", "params": fields}
    raise AssertionError(form)


async def _dn(client: httpx.AsyncClient, form: str, fields: dict[str, str]) -> httpx.Response:
    kwargs = _send_kwargs(form, fields)
    method = kwargs.pop("method")
    return await client.request(str(method), HOOK, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "form", ["get-query", "post-urlencoded", "post-multipart", "post-json", "post-query"]
)
async def test_each_input_form_is_stored_with_normalised_code(
    relay: Relay, engine: AsyncEngine, form: str
) -> None:
    response = await _dn(relay.client, form, DN)

    assert response.status_code == 200, response.text
    assert response.text == "OK"
    [row] = await dns(engine)
    assert row["msgid"] == "ref-1"
    assert row["status"] == "UNDELIVERED"
    assert row["error_code"] == "000"  # "0" and "000" are one code
    assert row["error_description"] is not None
    assert row["msisdn"] == "60123240066"
    assert row["message_id"] is None
    assert json.loads(row["raw"]) == DN
    assert row["received_at"].tzinfo is not None


async def test_error_code_underscore_alias_and_json_numbers(
    relay: Relay, engine: AsyncEngine
) -> None:
    r1 = await relay.client.post(
        HOOK, data={"msgid": "a", "status": "UNDELIVERED", "error_code": "501"}
    )
    r2 = await relay.client.post(HOOK, json={"msgid": "b", "status": "DELIVERED", "error-code": 0})

    assert (r1.status_code, r2.status_code) == (200, 200)
    first, second = await dns(engine)
    assert (first["error_code"], second["error_code"]) == ("501", "000")
    assert first["error_description"] != "Unrecognised error code"


async def test_unlisted_error_code_is_unrecognised(relay: Relay, engine: AsyncEngine) -> None:
    response = await relay.client.get(
        HOOK, params={"msgid": "a", "status": "UNDELIVERED", "error-code": "999"}
    )

    assert response.status_code == 200
    [row] = await dns(engine)
    assert (row["error_code"], row["error_description"]) == ("999", "Unrecognised error code")


async def test_body_fields_win_over_query_fields(relay: Relay, engine: AsyncEngine) -> None:
    response = await relay.client.post(
        HOOK, params={"msgid": "from-query", "status": "DELIVERED"}, data={"msgid": "from-body"}
    )

    assert response.status_code == 200
    [row] = await dns(engine)
    assert (row["msgid"], row["status"]) == ("from-body", "DELIVERED")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"status": "DELIVERED"}, "msgid"),
        ({"msgid": "x"}, "status"),
        ({"msgid": "  ", "status": "DELIVERED"}, "msgid"),
        ({"msisdn": "60123240066"}, "msgid, status"),
    ],
)
@pytest.mark.parametrize("form", ["get-query", "post-urlencoded", "post-json"])
async def test_missing_required_field_is_400_naming_it(
    relay: Relay, engine: AsyncEngine, fields: dict[str, str], named: str, form: str
) -> None:
    response = await _dn(relay.client, form, fields)

    assert response.status_code == 400
    assert response.json() == {
        "error": "missing_field",
        "detail": f"missing required field: {named}",
    }
    assert await dns(engine) == []


@pytest.mark.parametrize(
    ("kwargs", "status", "detail_has"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "object"),
        ({"json": {"msgid": {"a": 1}, "status": "DELIVERED"}}, 400, "msgid"),
        ({"json": {"msgid": "x", "status": True}}, 400, "status"),
        ({"json": {"msgid": "x" * 129, "status": "DELIVERED"}}, 400, "msgid"),
        ({"json": {"msgid": "x\u0000", "status": "DELIVERED"}}, 400, "msgid"),
        (
            {"data": {"msgid": "x", "status": "DELIVERED", "error-code": "9" * 40}},
            400,
            "error-code",
        ),
        (
            {"content": b"msgid=x&status=D", "headers": {"content-type": "text/csv"}},
            415,
            "text/csv",
        ),
        (
            {
                "content": b"--zz\r\nbroken",
                "headers": {"content-type": "multipart/form-data; boundary=zz"},
            },
            400,
            "msgid",  # a truncated multipart body yields no fields
        ),
        (
            {"files": {"msgid": ("f.txt", b"x"), "status": (None, "DELIVERED")}},
            400,
            "multipart",
        ),
        (
            {
                "content": b"msgid=x&status=D&pad=" + b"a" * 17_000,
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            413,
            "16384",
        ),
    ],
)
async def test_malformed_or_oversized_bodies_are_4xx(
    relay: Relay, engine: AsyncEngine, kwargs: dict[str, object], status: int, detail_has: str
) -> None:
    response = await relay.client.post(HOOK, **kwargs)  # type: ignore[arg-type]

    assert response.status_code == status, response.text
    assert detail_has in response.json()["detail"]
    assert await dns(engine) == []


async def test_oversized_chunked_body_is_413(relay: Relay, engine: AsyncEngine) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"msgid=x&status=DELIVERED&pad="
        for _ in range(40):
            yield b"a" * 1024

    response = await relay.client.post(
        HOOK, content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )

    assert response.status_code == 413
    assert await dns(engine) == []


async def test_wrong_token_is_404_identical_to_unknown_path(
    relay: Relay, engine: AsyncEngine
) -> None:
    wrong = await relay.client.post("/dn/not-the-token", data=DN)
    wrong_get = await relay.client.get("/dn/" + DN_TOKEN[:-1], params=DN)
    unknown = await relay.client.post("/no/such/path", data=DN)

    def shape(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
        headers = sorted((k, v) for k, v in r.headers.items() if k != "x-request-id")
        return r.status_code, r.content, headers

    assert shape(wrong) == shape(unknown) == shape(wrong_get)
    assert wrong.status_code == 404
    assert await dns(engine) == []


@pytest.fixture
async def allow_listed(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A relay accepting DNs from 203.0.113.0/24 only; the test picks the client address."""
    settings = relay_settings(
        db_url, "http://127.0.0.1:9", dn_allowed_cidrs="203.0.113.0/24, 2001:db8::/32"
    )
    async with LifespanManager(create_app(settings)) as manager:
        yield manager.app  # type: ignore[misc]


@pytest.mark.parametrize(
    ("client_host", "expected"),
    [
        ("203.0.113.7", 200),
        ("::ffff:203.0.113.7", 200),  # IPv4-mapped IPv6 matches the IPv4 network
        ("2001:db8::5", 200),
        ("198.51.100.1", 403),
        ("::ffff:198.51.100.1", 403),
        ("not-an-address", 403),
    ],
)
async def test_allow_list_reads_the_client_address(
    allow_listed: object, engine: AsyncEngine, client_host: str, expected: int
) -> None:
    transport = httpx.ASGITransport(app=allow_listed, client=(client_host, 40000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        response = await client.get(HOOK, params=DN)
        wrong_token = await client.get("/dn/nope", params=DN)

    assert response.status_code == expected
    assert wrong_token.status_code == 404  # the token is checked first: a 403 reveals nothing
    assert len(await dns(engine)) == (1 if expected == 200 else 0)


async def test_last_dn_received_is_final_out_of_order_and_duplicates(
    relay: Relay, engine: AsyncEngine
) -> None:
    message_id = await add_message(engine, "ref-42")
    sent = [
        {"msgid": "ref-42", "status": "DELIVERED", "error-code": "000"},
        {"msgid": "ref-42", "status": "DELIVERED", "error-code": "000"},  # duplicate
        {"msgid": "ref-42", "status": "UNDELIVERED", "error-code": "501"},  # out of order
    ]
    for fields in sent:
        assert (await relay.client.post(HOOK, data=fields)).status_code == 200

    stored = await dns(engine, "ref-42")
    assert [d["status"] for d in stored] == ["DELIVERED", "DELIVERED", "UNDELIVERED"]
    assert all(d["message_id"] == message_id for d in stored)
    ids = [d["id"] for d in stored]
    assert ids == sorted(ids) and len(set(ids)) == 3
    msg = await message(engine, message_id)
    assert msg["status"] == "undelivered"
    assert (msg["delivery_status"], msg["error_code"]) == ("UNDELIVERED", "501")
    assert msg["dn_count"] == 3
    assert msg["last_dn_seq"] == ids[-1]
    assert msg["final_at"] == stored[-1]["received_at"]


async def test_unknown_status_is_kept_raw_and_not_final(relay: Relay, engine: AsyncEngine) -> None:
    message_id = await add_message(engine, "ref-7")
    await relay.client.get(HOOK, params={"msgid": "ref-7", "status": "DELIVERED"})
    response = await relay.client.get(HOOK, params={"msgid": "ref-7", "status": "EXPIRED"})

    assert response.status_code == 200
    msg = await message(engine, message_id)
    assert msg["delivery_status"] == "EXPIRED"
    assert msg["status"] == "pending"
    assert msg["final_at"] is None
    assert msg["dn_count"] == 2


async def test_dn_before_message_is_attached_when_the_ref_is_recorded(
    relay: Relay, engine: AsyncEngine, db_url: str
) -> None:
    """Sequential form: the DN is stored unmatched, the send path attaches it."""
    response = await relay.client.post(
        HOOK, json={"msgid": "early", "status": "UNDELIVERED", "error-code": "502"}
    )
    assert response.status_code == 200
    [row] = await dns(engine, "early")
    assert row["message_id"] is None

    message_id = await add_message(engine, None)
    await record_refs(db_url, {message_id: "early"})

    msg = await message(engine, message_id)
    assert (msg["status"], msg["error_code"], msg["dn_count"]) == ("undelivered", "502", 1)
    [row] = await dns(engine, "early")
    assert row["message_id"] == message_id


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"method": "GET", "url": HOOK + "?msgid=%FF&status=DELIVERED"},
        {
            "method": "POST",
            "url": HOOK,
            "content": b"msgid=\xff&status=DELIVERED",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
    ],
)
async def test_invalid_utf8_is_400_not_stored_as_mojibake(
    relay: Relay, engine: AsyncEngine, request_kwargs: dict[str, object]
) -> None:
    response = await relay.client.request(**request_kwargs)  # type: ignore[arg-type]

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_encoding"
    assert await dns(engine) == []


async def test_other_methods_are_405_and_the_hook_is_documented(relay: Relay) -> None:
    put = await relay.client.put(HOOK, data=DN)
    schema = (await relay.client.get("/openapi.json")).json()

    assert put.status_code == 405
    assert set(put.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert {"get", "post"} <= set(schema["paths"]["/dn/{token}"])


@given(st.text(alphabet="ab=&%+2F0é", max_size=30))
def test_query_fast_path_reads_what_parse_qsl_reads(query: str) -> None:
    try:
        expected: object = dict(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        expected = "invalid_encoding"
    try:
        got: object = urlencoded_fields(query.encode(), "query string")
    except BadDN as exc:
        got = exc.code

    assert got == expected
