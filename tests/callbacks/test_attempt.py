"""What an attempt's outcome means for its event (CONTRACT §4.5), without a network."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import pytest

from app.callbacks.attempt import (
    NoLinkLocalResolver,
    Outcome,
    _retry_after,
    link_local,
    next_state,
    origin,
)
from app.db import utcnow

SCHEDULE = (5.0, 30.0)


def _outcome(code: int | None, retry_after: float | None = None) -> Outcome:
    return Outcome(code, None if code else "timeout after 15 s", retry_after, 0.01)


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_any_2xx_is_delivered(code: int) -> None:
    assert next_state(1, _outcome(code), SCHEDULE) == ("delivered", None)


def test_410_is_gone_and_never_retried() -> None:
    assert next_state(1, _outcome(410), SCHEDULE) == ("gone", None)


@pytest.mark.parametrize("code", [None, 301, 400, 404, 429, 500, 503])
def test_anything_else_waits_the_next_delay_with_at_most_ten_percent_jitter(
    code: int | None,
) -> None:
    for attempt, base in ((1, 5.0), (2, 30.0)):
        state, delay = next_state(attempt, _outcome(code), SCHEDULE)
        assert state == "pending" and delay is not None
        assert base <= delay <= base * 1.1
    assert next_state(3, _outcome(code), SCHEDULE) == ("failed", None)


def test_retry_after_wins_only_when_longer() -> None:
    assert next_state(1, _outcome(429, 60.0), SCHEDULE) == ("pending", 60.0)
    state, delay = next_state(1, _outcome(503, 1.0), SCHEDULE)
    assert state == "pending" and delay is not None and delay >= 5.0


def test_retry_after_reads_seconds_and_http_dates_and_ignores_junk() -> None:
    assert _retry_after("120") == 120.0
    assert _retry_after("999999999") == 86_400.0  # capped at a day
    in_a_minute = format_datetime(utcnow() + timedelta(seconds=60), usegmt=True)
    found = _retry_after(in_a_minute)
    assert found is not None and 55 <= found <= 60
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


def test_the_origin_is_the_url_up_to_its_path() -> None:
    assert origin("https://billing.internal:8443/sms?token=x") == "https://billing.internal:8443"
    assert origin("http://user:pw@10.0.0.1/x") == "http://user:pw@10.0.0.1"


def test_link_local_addresses_are_recognised_in_every_spelling() -> None:
    for address in ("169.254.169.254", "fe80::1", "fe80::1%eth0", "::ffff:169.254.169.254"):
        assert link_local(address), address
    for address in ("127.0.0.1", "10.0.0.1", "2001:db8::1", "billing.internal"):
        assert not link_local(address), address


async def test_a_name_resolving_to_link_local_only_is_refused_when_connecting() -> None:
    resolver = NoLinkLocalResolver()
    try:
        assert [r["host"] for r in await resolver.resolve("localhost")] == ["127.0.0.1"]
        with pytest.raises(OSError, match="link-local"):
            await resolver.resolve("169.254.169.254")
    finally:
        await resolver.close()
