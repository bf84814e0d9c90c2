"""The provider balance: seen on every send answer, shown by /readyz and the gauge, warned about
once per fall under LOW_BALANCE_THRESHOLD, saved off the send path and read back at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360 import balance
from app.bulk360.balance import BalanceTracker
from app.bulk360.repository import BalanceReading, latest_balances, save_balances
from app.bulk360.simulator import Simulator
from app.config import ConfigError, load_settings
from app.db import create_engine
from app.ops.logging import configure_logging
from tests.conftest import Relay, RelayFactory
from tests.reliability.pgproxy import PgProxy

SEND = "/v1/messages"


class Records(logging.Handler):
    """The balance logger's records (the app replaces the root handlers at start)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.on_warning: Callable[[], None] = lambda: None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.levelno == logging.WARNING:
            self.on_warning()

    def warnings(self) -> list[dict[str, Any]]:
        lines = [r for r in self.records if r.levelno == logging.WARNING]
        return [orjson.loads(str(r.msg)) for r in lines]


@pytest.fixture
def balance_log() -> Any:
    # Through the standard library, as the app sets it up (a relay started in the test does
    # the same again), so the handler below sees the lines however the test runs.
    configure_logging("INFO", "json")
    handler = Records()
    logger = logging.getLogger("app.bulk360.balance")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


async def send(relay: Relay, to: str = "60123240066") -> dict[str, Any]:
    r = await relay.client.post(SEND, json={"to": to, "text": "hi"})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def readiness(relay: Relay) -> dict[str, Any]:
    r = await relay.client.get("/readyz")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_readyz_and_the_gauge_show_the_balance_after_a_send(relay: Relay) -> None:
    before = await readiness(relay)
    body = await send(relay)
    after = await readiness(relay)

    assert (before["balance"], before["low_balance"]) == (None, False)
    assert after["balance"]["amount"] == body["balance"] == "1000.0000"
    assert after["balance"]["currency"] == "MYR"
    assert datetime.fromisoformat(after["balance"]["seen_at"]).utcoffset() is not None
    assert after["low_balance"] is False  # no LOW_BALANCE_THRESHOLD
    gauge = REGISTRY.get_sample_value("relay_bulk360_balance", {"currency": "MYR"})
    assert gauge == 1000.0


async def test_low_balance_flips_at_the_threshold_with_one_warning_per_crossing(
    make_relay: RelayFactory, simulator: Simulator, balance_log: Records
) -> None:
    # Each SMS to an even number costs 0.11; an answer reports the balance before its send.
    async with make_relay(simulator.base_url, low_balance_threshold="999.90") as relay:
        first = await send(relay)  # 1000.0000: above
        above = await readiness(relay)
        second = await send(relay)  # 999.8900: under, the first crossing
        await send(relay)  # 999.7800: still under, no second warning
        low = await readiness(relay)
        simulator.config.balance += 5  # topped up: above again, re-armed
        await send(relay)
        topped_up = await readiness(relay)
        simulator.config.balance -= 5  # under again: the second crossing
        await send(relay)
        low_again = await readiness(relay)

    assert (first["balance"], second["balance"]) == ("1000.0000", "999.8900")
    assert [above["low_balance"], low["low_balance"]] == [False, True]
    assert [topped_up["low_balance"], low_again["low_balance"]] == [False, True]
    warnings = balance_log.warnings()
    assert [(w["balance"], w["threshold"], w["currency"]) for w in warnings] == [
        ("999.8900", "999.90", "MYR"),
        ("999.5600", "999.90", "MYR"),
    ]
    assert all(w["event"] == "bulk360 balance below LOW_BALANCE_THRESHOLD" for w in warnings)


async def test_the_balance_is_saved_and_seeds_a_new_relay_before_any_send(
    make_relay: RelayFactory, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url) as relay:
        await send(relay)
        await relay.state.bulk360.balance.wait_saved()
        async with engine.connect() as conn:
            [saved] = await latest_balances(conn)
        shown = (await readiness(relay))["balance"]
    assert (str(saved.amount), saved.currency) == ("1000.0000", "MYR")
    assert saved.seen_at == datetime.fromisoformat(shown["seen_at"])

    mt_requests = simulator.mt_requests
    async with make_relay(simulator.base_url, low_balance_threshold="2000") as restarted:
        seeded = await readiness(restarted)
    assert seeded["balance"] == shown
    assert seeded["low_balance"] is True
    assert simulator.mt_requests == mt_requests  # nothing was sent to learn it


async def test_readings_coalesce_into_few_writes_and_the_latest_wins(engine: AsyncEngine) -> None:
    tracker = BalanceTracker()
    await tracker.start(engine)
    try:
        for cents in range(100, 0, -1):
            tracker.record(f"{cents / 100:.4f}", "MYR")
        await tracker.wait_saved()
        writes = tracker.writes
    finally:
        await tracker.stop()
    async with engine.connect() as conn:
        amount = await conn.scalar(text("SELECT amount FROM provider_balances"))
    assert amount == Decimal("0.0100")
    assert writes == 1


async def test_a_newer_saved_reading_is_never_overwritten_by_an_older_one(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    newer = BalanceReading(Decimal("4.0000"), "MYR", now)
    older = BalanceReading(Decimal("5.0000"), "MYR", now - timedelta(seconds=1))
    # Another replica's write, of a reading it saw earlier, lands after ours.
    for reading in (newer, older):
        async with engine.begin() as conn:
            await save_balances(conn, [reading])
    async with engine.connect() as conn:
        assert await latest_balances(conn) == [newer]


def test_answers_without_a_balance_change_nothing() -> None:
    tracker = BalanceTracker(Decimal(10))
    for amount, currency in ((None, "MYR"), ("5", None), ("five", "MYR"), ("NaN", "MYR")):
        tracker.record(amount, currency)
    assert tracker.latest is None
    assert tracker.low is False


@pytest.mark.parametrize("raw", ["-1", "lots", "NaN"])
def test_a_bad_low_balance_threshold_refuses_to_start(raw: str) -> None:
    with pytest.raises(ConfigError, match="LOW_BALANCE_THRESHOLD"):
        load_settings(low_balance_threshold=raw, _env_file=None)


def test_low_balance_threshold_is_a_decimal() -> None:
    settings = load_settings(low_balance_threshold="150.50", _env_file=None)
    assert settings.low_balance_threshold == Decimal("150.50")


async def test_a_database_outage_delays_the_saving_and_the_latest_wins(
    db_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, balance_log: Records
) -> None:
    monkeypatch.setattr(balance, "WRITE_INTERVAL_S", 0.01)  # retries come quickly
    proxy = PgProxy.for_url(db_url)
    await proxy.start()
    proxied = create_engine(proxy.url(db_url), pool_size=1)
    tracker = BalanceTracker()
    first_failure = asyncio.Event()
    balance_log.on_warning = first_failure.set
    try:
        await tracker.start(proxied)
        await proxy.stop()  # the database goes away
        tracker.record("7.0000", "MYR")
        async with asyncio.timeout(10):
            await first_failure.wait()
        tracker.record("6.0000", "MYR")  # recorded while down: the send never waits
        await proxy.start()
        await tracker.wait_saved()
    finally:
        await tracker.stop()
        await proxied.dispose()
        await proxy.stop()
    async with engine.connect() as conn:
        [saved] = await latest_balances(conn)
    assert saved.amount == Decimal("6.0000")
    events = [w["event"] for w in balance_log.warnings()]
    assert events == ["bulk360 balance not saved; retrying"]
