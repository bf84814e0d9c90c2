"""The provider's two code tables, pinned against the Bulk360 API v2.0 document."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bulk360.codes import (
    DN_CATEGORIES,
    DN_ERROR_CODES,
    DN_STATUSES,
    NON_FINAL_DN_CODES,
    SUBMIT_CATEGORIES,
    SUBMIT_CODES,
    ErrorCategory,
    describe_error_code,
    dn_error_category,
    error_code_tables,
    message_error_category,
    normalise_error_code,
    submit_description,
    submit_error_category,
)

# Copied from shared/bulk360-api-v2.txt (the response-code table, with its DELIVERED and
# UNDELIVERED rows, then the DN error-code table). Kept here so CI does not depend on the
# shared folder; test_doc_excerpt_matches_the_shared_doc catches the two drifting apart.
DOC_ROWS = """\
200 | OK |
400 | Missing parameters or invalid field type |
401 | Invalid Username or password |
402 | Insufficient Account credit |
403 | Email or Mobile Number not verify, message API not enabled, requested IP not whitelisted or not enabled |
405 | Invalid Message Type |
406 | Message content is not approved If you sending Whatsapp Message, please submit your WhatsApp message content for approval |
407 | Banned Content detected. Your account is suspended |
412 | Account suspended / Terminated / Not activated |
413 | Account under observation mode, limited features enabled |
500 | Internal server error |
DELIVERED | Message successfully delivered to the mobile handset |
UNDELIVERED | Message failed to be delivered to the mobile handset |
000 | No Error |
50 | Unknown Error / Not specify |
501 | Absent Subscriber |
502 | Handset memory capacity exceeded. Handset has run out of free memory to store new message |
503 | Equipment protocol error |
504 | Equipment not equipped with short-message capability |
505 | Unknown subscriber. The IMSI is unknown in the HLR |
506 | Illegal subscriber. The mobile station failed authentication |
507 | Teleservice not provisioned. Mobile subscription identified by the mobile number does include the short message service |
508 | Illegal equipment. IMEI check failed, i.e. the IMEI is either black listed or not white listed |
509 | Call barred. Operator barred the mobile number |
510 | Facility not supported. VLR in the PLMN does not support MT short message service |
511 | Subscriber busy for MT short message |
512 | System failure. Task cannot be completed because of a problem in another entity |
513 | Data missing. Necessary parameter is not present in the primitive |
514 | Unexpected data value. Necessary data is badly formatted in the primitive |
515 | Unidentified subscriber |
516 | Absent subscriber. No paging response |
517 | Absent subscriber. IMSI detached |
518 | Absent subscriber. Roaming restriction |
547 | Application context not supported |
550 | Temporary error received from peer SMSC |
551 | SMS malformed. SMS is not formed correctly. This error is specific to IP-based protocols like SMPP |
552 | SMS expired |
553 | Insufficient credit. The user has insufficient credit/not allowed to send to that destination |
554 | Invalid destination. Receiver is not a valid number |
555 | Unable to find outbound route for this SMS |
556 | SMS buffered |
557 | Timeout waiting for response from peer |
558 | Throttling error. The user has exceeded allowed message limit |
561 | Subscriber blacklisted |
562 | Subscriber not white listed |
569 | Invalid sender ID |
571 | Subscriber opted out from receiving SMS |
574 | SMS rejected. Error received from peer SMSC |
575 | SMS rejected. Inappropriate SMS content |
576 | Sender ID blacklisted |
577 | Sender ID not while listed |
"""  # noqa: E501

SHARED_DOC = Path(__file__).resolve().parents[2] / "docs" / "bulk360-api-v2.txt"


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in DOC_ROWS.splitlines():
        code, description = line.split(" | ", 1)
        rows.append((code, description.removesuffix(" |")))
    return rows


def _doc_submit_rows() -> list[tuple[str, str]]:
    rows = _rows()
    end = next(i for i, (code, _) in enumerate(rows) if code == "DELIVERED")
    return rows[:end]


def _doc_dn_rows() -> list[tuple[str, str]]:
    rows = _rows()
    start = next(i for i, (code, _) in enumerate(rows) if code == "UNDELIVERED") + 1
    return rows[start:]


def test_doc_excerpt_matches_the_shared_doc() -> None:
    doc_lines = SHARED_DOC.read_text(encoding="utf-8").splitlines()
    for row in DOC_ROWS.splitlines():
        assert row in doc_lines


def test_submit_codes_are_the_doc_table_in_doc_order() -> None:
    expected = [(int(code), text) for code, text in _doc_submit_rows()]
    assert list(SUBMIT_CODES.items()) == expected
    assert [code for code, _ in expected] == [
        200,
        400,
        401,
        402,
        403,
        405,
        406,
        407,
        412,
        413,
        500,
    ]


def test_dn_error_codes_are_the_doc_table_in_doc_order() -> None:
    assert list(DN_ERROR_CODES.items()) == _doc_dn_rows()
    assert len(DN_ERROR_CODES) == 38
    assert DN_ERROR_CODES["000"] == "No Error"
    assert DN_ERROR_CODES["50"] == "Unknown Error / Not specify"
    # The provider's own typo is kept: support searches for the provider's words.
    assert DN_ERROR_CODES["577"] == "Sender ID not while listed"


@pytest.mark.parametrize(("code", "text"), [(int(c), t) for c, t in _doc_submit_rows()])
def test_submit_description_for_every_doc_row(code: int, text: str) -> None:
    assert submit_description(code) == text


def test_submit_description_for_an_unlisted_code() -> None:
    assert submit_description(404) == "Unrecognised response code"


@pytest.mark.parametrize(("code", "text"), _doc_dn_rows())
def test_describe_error_code_for_every_doc_row(code: str, text: str) -> None:
    assert describe_error_code(code) == text
    assert describe_error_code(f" {code}\n") == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0", "000"),
        ("00", "000"),
        ("000", "000"),
        (" 000 ", "000"),
        ("0000", "000"),
        ("50", "50"),
        ("050", "50"),
        ("0050", "50"),
        ("501", "501"),
        ("0501", "501"),
        ("999", "999"),
        ("E12", "E12"),
        (" abc ", "abc"),
        ("-1", "-1"),
        ("\u0665\u0660", "\u0665\u0660"),  # Arabic-Indic "50" is not a telco code
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_normalise_error_code(raw: str | None, expected: str | None) -> None:
    assert normalise_error_code(raw) == expected


def test_zero_spellings_are_one_code() -> None:
    described = {describe_error_code(raw) for raw in ("0", "00", "000", " 0 ")}
    assert described == {"No Error"}
    assert describe_error_code("050") == describe_error_code("50") == "Unknown Error / Not specify"


@pytest.mark.parametrize("raw", ["999", "5", "500", "0577x", "ERR", "519"])
def test_describe_unlisted_error_code(raw: str) -> None:
    assert describe_error_code(raw) == "Unrecognised error code"


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_describe_missing_error_code(raw: str | None) -> None:
    assert describe_error_code(raw) is None


def test_dn_statuses_are_the_doc_rows() -> None:
    assert DN_STATUSES == ("DELIVERED", "UNDELIVERED")
    codes = [code for code, _ in _rows()]
    assert all(status in codes for status in DN_STATUSES)


def test_error_code_tables_payload() -> None:
    tables = error_code_tables()
    assert list(tables) == ["submit_codes", "dn_error_codes"]
    assert tables["submit_codes"][0] == {"code": "200", "description": "OK", "category": "none"}
    assert tables["dn_error_codes"][0] == {
        "code": "000",
        "description": "No Error",
        "category": "none",
    }
    assert [(r["code"], r["description"]) for r in tables["submit_codes"]] == _doc_submit_rows()
    assert [(r["code"], r["description"]) for r in tables["dn_error_codes"]] == _doc_dn_rows()


def test_error_code_tables_are_fresh_per_call() -> None:
    first = error_code_tables()
    first["submit_codes"].clear()
    assert len(error_code_tables()["submit_codes"]) == len(SUBMIT_CODES)


# ---- error categories (CONTRACT §4.6) ------------------------------------------------------


def _doc_table(header: str) -> list[str]:
    """The codes of one table of the provider document, read from its text."""
    lines = SHARED_DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2  # past the header and its |---| rule
    codes = []
    for line in lines[start:]:
        code, sep, _ = line.partition(" | ")
        if not sep or not code.isdigit():
            break
        codes.append(code)
    return codes


def test_every_code_of_both_doc_tables_has_a_category() -> None:
    submit = _doc_table("Response Code | Description |")
    dn = _doc_table("Error Code | Description |")

    assert len(submit) == 11
    assert len(dn) == 38
    assert {int(code) for code in submit} == set(SUBMIT_CATEGORIES)
    assert set(dn) == set(DN_CATEGORIES)
    for code in submit:
        assert submit_error_category(int(code)) in ErrorCategory
    for code in dn:
        assert dn_error_category(code) in ErrorCategory


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("000", "none"),
        ("0", "none"),
        ("50", "unknown"),
        ("050", "unknown"),
        ("501", "temporary"),  # absent subscriber
        ("511", "temporary"),  # busy
        ("505", "permanent"),  # unknown subscriber
        ("509", "permanent"),  # call barred
        ("553", "account"),  # insufficient credit
        ("569", "account"),  # invalid sender ID
        ("558", "account"),  # throttling
        ("552", "expired"),
        ("556", "temporary"),  # buffered: not final, still trying
        ("519", "unknown"),  # unlisted
        ("E12", "unknown"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_dn_error_category(code: str | None, category: str) -> None:
    assert dn_error_category(code) == category


@pytest.mark.parametrize(
    ("code", "category"),
    [(200, "none"), (402, "account"), (412, "account"), (500, "temporary"), (404, "unknown")],
)
def test_submit_error_category(code: int, category: str) -> None:
    assert submit_error_category(code) == category
    assert submit_error_category(None) == "unknown"


@pytest.mark.parametrize(
    ("status", "error_code", "submit_code", "category"),
    [
        ("delivered", "000", 200, "none"),
        ("delivered", None, 200, "none"),
        ("delivered", "50", 200, "none"),  # delivered did not fail, whatever 50 adds
        ("pending", None, 200, "none"),
        ("pending", "556", 200, "temporary"),
        ("undelivered", "501", 200, "temporary"),
        ("undelivered", "505", 200, "permanent"),
        ("undelivered", None, 200, "unknown"),
        ("undelivered", "50", 200, "unknown"),
        ("rejected", None, 402, "account"),
        ("rejected", None, None, "unknown"),
        ("expired", None, 200, "expired"),
        ("expired", "556", 200, "expired"),  # expired while buffered
        ("expired", "552", 200, "expired"),
        ("unknown", None, None, "unknown"),
    ],
)
def test_message_error_category(
    status: str, error_code: str | None, submit_code: int | None, category: str
) -> None:
    assert message_error_category(status, error_code, submit_code) == category


def test_only_sms_buffered_is_not_final() -> None:
    assert frozenset({"556"}) == NON_FINAL_DN_CODES
    assert all(code in DN_ERROR_CODES for code in NON_FINAL_DN_CODES)
