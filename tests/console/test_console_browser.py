"""The operator console in Chromium, as an operator uses it: the relay on a real socket, the
simulator sending real DNs back, the browser reaching nothing but the relay."""

from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from app.bulk360.simulator import Simulator
from tests.callbacks.conftest import FAST_RETRIES, Receiver, run_receiver
from tests.callbacks.conftest import SECRET as CALLBACK_SECRET
from tests.conftest import DN_TOKEN, OTHER_API_KEY, TEST_API_KEY
from tests.console.conftest import LiveRelay, Tab, open_tab, save_screenshot, serve_relay
from tests.servers import free_port

CUSTOMER = "60123240066"  # typed as 012-324 0066 in the search box
OUT_OF_ORDER = "60199993003"  # simulator: DELIVERED 000, then UNDELIVERED 501
RETRIED = "60199993001"  # simulator: UNDELIVERED 511, then DELIVERED 000
SILENT = "60199993000"  # simulator: accepted, no DN


async def send(relay: LiveRelay, to: str, **fields: str) -> list[dict[str, str]]:
    """Send, and wait until the simulator has sent every DN of it."""
    answer = await relay.client.post("/v1/messages", json={"to": to, "text": "Your OTP", **fields})
    assert answer.status_code == 201, answer.text
    await relay.simulator.wait_dns_sent()
    messages: list[dict[str, str]] = answer.json()["messages"]
    return messages


async def sign_in(page: Page, api_key: str = TEST_API_KEY) -> None:
    await page.goto("/console")
    await expect(page).to_have_url(re.compile(r"/console/sign-in"))
    await page.get_by_label("API key").fill(api_key)
    await page.get_by_role("button", name="Sign in").click()


async def test_sign_in_search_a_national_number_open_it_and_sign_out(
    browser: Browser, live_relay: LiveRelay
) -> None:
    # JavaScript off: every step is a plain link or form.
    tab = await open_tab(browser, live_relay, java_script=False)
    page = tab.page
    try:
        (sent,) = await send(live_relay, CUSTOMER, client_ref="otp-7781")
        await send(live_relay, "60123240077")  # someone else: not in the results
        await sign_in(page)
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await page.get_by_role("link", name="Messages", exact=True).click()
        await page.get_by_label("Phone number, ref or client ref").fill("012-324 0066")
        await page.get_by_role("button", name="Search").click()
        rows = page.locator("table.messages tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text(CUSTOMER)
        await save_screenshot(page, "console_search_national_number")
        await rows.first.get_by_role("link", name=sent["ref"]).click()
        await expect(page).to_have_url(re.compile(f"/console/messages/{sent['ref']}$"))
        await expect(page.locator("dl.fields")).to_contain_text("otp-7781")
        await expect(page.locator("tr.dn")).to_have_count(1)
        await expect(page.locator("tr.dn")).to_contain_text("DELIVERED")
        await save_screenshot(page, "console_message_page")
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.goto("/console/messages")
        await expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
        assert tab.blocked == []
    finally:
        await tab.context.close()


async def test_every_dn_of_a_multi_dn_number_in_receipt_order(tab: Tab) -> None:
    sent = {m["to"]: m["ref"] for m in await send(tab.relay, f"{RETRIED},{OUT_OF_ORDER}")}
    await sign_in(tab.page)
    expected = {
        RETRIED: [("UNDELIVERED", "511", "temporary"), ("DELIVERED", "000", "none")],
        OUT_OF_ORDER: [("DELIVERED", "000", "none"), ("UNDELIVERED", "501", "temporary")],
    }
    for number, dns in expected.items():
        await tab.page.goto(f"/console/messages/{sent[number]}")
        rows = tab.page.locator("tr.dn")
        await expect(rows).to_have_count(len(dns))
        cells = [await row.locator("td").all_inner_texts() for row in await rows.all()]
        seqs = [int(c[0]) for c in cells]
        assert seqs == sorted(seqs), "receipt order"
        assert [(c[2], c[3], c[5]) for c in cells] == dns
        assert all(c[6] == sent[number] for c in cells)  # each DN's msgid
        # The last DN received decides, and the other recipient of the send is listed.
        last_status = dns[-1][0].lower()
        await expect(tab.page.locator("dl.fields")).to_contain_text(last_status)
        other = OUT_OF_ORDER if number == RETRIED else RETRIED
        await expect(tab.page.locator("#send + p + .scroll")).to_contain_text(other)
        await save_screenshot(tab.page, f"console_dns_{number}")


async def test_export_csv_of_the_current_filter(tab: Tab, tmp_path: Path) -> None:
    await send(tab.relay, f"{CUSTOMER},60123240077,60199992501")
    await sign_in(tab.page)
    await tab.page.goto("/console/messages?status=undelivered")
    await expect(tab.page.locator("table.messages tbody tr")).to_have_count(1)
    async with tab.page.expect_download() as download_info:
        await tab.page.get_by_role("link", name="Export CSV").click()
    download = await download_info.value
    assert re.fullmatch(r"messages-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    path = tmp_path / "export.csv"
    await download.save_as(path)
    with path.open(newline="", encoding="utf-8") as exported:
        rows = list(csv.DictReader(exported))
    assert [(r["to"], r["status"], r["error_code"]) for r in rows] == [
        ("60199992501", "undelivered", "501")
    ]


async def test_wrong_key_is_refused(tab: Tab) -> None:
    await sign_in(tab.page, "not-a-key")
    await expect(tab.page.get_by_role("alert")).to_have_text("That API key is not valid.")
    await expect(tab.page.get_by_role("heading", name="Sign in")).to_be_visible()
    await tab.page.goto("/console")
    await expect(tab.page).to_have_url(re.compile(r"/console/sign-in"))


def console_pages(refs: list[str]) -> list[str]:
    return [
        "/console",
        "/console?window=7d",
        "/console/messages",
        "/console/messages?q=012-324+0066",
        "/console/messages?status=undelivered",
        "/console/unmatched-dns",
        "/console/callbacks",
        "/console/callbacks?state=gone",
        *(f"/console/messages/{ref}" for ref in refs),
        "/console/messages/no-such-ref",
    ]


async def test_no_secret_in_any_page(tab: Tab) -> None:
    # A callback URL whose query string carries a token (never shown: it is a credential).
    hook = f"http://127.0.0.1:{free_port()}/hook?token=cb-query-token-123"
    sent = await send(tab.relay, f"{CUSTOMER},{RETRIED}", client_ref="otp-1", callback_url=hook)
    settings = tab.relay.settings
    assert settings.callback_secrets
    key = settings.console_signing_key
    secrets = [
        TEST_API_KEY,
        OTHER_API_KEY,
        DN_TOKEN,
        "cb-query-token-123",
        settings.effective_app_secret,
        key.hex(),
        *settings.callback_secrets,
        *(s.removeprefix("whsec_") for s in settings.callback_secrets),
        *(digest for digest in settings.api_key_hashes),  # not secret, but never shown either
    ]
    pages = ["/console/sign-in", *console_pages([m["ref"] for m in sent])]
    html = [await (await tab.page.goto(p)).text() for p in pages[:1]]  # type: ignore[union-attr]
    await sign_in(tab.page)
    for path in pages[1:]:
        response = await tab.page.goto(path)
        assert response is not None
        html.append(await tab.page.content())
    for text in html:
        for secret in secrets:
            assert secret not in text


async def test_readable_at_375_px_without_horizontal_scroll(
    browser: Browser, live_relay: LiveRelay
) -> None:
    sent = await send(live_relay, f"{CUSTOMER},{OUT_OF_ORDER}", client_ref="a-long-client-ref-1234")
    tab = await open_tab(browser, live_relay, width=375)
    try:
        await sign_in(tab.page)
        for path in ["/console/sign-in?next=/console", *console_pages([m["ref"] for m in sent])]:
            await tab.page.goto(path)
            overflow = await tab.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways by {overflow} px"
        await tab.page.goto("/console")
        await save_screenshot(tab.page, "console_overview_375px")
        await tab.page.goto(f"/console/messages/{sent[1]['ref']}")
        await save_screenshot(tab.page, "console_message_375px")
    finally:
        await tab.context.close()


async def test_redeliver_a_failed_callback(
    browser: Browser, db_url: str, simulator: Simulator
) -> None:
    # Three 500s (the first attempt and both retries): the event fails. Then 200s.
    async with (
        run_receiver(Receiver(statuses=[500, 500, 500])) as receiver,
        serve_relay(
            db_url,
            simulator,
            callback_retry_s=FAST_RETRIES,
            callback_signing_secrets=CALLBACK_SECRET,
        ) as relay,
    ):
        # 019-999 3000: accepted, no DN ever, so its one event (status pending) is the last.
        (sent,) = await send(relay, SILENT, callback_url=receiver.url)
        await receiver.wait_for(3)
        failed = await wait_for_callbacks(relay, "failed")
        tab = await open_tab(browser, relay)
        try:
            await sign_in(tab.page)
            await tab.page.get_by_role("link", name=re.compile("failed callbacks")).click()
            rows = tab.page.locator("tr.callback")
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_contain_text(sent["ref"])
            await expect(rows.first).to_contain_text("failed")
            # The URL is shown without its query string (it may carry a token).
            await expect(rows.first).to_contain_text(receiver.url.split("?")[0])
            assert "s3cret" not in await tab.page.content()
            await save_screenshot(tab.page, "console_failed_callbacks")
            await rows.first.get_by_role("button", name=f"Redeliver callback {failed}").click()
            await expect(tab.page.get_by_text("None.")).to_be_visible()  # none failed now
            await receiver.wait_for(4)
            await wait_for_callbacks(relay, "delivered")
            await tab.page.goto(f"/console/messages/{sent['ref']}")
            event = tab.page.locator("tr.callback")
            await expect(event).to_contain_text("delivered")
            await expect(tab.page.locator("tr.attempt")).to_have_count(4)  # 3 failed, then 200
            await save_screenshot(tab.page, "console_message_callbacks")
            assert tab.blocked == []
        finally:
            await tab.context.close()


async def wait_for_callbacks(relay: LiveRelay, state: str) -> int:
    """The id of the one callback event once it is in `state` (the relay's API, polled)."""
    async with asyncio.timeout(10):
        while True:
            listed = await relay.client.get("/v1/callbacks", params={"state": state})
            if items := listed.json()["items"]:
                return int(items[0]["id"])
            await asyncio.sleep(0.05)
