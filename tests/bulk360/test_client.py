"""The upstream client against the simulator: token caching, 401 retry, packing, both answer
shapes, and how each failure is classified (sent for sure not, or maybe)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from app.bulk360.client import (
    MAX_TO_CHARS,
    AccountProblemError,
    AmbiguousError,
    Bulk360Client,
    CredentialsRejectedError,
    Destination,
    InsufficientCreditError,
    NotSentError,
    TokenUnavailableError,
    UnauthorizedError,
    UpstreamError,
    UpstreamTimeoutError,
    decimal_text,
    pack_destinations,
)
from app.bulk360.simulator import Simulator, SimulatorConfig
from tests.conftest import relay_settings
from tests.servers import free_port

# The client never touches the database; settings only need a well-formed URL.
UNUSED_DB = "postgresql+asyncpg://unused@127.0.0.1:1/unused"


def sms(msisdn: str) -> Destination:
    return Destination(msisdn, "sms")


def make_client(base_url: str, **overrides: Any) -> Bulk360Client:
    settings = relay_settings(UNUSED_DB, base_url, **overrides)
    return Bulk360Client(settings, base_url=base_url)


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[Bulk360Client]:
    c = make_client(simulator.base_url)
    await c.start()
    yield c
    await c.close()


async def started(c: Bulk360Client) -> Bulk360Client:
    await c.start()
    return c


# -- pure helpers ---------------------------------------------------------------------------


def test_packing_keeps_every_to_within_150_chars_in_fewest_requests() -> None:
    dests = [sms(f"6012{n:07d}") for n in range(300)]  # 11 digits + comma: 12 fit per request
    groups = pack_destinations(dests)
    assert len(groups) == 25
    assert sorted(i for g in groups for i in g) == list(range(300))
    for g in groups:
        assert len(",".join(dests[i].provider_to for i in g)) <= MAX_TO_CHARS
        assert g == sorted(g)  # each request keeps request order


def test_packing_fills_an_earlier_gap_with_a_later_short_entry() -> None:
    wa = [Destination(f"6012{n:07d}", "whatsapp") for n in range(7)]  # 20 characters each
    sm = [sms(f"6013{n:07d}") for n in range(2)]  # 11 characters each
    dests = [*wa[:5], sm[0], wa[5], wa[6], sm[1]]
    # First request: 5 WhatsApp + SMS + WhatsApp = 137 characters; the next WhatsApp does not
    # fit (158) and opens a second request, but the last SMS still fits the first (149).
    assert pack_destinations(dests) == [[0, 1, 2, 3, 4, 5, 6, 8], [7]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.11, "0.11"),
        ("0.2500", "0.2500"),
        (3, "3"),
        ("4229.8700", "4229.8700"),
        ("x", None),
        (None, None),
        (True, None),
        ("NaN", None),
    ],
)
def test_rate_and_balance_become_decimal_text_whatever_the_type(
    raw: object, expected: str | None
) -> None:
    assert decimal_text(raw) == expected


# -- token ---------------------------------------------------------------------------------


async def test_cold_start_with_100_concurrent_sends_makes_one_token_request(
    simulator: Simulator, client: Bulk360Client
) -> None:
    assert client.token_state == "none"
    results = await asyncio.gather(
        *(client.send([sms(f"6012{n:07d}")], text="hi", sender=None) for n in range(100))
    )
    assert simulator.token_requests == 1
    assert simulator.mt_requests == 100
    assert all(r[0].error is None and r[0].submissions[0] is not None for r in results)
    assert client.token_state == "valid"


async def test_expired_token_is_refreshed_once_and_the_send_retried(
    simulator: Simulator, client: Bulk360Client
) -> None:
    await client.send([sms("60123240066")], text="hi", sender=None)
    simulator.expire_tokens()
    [batch] = await client.send([sms("60123240066")], text="hi", sender=None)
    assert batch.error is None
    assert batch.submissions[0] is not None and batch.submissions[0].accepted
    assert simulator.token_requests == 2
    assert simulator.mt_requests == 3  # first send, refused 401, retried
    assert len(simulator.sent) == 2


async def test_a_second_401_after_a_fresh_token_is_unauthorized_not_retried_again() -> None:
    # Tokens that die at once: every send answers 401.
    sim = Simulator(SimulatorConfig(token_ttl_s=0.000_001, dn_delay_s=0))
    c = await started(make_client(await sim.start()))
    try:
        [batch] = await c.send([sms("60123240066")], text="hi", sender=None)
    finally:
        await c.close()
        await sim.stop()
    assert isinstance(batch.error, UnauthorizedError)
    assert isinstance(batch.error, NotSentError)
    assert sim.token_requests == 2
    assert sim.mt_requests == 2
    assert sim.sent == []


async def test_invalid_client_is_a_credentials_error_naming_the_settings(
    simulator: Simulator,
) -> None:
    c = await started(make_client(simulator.base_url, bulk360_app_secret="wrong"))
    try:
        [batch] = await c.send([sms("60123240066")], text="hi", sender=None)
        assert c.token_state == "failing"
    finally:
        await c.close()
    assert isinstance(batch.error, CredentialsRejectedError)
    assert "BULK360_APP_KEY" in batch.error.desc and "BULK360_APP_SECRET" in batch.error.desc
    assert simulator.mt_requests == 0


async def test_unreachable_token_endpoint_is_not_sent() -> None:
    c = await started(make_client(f"http://127.0.0.1:{free_port()}"))
    try:
        [batch] = await c.send([sms("60123240066")], text="hi", sender=None)
        assert c.token_state == "failing"
    finally:
        await c.close()
    assert isinstance(batch.error, TokenUnavailableError)


# -- answers -------------------------------------------------------------------------------


async def test_one_recipient_reads_the_flat_shape(client: Bulk360Client) -> None:
    [batch] = await client.send([sms("60123240066")], text="hi", sender="AEONSales")
    [sub] = batch.submissions
    assert sub is not None and sub.code == 200 and sub.ref and sub.accepted
    assert batch.balance == "1000.0000" and batch.currency == "MYR"


async def test_several_recipients_read_the_messages_shape_with_number_and_string_rates(
    client: Bulk360Client,
) -> None:
    dests = [sms("60123240066"), Destination("60166600267", "whatsapp"), sms("60199990405")]
    [batch] = await client.send(dests, text="hi", sender=None)
    even, odd, rejected = batch.submissions
    assert even is not None and even.rate == "0.11" and even.currency == "MYR"  # JSON number
    assert odd is not None and odd.rate == "0.2500" and odd.accepted  # JSON string
    assert rejected is not None and rejected.code == 405 and rejected.ref is None
    assert not rejected.accepted


@pytest.mark.parametrize(
    ("last4", "kind", "code"),
    [
        ("0402", InsufficientCreditError, 402),
        ("0403", AccountProblemError, 403),
        ("0412", AccountProblemError, 412),
        ("0413", AccountProblemError, 413),
        ("0500", UpstreamError, 500),
        ("0901", UpstreamError, None),
        ("0902", UpstreamError, None),
    ],
)
async def test_whole_request_failures_are_classified(
    client: Bulk360Client, last4: str, kind: type[Exception], code: int | None
) -> None:
    [batch] = await client.send([sms(f"6019999{last4}")], text="hi", sender=None)
    assert isinstance(batch.error, kind)
    assert batch.error.code == code
    assert batch.submissions == []


async def test_no_answer_in_time_is_an_ambiguous_timeout(simulator: Simulator) -> None:
    c = await started(make_client(simulator.base_url, bulk360_timeout_s=0.3))
    try:
        [batch] = await c.send([sms("60199990900")], text="hi", sender=None)
    finally:
        await c.close()
    assert isinstance(batch.error, UpstreamTimeoutError)
    assert isinstance(batch.error, AmbiguousError)
    assert len(simulator.sent) == 1  # the provider did act: that is why it is never resent


class _CountingClient(Bulk360Client):
    """Records how many upstream requests are in flight at once."""

    in_flight = 0
    peak = 0

    async def _post(
        self, path: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # hold the slot so overlap is observable
            return await super()._post(path, form, headers)
        finally:
            self.in_flight -= 1


async def test_upstream_requests_in_flight_never_exceed_max_concurrency(
    simulator: Simulator,
) -> None:
    settings = relay_settings(UNUSED_DB, simulator.base_url, bulk360_max_concurrency=3)
    c = _CountingClient(settings, base_url=simulator.base_url)
    await c.start()
    try:
        dests = [sms(f"6012{n:07d}") for n in range(120)]  # 10 upstream requests
        batches = await c.send(dests, text="hi", sender=None)
    finally:
        await c.close()
    assert len(batches) == 10
    assert c.peak == 3
    assert all(b.error is None for b in batches)
