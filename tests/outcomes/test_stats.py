"""`GET /v1/stats` (CONTRACT §4.6) against a known set of messages: the rollup kept by the
triggers and folded by the sweeper answers exactly what counting the messages would."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from app.bulk360.simulator import Simulator
from tests.conftest import DN_TOKEN, Relay
from tests.reliability import asyncpg_dsn

STATUSES = ("unknown", "pending", "delivered", "undelivered", "rejected", "expired")
# (status, DN error code, submit code, rate): the shapes the send path and DN writer leave.
SHAPES = [
    ("delivered", "000", 200, "0.1100"),
    ("delivered", None, 200, "0.2500"),
    ("undelivered", "501", 200, "0.1100"),
    ("undelivered", "509", 200, "0.1100"),
    ("pending", None, 200, "0.1100"),
    ("pending", "556", 200, "0.1100"),
    ("expired", None, 200, "0.1100"),
    ("rejected", None, 405, None),
    ("unknown", None, None, None),
]
START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


@pytest.fixture
async def relay(make_relay: Callable[..., Any], simulator: Simulator) -> AsyncIterator[Relay]:
    """The relay whose sweeps run only when a test says so, and never expire the seed."""
    async with make_relay(
        simulator.base_url, sweep_interval_s=3600, dn_deadline_h=1_000_000
    ) as relay:
        yield relay


def seed_rows(count: int = 600) -> list[dict[str, Any]]:
    rng = random.Random(15)
    rows = []
    for i in range(count):
        status, code, submit, rate = rng.choice(SHAPES)
        rows.append(
            {
                "ref": None if status in ("rejected", "unknown") else f"ref-{i}",
                "api_key_name": rng.choice(["tester", "billing"]),
                "channel": rng.choice(["sms", "sms", "whatsapp"]),
                "status": status,
                "error_code": code,
                "submit_code": submit,
                "rate": rate,
                "currency": "MYR" if rate else None,
                "created_at": START + timedelta(minutes=rng.randrange(0, 3 * 24 * 60)),
            }
        )
    return rows


async def insert(url: str, rows: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.executemany(
            "INSERT INTO messages (send_id, api_key_name, channel, msisdn, ref, status,"
            " error_code, submit_code, rate, currency, created_at, updated_at)"
            " VALUES ('seed', $1, $2, '60123240066', $3, $4, $5, $6, $7, $8, $9, $9)",
            [
                (
                    r["api_key_name"],
                    r["channel"],
                    r["ref"],
                    r["status"],
                    r["error_code"],
                    r["submit_code"],
                    r["rate"],
                    r["currency"],
                    r["created_at"],
                )
                for r in rows
            ],
        )
    finally:
        await conn.close()


def expected(
    rows: list[dict[str, Any]],
    since: datetime,
    until: datetime,
    origin: datetime,
    stride: timedelta,
) -> dict[str, Any]:
    inside = [r for r in rows if since <= r["created_at"] < until]
    by_status = Counter({s: 0 for s in STATUSES})
    series: dict[datetime, Counter[str]] = {}
    spend = Decimal(0)
    for r in inside:
        by_status[r["status"]] += 1
        start = origin + ((r["created_at"] - origin) // stride) * stride
        series.setdefault(start, Counter())[r["status"]] += 1
        if r["status"] in ("pending", "delivered", "undelivered", "expired") and r["rate"]:
            spend += Decimal(r["rate"])
    return {"total": len(inside), "by_status": dict(by_status), "series": series, "spend": spend}


def iso(at: datetime) -> str:
    return at.isoformat()


async def get_stats(relay: Relay, **params: str) -> dict[str, Any]:
    response = await relay.client.get("/v1/stats", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_matches(body: dict[str, Any], want: dict[str, Any]) -> None:
    assert body["total"] == want["total"]
    assert body["by_status"] == want["by_status"]
    assert sum(body["by_error_category"].values()) == want["total"]
    spend = {s["currency"]: Decimal(s["amount"]) for s in body["spend"]}
    assert spend.get("MYR", Decimal(0)) == want["spend"]
    got_series = {
        datetime.fromisoformat(b["start"]): {s: b[s] for s in STATUSES if b[s]}
        for b in body["series"]
        if b["total"]
    }
    assert got_series == {start: dict(c) for start, c in want["series"].items()}
    assert all(b["total"] == sum(b[s] for s in STATUSES) for b in body["series"])


async def test_stats_match_the_seeded_messages_before_and_after_the_rollup_is_folded(
    relay: Relay,
) -> None:
    rows = seed_rows()
    await insert(relay.settings.database_url, rows)
    # Partial hours at both ends: 10:30 on day 1 to 14:45 on day 3.
    since = START + timedelta(hours=10, minutes=30)
    until = START + timedelta(days=2, hours=14, minutes=45)
    hourly = expected(rows, since, until, START + timedelta(hours=10), timedelta(hours=1))

    unfolded = await get_stats(relay, since=iso(since), until=iso(until), bucket="hour")
    assert_matches(unfolded, hourly)
    assert relay.state.sweeper is not None
    report = await relay.state.sweeper.run_once()
    assert report.stats_deltas > 0, report
    folded = await get_stats(relay, since=iso(since), until=iso(until), bucket="hour")
    assert folded == unfolded

    settled = sum(hourly["by_status"][s] for s in ("delivered", "undelivered", "expired"))
    assert folded["delivery_rate"] == round(hourly["by_status"]["delivered"] / settled, 4)
    assert len(folded["series"]) == 2 * 24 + 5  # 10:00 on day 1 to 14:00 on day 3
    top = {c["code"]: c for c in folded["top_error_codes"]}
    assert set(top) == {"501", "509", "556", "405"}
    assert top["509"]["category"] == "permanent" and top["405"]["category"] == "account"
    in_range = [r for r in rows if since <= r["created_at"] < until]
    assert top["501"]["count"] == sum(r["error_code"] == "501" for r in in_range)
    assert folded["by_error_category"]["expired"] == hourly["by_status"]["expired"]


async def test_day_buckets_start_at_midnight_at_the_offset_of_since(relay: Relay) -> None:
    rows = seed_rows()
    await insert(relay.settings.database_url, rows)
    assert relay.state.sweeper is not None
    await relay.state.sweeper.run_once()
    since = datetime.fromisoformat("2026-11-20T09:00:00+08:00")  # 01:00 UTC
    until = datetime.fromisoformat("2026-11-23T00:00:00+08:00")
    body = await get_stats(relay, since=iso(since), until=iso(until), bucket="day")
    midnight_myt = datetime(2026, 11, 19, 16, 0, tzinfo=UTC)
    assert_matches(body, expected(rows, since, until, midnight_myt, timedelta(days=1)))
    assert [b["start"] for b in body["series"]] == [
        "2026-11-19T16:00:00Z",
        "2026-11-20T16:00:00Z",
        "2026-11-21T16:00:00Z",
    ]


async def test_filters_by_api_key_name_and_channel(relay: Relay) -> None:
    rows = seed_rows()
    await insert(relay.settings.database_url, rows)
    since, until = START, START + timedelta(days=3)
    body = await get_stats(
        relay, since=iso(since), until=iso(until), api_key_name="billing", channel="whatsapp"
    )
    chosen = [r for r in rows if r["api_key_name"] == "billing" and r["channel"] == "whatsapp"]
    assert_matches(body, expected(chosen, since, until, START, timedelta(hours=1)))


async def test_a_dn_moves_a_message_between_statuses_in_the_stats(relay: Relay) -> None:
    # Two recipients: the provider's `messages` answer carries a rate per recipient (its
    # one-recipient answer has none), 0.11 for an even last digit and 0.2500 for an odd one.
    sent = await relay.client.post(
        "/v1/messages", json={"to": ["60123240066", "60123240067"], "text": "hi"}
    )
    assert sent.status_code == 201, sent.text
    ref = sent.json()["messages"][0]["ref"]
    before = await get_stats(relay)
    assert before["by_status"]["pending"] == 2 and before["total"] == 2
    assert before["spend"] == [{"currency": "MYR", "amount": "0.3600"}]

    dn = {"msgid": ref, "status": "UNDELIVERED", "error-code": "511"}
    assert (await relay.client.post(f"/dn/{DN_TOKEN}", data=dn)).status_code == 200

    after = await get_stats(relay)
    assert after["by_status"]["pending"] == 1 and after["by_status"]["undelivered"] == 1
    assert after["by_error_category"]["temporary"] == 1
    assert after["top_error_codes"] == [
        {
            "code": "511",
            "description": "Subscriber busy for MT short message",
            "category": "temporary",
            "count": 1,
        }
    ]
    assert after["delivery_rate"] == 0.0
    assert after["spend"] == before["spend"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2026-11-20T00:00:00"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"until": "0.5"}, "until"),  # not a Unix timestamp: ISO 8601 only
        ({"since": "9999-12-31T23:59:00-23:59"}, "since"),  # past what UTC can hold
        ({"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "since"),
        ({"bucket": "week"}, "bucket"),
        ({"channel": "fax"}, "channel"),
        ({"since": "2025-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "bucket"),
        ({"api_key_name": "x" * 65}, "api_key_name"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    relay: Relay, params: dict[str, str], field: str
) -> None:
    response = await relay.client.get("/v1/stats", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["detail"].startswith(f"{field}:"), body["detail"]


async def test_stats_need_an_api_key(relay: Relay) -> None:
    response = await relay.client.get("/v1/stats", headers={"Authorization": ""})
    assert response.status_code == 401
