"""The send's outcome without a database: entries from the provider's answers, the failure
that names the answer, its HTTP status and body."""

from __future__ import annotations

import orjson
import pytest

from app.bulk360.client import (
    AccountProblemError,
    AmbiguousError,
    BatchResult,
    Bulk360Error,
    Destination,
    InsufficientCreditError,
    Submission,
    UnreachableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.messages import outcome

SMS = Destination("60123240066", "sms")
UK = Destination("447911123456", "sms")
WA = Destination("60166600267", "whatsapp")


def accepted(ref: str, rate: str | None = "0.11") -> Submission:
    return Submission(200, "OK", ref, rate, "MYR" if rate else None)


def test_prepare_counts_segments_with_the_rm0_prefix_for_malaysian_sms_only() -> None:
    my, uk, wa = outcome.prepare("x" * 157, [SMS, UK, WA])
    assert (my.encoding, my.segments) == ("gsm7", 2)
    assert (uk.encoding, uk.segments) == ("gsm7", 1)
    assert (wa.encoding, wa.segments) == (None, None)
    assert all(e.status == "unknown" and e.ref is None for e in (my, uk, wa))


def test_accepted_and_rejected_recipients_are_filled_in() -> None:
    entries = outcome.prepare("hi", [SMS, WA])
    batch = BatchResult(
        [0, 1], [accepted("ref-1"), Submission(405, "Invalid Message Type", None, None, None)]
    )
    assert outcome.apply(entries, [batch]) is None
    ok, refused = entries
    assert (ok.status, ok.ref, ok.code, ok.rate, ok.answered) == (
        "pending",
        "ref-1",
        200,
        "0.11",
        True,
    )
    assert (refused.status, refused.code, refused.outcome) == ("rejected", 405, "rejected")


def test_a_recipient_the_answer_does_not_mention_stays_unknown_and_is_ambiguous() -> None:
    entries = outcome.prepare("hi", [SMS, UK])
    failure = outcome.apply(entries, [BatchResult([0, 1], [accepted("ref-1"), None])])
    assert isinstance(failure, AmbiguousError)
    assert [e.status for e in entries] == ["pending", "unknown"]
    assert outcome.http_status(failure) == (502, "upstream_error")


def test_an_ambiguous_request_leaves_its_entries_unknown_and_a_refusal_rejects_them() -> None:
    entries = outcome.prepare("hi", [SMS, UK, WA])
    failure = outcome.apply(
        entries,
        [
            BatchResult([0, 1], [], error=UpstreamTimeoutError("no answer in time")),
            BatchResult([2], [], error=InsufficientCreditError("Insufficient credit", 402)),
        ],
    )
    assert isinstance(failure, UpstreamTimeoutError)  # the worst: the provider may have sent
    assert [(e.status, e.code) for e in entries] == [
        ("unknown", None),
        ("unknown", None),
        ("rejected", 402),
    ]
    assert entries[2].outcome == "insufficient_credit"
    assert entries[0].desc == "no answer in time"


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        ([UnreachableError("x"), UpstreamTimeoutError("t")], (504, "upstream_timeout")),
        (
            [AccountProblemError("a", 403), InsufficientCreditError("c", 402)],
            (402, "insufficient_credit"),
        ),
        ([UnreachableError("x"), AccountProblemError("a", 403)], (502, "upstream_account_problem")),
        ([UnreachableError("x")], (502, "upstream_unavailable")),
        ([], (201, None)),
    ],
)
def test_the_worst_failure_names_the_answer(
    failures: list[Bulk360Error], expected: tuple[int, str | None]
) -> None:
    assert outcome.http_status(outcome.worst(failures)) == expected


def test_the_lowest_balance_reported_is_the_latest() -> None:
    batches = [
        BatchResult([0], [accepted("a")], balance="10.5", currency="MYR"),
        BatchResult([1], [accepted("b")], balance="9.75", currency="MYR"),
        BatchResult([2], [], error=UnreachableError("x")),
    ]
    assert outcome.balance(batches) == ("9.75", "MYR")
    assert outcome.balance([BatchResult([0], [], error=UnreachableError("x"))]) == (None, None)


def test_the_body_lists_every_entry_in_order_and_detail_false_hides_money() -> None:
    entries = outcome.prepare("hi", [SMS, WA])
    outcome.apply(entries, [BatchResult([0, 1], [accepted("r1"), accepted("r2", "0.2")])])
    entries[0].id, entries[1].id = 41, 42
    status, raw = outcome.answer(
        entries, failure=None, balance="9.75", currency="MYR", detail=False, sandbox=True
    )
    body = orjson.loads(raw)
    assert status == 201 and "error" not in body
    assert [(m["id"], m["to"], m["ref"]) for m in body["messages"]] == [
        (41, "60123240066", "r1"),
        (42, "whatsapp:60166600267", "r2"),
    ]
    assert body["balance"] is None and body["currency"] is None and body["sandbox"] is True
    assert all(m["rate"] is None and m["currency"] is None for m in body["messages"])


def test_an_error_body_carries_error_detail_and_every_entry() -> None:
    entries = outcome.prepare("hi", [SMS])
    failure = outcome.apply(
        entries, [BatchResult([0], [], error=UpstreamError("reset; it may have sent"))]
    )
    status, raw = outcome.answer(
        entries, failure=failure, balance=None, currency=None, detail=True, sandbox=False
    )
    body = orjson.loads(raw)
    assert status == 502
    assert (body["error"], body["detail"]) == ("upstream_error", "reset; it may have sent")
    assert body["messages"][0]["status"] == "unknown"
