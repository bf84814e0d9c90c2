"""Bulk360 response codes and delivery-notification (DN) error codes.

Descriptions are copied verbatim from the Bulk360 API v2.0 document, typos included
("not verify", "not while listed"): they are what support staff will search the
provider's portal and tickets for, so they must match the provider's wording.
"""

from __future__ import annotations

from typing import Final

UNRECOGNISED_SUBMIT_CODE: Final = "Unrecognised response code"
UNRECOGNISED_ERROR_CODE: Final = "Unrecognised error code"

# Doc order is kept: GET /v1/error-codes lists the tables in this order.
SUBMIT_CODES: Final[dict[int, str]] = {
    200: "OK",
    400: "Missing parameters or invalid field type",
    401: "Invalid Username or password",
    402: "Insufficient Account credit",
    403: (
        "Email or Mobile Number not verify, message API not enabled, "
        "requested IP not whitelisted or not enabled"
    ),
    405: "Invalid Message Type",
    406: (
        "Message content is not approved If you sending Whatsapp Message, "
        "please submit your WhatsApp message content for approval"
    ),
    407: "Banned Content detected. Your account is suspended",
    412: "Account suspended / Terminated / Not activated",
    413: "Account under observation mode, limited features enabled",
    500: "Internal server error",
}

DN_ERROR_CODES: Final[dict[str, str]] = {
    "000": "No Error",
    "50": "Unknown Error / Not specify",
    "501": "Absent Subscriber",
    "502": (
        "Handset memory capacity exceeded. Handset has run out of free memory to store new message"
    ),
    "503": "Equipment protocol error",
    "504": "Equipment not equipped with short-message capability",
    "505": "Unknown subscriber. The IMSI is unknown in the HLR",
    "506": "Illegal subscriber. The mobile station failed authentication",
    "507": (
        "Teleservice not provisioned. Mobile subscription identified by the mobile number "
        "does include the short message service"
    ),
    "508": (
        "Illegal equipment. IMEI check failed, "
        "i.e. the IMEI is either black listed or not white listed"
    ),
    "509": "Call barred. Operator barred the mobile number",
    "510": "Facility not supported. VLR in the PLMN does not support MT short message service",
    "511": "Subscriber busy for MT short message",
    "512": "System failure. Task cannot be completed because of a problem in another entity",
    "513": "Data missing. Necessary parameter is not present in the primitive",
    "514": "Unexpected data value. Necessary data is badly formatted in the primitive",
    "515": "Unidentified subscriber",
    "516": "Absent subscriber. No paging response",
    "517": "Absent subscriber. IMSI detached",
    "518": "Absent subscriber. Roaming restriction",
    "547": "Application context not supported",
    "550": "Temporary error received from peer SMSC",
    "551": (
        "SMS malformed. SMS is not formed correctly. "
        "This error is specific to IP-based protocols like SMPP"
    ),
    "552": "SMS expired",
    "553": (
        "Insufficient credit. "
        "The user has insufficient credit/not allowed to send to that destination"
    ),
    "554": "Invalid destination. Receiver is not a valid number",
    "555": "Unable to find outbound route for this SMS",
    "556": "SMS buffered",
    "557": "Timeout waiting for response from peer",
    "558": "Throttling error. The user has exceeded allowed message limit",
    "561": "Subscriber blacklisted",
    "562": "Subscriber not white listed",
    "569": "Invalid sender ID",
    "571": "Subscriber opted out from receiving SMS",
    "574": "SMS rejected. Error received from peer SMSC",
    "575": "SMS rejected. Inappropriate SMS content",
    "576": "Sender ID blacklisted",
    "577": "Sender ID not while listed",
}

DN_STATUSES: Final = ("DELIVERED", "UNDELIVERED")

_DN_STATUS_TO_MESSAGE_STATUS: Final = {"DELIVERED": "delivered", "UNDELIVERED": "undelivered"}


def submit_description(code: int) -> str:
    return SUBMIT_CODES.get(code, UNRECOGNISED_SUBMIT_CODE)


def normalise_error_code(raw: str | None) -> str | None:
    """One spelling per code, so "0"/"00"/"000" and "50"/"050" are stored and counted once.

    Telcos pad inconsistently; the doc itself writes "000" and "50" side by side.
    """
    if raw is None:
        return None
    code = raw.strip()
    if not code:
        return None
    # isascii() as well: str.isdigit() accepts e.g. Arabic-Indic digits, which no telco sends.
    if code.isascii() and code.isdigit():
        return code.lstrip("0") or "000"
    return code


def describe_error_code(raw: str | None) -> str | None:
    code = normalise_error_code(raw)
    if code is None:
        return None
    return DN_ERROR_CODES.get(code, UNRECOGNISED_ERROR_CODE)


def message_status_for_dn(status: str) -> str | None:
    """None for anything else, so the caller keeps the raw status rather than guessing."""
    return _DN_STATUS_TO_MESSAGE_STATUS.get(status.strip().upper())


def error_code_tables() -> dict[str, list[dict[str, str]]]:
    # Built per call: the caller gets lists it may mutate without touching module state.
    return {
        "submit_codes": [
            {"code": str(code), "description": text} for code, text in SUBMIT_CODES.items()
        ],
        "dn_error_codes": [
            {"code": code, "description": text} for code, text in DN_ERROR_CODES.items()
        ],
    }
