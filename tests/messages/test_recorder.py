"""AnswerRecorder on its own: retried while the database is away (in the send, then in the
background), given up when too old or on a failure that is not an outage, and tried once more
when the app stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy.exc import OperationalError

from app.bulk360.client import Destination
from app.messages.outcome import Entry
from app.messages.recorder import AnswerRecorder
from app.messages.repository import Answer
from app.ops.logging import configure_logging

_CUT = OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))


class Attempts:
    """The write, failing as told: one entry per attempt; None = success."""

    def __init__(self, failures: list[Exception | None]) -> None:
        self.failures = failures
        self.count = 0

    async def __call__(self, _answer: Answer) -> None:
        self.count += 1
        failure = self.failures[min(self.count, len(self.failures)) - 1]
        if failure is not None:
            raise failure


def answer(send_id: str, message_id: int, ref: str) -> Answer:
    entry = Entry(Destination("60123240066", "sms"), "gsm7", 1, id=message_id)
    entry.status, entry.ref = "pending", ref
    return Answer(send_id, [entry], "tester")


def fast(record: Attempts) -> AnswerRecorder:
    recorder = AnswerRecorder(record)
    recorder.retry_delays_s = ()
    recorder.late_delays_s, recorder.late_every_s = (0.0,), 0.0
    return recorder


async def test_retried_through_an_outage_until_recorded() -> None:
    record = Attempts([_CUT, _CUT, _CUT, None])
    late = fast(record)
    late.keep(answer("send-1", 7, "ref-7"))
    assert late.pending == 1
    await late.wait()
    assert (record.count, late.pending) == (4, 0)


async def test_a_short_outage_is_retried_within_the_send() -> None:
    record = Attempts([_CUT, _CUT, None])
    recorder = AnswerRecorder(record)
    recorder.retry_delays_s = (0.0, 0.0)
    await recorder.record(answer("send-0", 6, "ref-6"))
    assert (record.count, recorder.pending) == (3, 0)


async def test_a_longer_outage_is_handed_to_the_background() -> None:
    record = Attempts([_CUT, _CUT, None])
    recorder = fast(record)
    await recorder.record(answer("send-5", 11, "ref-11"))  # returns: the caller is answered
    assert (record.count, recorder.pending) == (1, 1)
    await recorder.wait()
    assert (record.count, recorder.pending) == (3, 0)


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
    record = Attempts([_CUT])
    late = fast(record)
    late.max_age_s = 0.0
    with error_lines() as lines:
        late.keep(answer("send-2", 8, "ref-8"))
        await late.wait()
    assert record.count == 1
    [line] = lines
    assert "given up" in line and "ref-8" in line


async def test_a_failure_that_is_not_an_outage_is_not_retried() -> None:
    record = Attempts([ValueError("a bug"), None])
    late = fast(record)
    with error_lines() as lines:
        late.keep(answer("send-3", 9, "ref-9"))
        await late.wait()
    assert record.count == 1
    [line] = lines
    assert "failed" in line and "ref-9" in line


async def test_stop_makes_one_last_attempt_that_can_succeed() -> None:
    record = Attempts([None])
    late = AnswerRecorder(record)
    late.late_delays_s = (3600.0,)
    late.keep(answer("send-4", 10, "ref-10"))
    await asyncio.sleep(0)  # the task starts and sleeps
    await late.stop()
    assert (record.count, late.pending) == (1, 0)
