"""Console pages over ASGI (no browser): search readings, filters, paging, CSV, the message
page, unmatched DNs, the overview's figures."""

from __future__ import annotations

import csv
import io
import re

import pytest

from app.console import endpoints
from tests.conftest import DN_TOKEN, Relay
from tests.console.helpers import sign_in

REF_LINK = re.compile(r'href="/console/messages/([^"]+)"')


async def send(relay: Relay, to: str, **fields: str) -> list[dict[str, str]]:
    answer = await relay.client.post("/v1/messages", json={"to": to, "text": "hi", **fields})
    assert answer.status_code == 201, answer.text
    messages: list[dict[str, str]] = answer.json()["messages"]
    return messages


async def dn(relay: Relay, msgid: str, status: str, code: str) -> None:
    fields = {"msgid": msgid, "status": status, "error-code": code, "msisdn": "60123240066"}
    assert (await relay.client.post(f"/dn/{DN_TOKEN}", data=fields)).status_code == 200


def refs_listed(html: str) -> list[str]:
    return REF_LINK.findall(html)


@pytest.fixture
async def signed_in(relay: Relay) -> Relay:
    assert (await sign_in(relay.client)).status_code == 303
    return relay


@pytest.mark.parametrize(
    "q", ["012-324 0066", "+60 12-324 0066", "60123240066", "0060123240066", "otp-7781"]
)
async def test_search_finds_a_phone_in_any_format_or_a_client_ref(signed_in: Relay, q: str) -> None:
    (mine,) = await send(signed_in, "60123240066", client_ref="otp-7781")
    await send(signed_in, "60123240077", client_ref="otp-other")
    page = await signed_in.client.get("/console/messages", params={"q": q})
    assert page.status_code == 200
    assert refs_listed(page.text) == [mine["ref"]]


async def test_search_finds_a_ref_and_applies_the_filters(signed_in: Relay) -> None:
    _, second = await send(signed_in, "60123240066,60199992501")
    await dn(signed_in, second["ref"], "UNDELIVERED", "501")
    found = await signed_in.client.get("/console/messages", params={"q": second["ref"]})
    assert refs_listed(found.text) == [second["ref"]]
    undelivered = await signed_in.client.get("/console/messages?status=undelivered")
    assert refs_listed(undelivered.text) == [second["ref"]]
    sms = await signed_in.client.get("/console/messages?channel=whatsapp")
    assert refs_listed(sms.text) == []
    later = await signed_in.client.get("/console/messages?since=2999-01-01T00:00")
    assert refs_listed(later.text) == []
    bad = await signed_in.client.get("/console/messages?status=lost&since=yesterday")
    assert bad.status_code == 422
    assert "Status: &#39;lost&#39;" in bad.text and "From: &#39;yesterday&#39;" in bad.text


async def test_newest_first_with_a_next_page_link(
    signed_in: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "PAGE_SIZE", 2)
    sent = [m["ref"] for m in await send(signed_in, "60123240061,60123240062,60123240063")]
    first = await signed_in.client.get("/console/messages")
    newest_first = sorted(sent, key=lambda ref: -sent.index(ref))
    assert refs_listed(first.text) == newest_first[:2]
    link = re.search(r'href="(\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert link is not None
    second = await signed_in.client.get("/console/messages" + link.group(1).replace("&amp;", "&"))
    assert refs_listed(second.text) == newest_first[2:]
    assert 'rel="next"' not in second.text


async def test_csv_export_streams_every_page_of_the_filter(
    signed_in: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "CSV_BATCH", 2)
    numbers = [f"6012324007{i}" for i in range(5)]
    await send(signed_in, ",".join(numbers), client_ref="=HYPERLINK(1)")
    await send(signed_in, "60123240099", client_ref="other")
    export = await signed_in.client.get("/console/messages.csv", params={"q": "=HYPERLINK(1)"})
    assert export.status_code == 200
    assert export.headers["content-type"] == "text/csv; charset=utf-8"
    assert export.headers["content-disposition"].startswith('attachment; filename="messages-')
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(r["to"] for r in rows) == numbers
    # A client_ref that a spreadsheet would run as a formula is written as text.
    assert {r["client_ref"] for r in rows} == {"'=HYPERLINK(1)"}
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)


async def test_csv_needs_a_session(relay: Relay) -> None:
    assert (await relay.client.get("/console/messages.csv")).status_code == 303


async def test_message_page_shows_dns_in_receipt_order_and_the_other_recipients(
    signed_in: Relay,
) -> None:
    mine, other = await send(signed_in, "60123240066,60123240077", client_ref="otp-9")
    await dn(signed_in, mine["ref"], "DELIVERED", "000")
    await dn(signed_in, mine["ref"], "UNDELIVERED", "501")
    page = await signed_in.client.get(f"/console/messages/{mine['ref']}")
    assert page.status_code == 200
    dns = re.findall(
        r'<tr class="dn">\s*<td>(\d+)</td>.*?<td>(\w+)</td>\s*<td>(\w+)</td>', page.text, re.S
    )
    assert [(status, code) for _, status, code in dns] == [
        ("DELIVERED", "000"),
        ("UNDELIVERED", "501"),
    ]
    assert int(dns[0][0]) < int(dns[1][0])
    assert "Absent Subscriber" in page.text and "temporary" in page.text
    assert refs_listed(page.text.split('id="send"')[1]) == [other["ref"]]
    by_id = await signed_in.client.get(f"/console/messages/{mine['id']}")
    assert by_id.status_code == 200 and mine["ref"] in by_id.text


async def test_unknown_message_is_a_404_page(signed_in: Relay) -> None:
    page = await signed_in.client.get("/console/messages/no-such-ref")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "No such message" in page.text


async def test_unmatched_dns_are_listed(signed_in: Relay) -> None:
    await dn(signed_in, "E-NO-SUCH-REF", "DELIVERED", "000")
    page = await signed_in.client.get("/console/unmatched-dns")
    assert "E-NO-SUCH-REF" in page.text
    overview = await signed_in.client.get("/console")
    assert re.search(r'<span class="n">1</span> unmatched DNs', overview.text)


async def test_overview_counts_rate_codes_and_spend(signed_in: Relay) -> None:
    sent = await send(signed_in, "60123240066,60199992501,60199992505")
    await dn(signed_in, sent[0]["ref"], "DELIVERED", "000")
    await dn(signed_in, sent[1]["ref"], "UNDELIVERED", "501")
    await dn(signed_in, sent[2]["ref"], "UNDELIVERED", "505")
    page = await signed_in.client.get("/console")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", page.text)
    assert '<span class="n">3</span> sent' in text
    assert "33.3%" in text  # 1 delivered of 3 decided
    assert "Absent Subscriber" in text and "permanent" in text  # 505: unknown subscriber
    assert "MYR" in text
    assert text.count('class="bar bar-') == 2  # one hour: a delivered and an undelivered bar
    week = await signed_in.client.get("/console?window=7d")
    assert "Last 7 days" in week.text and week.status_code == 200


async def test_overview_shows_the_last_balance_the_provider_reported(signed_in: Relay) -> None:
    await send(signed_in, "60123240066")
    await signed_in.state.bulk360.balance.wait_saved()
    page = await signed_in.client.get("/console")
    text = re.sub(r"\s+", " ", page.text)
    reading = signed_in.state.bulk360.balance.latest
    assert reading is not None
    assert f"<dd>{reading.currency} {reading.amount} <small>as reported <time" in text
