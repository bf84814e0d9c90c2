"""LateAnswers on its own: retried while the database is away, given up when too old or on
a failure that is not an outage, and tried once more when the app stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy.exc import OperationalError

from app.messages.late_answers import LateAnswers
from app.ops.logging import configure_logging

_CUT = OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))


class Attempts:
    def __init__(self, failures: list[Exception | None]) -> None:
        self.failures = failures  # one per attempt; None = success
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1
        failure = self.failures[min(self.count, len(self.failures)) - 1]
        if failure is not None:
            raise failure


def fast(late: LateAnswers) -> LateAnswers:
    late.retry_delays_s, late.retry_every_s = (0.0,), 0.0
    return late


async def test_retried_through_an_outage_until_recorded() -> None:
    late = fast(LateAnswers())
    record = Attempts([_CUT, _CUT, _CUT, None])
    late.keep("send-1", {"7": "ref-7"}, record)
    assert late.pending == 1
    await late.wait()
    assert (record.count, late.pending) == (4, 0)


class Errors(logging.Handler):
    """ERROR lines as rendered (the app's loggers hand finished lines to the standard
    library; a logger bound before this test keeps its own format, hence substrings)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def error_lines() -> Iterator[list[str]]:
    configure_logging("INFO", "json")  # if nothing has yet: route structlog to the handlers
    handler = Errors()
    logging.getLogger().addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger().removeHandler(handler)


async def test_given_up_and_logged_when_older_than_max_age() -> None:
    late = fast(LateAnswers())
    late.max_age_s = 0.0
    record = Attempts([_CUT])
    with error_lines() as lines:
        late.keep("send-2", {"8": "ref-8"}, record)
        await late.wait()
    assert record.count == 1
    [line] = lines
    assert "given up" in line and "ref-8" in line


async def test_a_failure_that_is_not_an_outage_is_not_retried() -> None:
    late = fast(LateAnswers())
    record = Attempts([ValueError("a bug"), None])
    with error_lines() as lines:
        late.keep("send-3", {"9": "ref-9"}, record)
        await late.wait()
    assert record.count == 1
    [line] = lines
    assert "failed" in line and "ref-9" in line


async def test_stop_makes_one_last_attempt_that_can_succeed() -> None:
    late = LateAnswers()
    late.retry_delays_s = (3600.0,)
    record = Attempts([None])
    late.keep("send-4", {"10": "ref-10"}, record)
    await asyncio.sleep(0)  # the task starts and sleeps
    await late.stop()
    assert (record.count, late.pending) == (1, 0)
