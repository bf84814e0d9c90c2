"""Bulk360 response codes and delivery-notification (DN) error codes, with their categories.

Descriptions are copied verbatim from the Bulk360 API v2.0 document, typos included
("not verify", "not while listed"): they are what support staff will search the
provider's portal and tickets for, so they must match the provider's wording.

Every code of both tables has an `ErrorCategory` (CONTRACT §4.6), answering "what can be done
about it": wait (`temporary`), stop sending to this number (`permanent`), fix something on the
sender's side (`account`), or nothing known (`unknown`). Bulk360's DN texts are the SMPP
gateway table "500 + code" of GSM MAP / SMPP delivery errors, so each DN code sits where
carriers and large platforms put the same condition (Vonage DLR err-codes, Infobip
EC_* groups, Telesign 210/211, SMPP 3.4 Appendix B); the reason is beside each code.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ErrorCategory(StrEnum):
    NONE = "none"  # no error
    TEMPORARY = "temporary"  # the recipient or the network may recover: a later try may work
    PERMANENT = "permanent"  # this number will not receive: stop sending to it
    ACCOUNT = "account"  # to fix on the sender's side: credit, sender ID, content, route
    EXPIRED = "expired"  # no final outcome within the validity period
    UNKNOWN = "unknown"  # code 50, an unlisted code, or no code


_C = ErrorCategory

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

# Every submit code is either success, the sender's to fix, or the provider's own failure:
# none of them says anything about the recipient.
SUBMIT_CATEGORIES: Final[dict[int, ErrorCategory]] = {
    200: _C.NONE,
    400: _C.ACCOUNT,  # the request as built: the relay validates, so a sender ID or a relay bug
    401: _C.ACCOUNT,  # credentials (APP_KEY/APP_SECRET)
    402: _C.ACCOUNT,  # credit: top up
    403: _C.ACCOUNT,  # account not verified, API not enabled, IP not whitelisted
    405: _C.ACCOUNT,  # a message type (channel) the account may not use
    406: _C.ACCOUNT,  # content not approved (WhatsApp templates)
    407: _C.ACCOUNT,  # banned content, account suspended
    412: _C.ACCOUNT,  # account suspended / terminated / not activated
    413: _C.ACCOUNT,  # account in observation mode
    # The provider failed before deciding; like MAP "system failure" a later try may work.
    500: _C.TEMPORARY,
}

DN_CATEGORIES: Final[dict[str, ErrorCategory]] = {
    "000": _C.NONE,
    "50": _C.UNKNOWN,  # "Unknown Error / Not specify": no public meaning
    "501": _C.TEMPORARY,  # MAP absentSubscriber: phone off or out of coverage (Vonage: retry)
    "502": _C.TEMPORARY,  # MAP memoryCapacityExceeded: the handset frees memory, SMSC alerted
    "503": _C.TEMPORARY,  # MAP equipmentProtocolError: a handset fault, often gone on restart
    "504": _C.PERMANENT,  # MAP equipmentNotSM-Equipped: the device cannot take SMS at all
    "505": _C.PERMANENT,  # MAP unknownSubscriber (Infobip EC_UNKNOWN_SUBSCRIBER, Telesign 211)
    "506": _C.PERMANENT,  # MAP illegalSubscriber: failed authentication, not a usable line
    "507": _C.PERMANENT,  # MAP teleserviceNotProvisioned: the subscription has no SMS
    "508": _C.PERMANENT,  # MAP illegalEquipment: IMEI blacklisted, the device is refused
    "509": _C.PERMANENT,  # MAP callBarred: the operator barred the number (Vonage: permanent)
    "510": _C.PERMANENT,  # MAP facilityNotSupported: the serving network cannot deliver MT SMS
    "511": _C.TEMPORARY,  # MAP subscriberBusyForMT-SMS: busy now (Vonage: retry)
    "512": _C.TEMPORARY,  # MAP systemFailure in another network element
    "513": _C.TEMPORARY,  # MAP dataMissing: a signalling fault between networks, not the number
    "514": _C.TEMPORARY,  # MAP unexpectedDataValue: same, a malformed signalling primitive
    "515": _C.TEMPORARY,  # MAP unidentifiedSubscriber: the VLR lost it; SMSCs treat it as absent
    "516": _C.TEMPORARY,  # absent: no paging response
    "517": _C.TEMPORARY,  # absent: IMSI detached (phone off)
    "518": _C.TEMPORARY,  # absent: roaming restriction, lifted when the subscriber moves
    "547": _C.TEMPORARY,  # MAP version mismatch between networks: SMSCs fall back and retry
    "550": _C.TEMPORARY,  # the peer SMSC itself calls it temporary
    "551": _C.ACCOUNT,  # malformed SMS: what was submitted must change (SMPP ESME_RINVMSGLEN…)
    "552": _C.EXPIRED,  # validity period ran out before delivery (SMPP EXPIRED)
    "553": _C.ACCOUNT,  # credit, or the account may not send to that destination
    "554": _C.PERMANENT,  # not a valid number (SMPP ESME_RINVDSTADR)
    "555": _C.ACCOUNT,  # no route for this destination on the account: the provider must add one
    "556": _C.TEMPORARY,  # buffered for retry: not final (NON_FINAL_DN_CODES)
    "557": _C.TEMPORARY,  # the peer did not answer in time
    "558": _C.ACCOUNT,  # throttled: the sender exceeded its rate (SMPP ESME_RTHROTTLED)
    "561": _C.PERMANENT,  # the recipient is blacklisted
    "562": _C.ACCOUNT,  # the account may only send to whitelisted numbers: add it there
    "569": _C.ACCOUNT,  # invalid sender ID (SMPP ESME_RINVSRCADR)
    "571": _C.PERMANENT,  # the recipient opted out: sending again is not allowed
    # A rejection with no stated reason (SMPP ESME_RSUBMITFAIL): the number, the content or
    # the route may be the cause. Calling it permanent could make a client drop a good number.
    "574": _C.UNKNOWN,
    "575": _C.ACCOUNT,  # inappropriate content
    "576": _C.ACCOUNT,  # sender ID blacklisted
    "577": _C.ACCOUNT,  # sender ID not whitelisted
}

# "SMS buffered": the provider stored the message and keeps trying, so the DN is kept but
# decides nothing; a later DN (or the expiry sweep) does.
NON_FINAL_DN_CODES: Final = frozenset({"556"})

# The final DN statuses: app/delivery.py builds "the last DN received is final" from them.
DN_STATUSES: Final = ("DELIVERED", "UNDELIVERED")


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


def submit_error_category(code: int | None) -> ErrorCategory:
    if code is None:
        return ErrorCategory.UNKNOWN
    return SUBMIT_CATEGORIES.get(code, ErrorCategory.UNKNOWN)


def dn_error_category(code: str | None) -> ErrorCategory:
    """Any spelling of a code ("0", " 501 "); no code or an unlisted one is `unknown`."""
    normalised = normalise_error_code(code)
    if normalised is None:
        return ErrorCategory.UNKNOWN
    return DN_CATEGORIES.get(normalised, ErrorCategory.UNKNOWN)


def message_error_category(
    status: str, error_code: str | None, submit_code: int | None
) -> ErrorCategory:
    """The category of a message (`status` is the relay's) or of one DN (its mapped status).

    `error_code` is the last DN's, `submit_code` the provider's answer to the send. Edges:
    - delivered: the DN code's category when it names a condition, else `none`: a delivered
      message did not fail, whatever "50" or an unlisted code may add.
    - pending: `none` until a DN says more (556 buffered → `temporary`): nothing failed yet.
    - rejected: the submit code decides (a DN cannot exist without a ref); never `none`.
    - expired: `expired`, unless the last DN was a final code (then that code decides); the
      non-final 556 does not count, the message expired while buffered.
    - undelivered, unknown, anything else: the DN code's category; no code is `unknown`.
    """
    code = normalise_error_code(error_code)
    if status == "rejected":
        category = submit_error_category(submit_code)
        return ErrorCategory.UNKNOWN if category is ErrorCategory.NONE else category
    if status in ("delivered", "pending"):
        category = dn_error_category(code)
        return ErrorCategory.NONE if category is ErrorCategory.UNKNOWN else category
    if status == "expired" and (code is None or code in NON_FINAL_DN_CODES):
        return ErrorCategory.EXPIRED
    return dn_error_category(code)


def error_code_tables() -> dict[str, list[dict[str, str]]]:
    # Built per call: the caller gets lists it may mutate without touching module state.
    return {
        "submit_codes": [
            {"code": str(code), "description": text, "category": submit_error_category(code)}
            for code, text in SUBMIT_CODES.items()
        ],
        "dn_error_codes": [
            {"code": code, "description": text, "category": dn_error_category(code)}
            for code, text in DN_ERROR_CODES.items()
        ],
    }
