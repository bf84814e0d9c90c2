"""Recipients of a send: parsed, normalised and validated with a numbering-plan library.

- `to` is a comma-separated string or a list of strings; each entry is one number, optionally
  prefixed `whatsapp:` (any case) to select the WhatsApp channel.
- A number starting with `+` is international; one starting with `0` is read in
  `DEFAULT_REGION` (a national number such as `012-324 0066`, or an international call prefix
  such as `0060…`); anything else is international without the `+` (`60123240066`). Spaces,
  dashes, dots and brackets are ignored.
- The number must be valid in its numbering plan (of a known type in its region's plan, which
  is what `phonenumbers.is_valid_number` checks).
- SMS goes to numbers that can receive it: fixed lines, toll-free, premium-rate, shared-cost,
  UAN and voicemail numbers are refused. WhatsApp also accepts fixed lines (a WhatsApp
  Business account may live on a landline).
- Duplicates are removed after normalisation (first occurrence kept, order kept); the same
  number on SMS and on WhatsApp is two recipients.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from app.bulk360.client import WHATSAPP_PREFIX, Channel, Destination

_IGNORED = str.maketrans("", "", " -.()\t")
_NOT_FOR_SMS = frozenset(
    {
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.UAN,
        PhoneNumberType.VOICEMAIL,
    }
)
_NOT_FOR_WHATSAPP = _NOT_FOR_SMS - {PhoneNumberType.FIXED_LINE}
_MAX_SHOWN = 40


class RecipientError(ValueError):
    """One bad entry of `to`; the message names the entry and the value."""


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= _MAX_SHOWN else raw[: _MAX_SHOWN - 3] + "...")


def split_entries(to: str | list[str]) -> list[str]:
    entries = to.split(",") if isinstance(to, str) else list(to)
    if not entries or (len(entries) == 1 and not entries[0].strip()):
        raise RecipientError("to: at least one recipient is required")
    for position, entry in enumerate(entries, start=1):
        if not entry.strip():
            raise RecipientError(f"to: entry {position} is empty (got {_shown(entry)})")
    return [entry.strip() for entry in entries]


def parse_recipient(raw: str, region: str) -> Destination:
    """One entry as a `Destination`, or `RecipientError` saying what is wrong with it."""
    channel: Channel = "sms"
    number = raw
    if raw[: len(WHATSAPP_PREFIX)].lower() == WHATSAPP_PREFIX:
        channel, number = "whatsapp", raw[len(WHATSAPP_PREFIX) :]
    compact = number.translate(_IGNORED)
    if not compact:
        raise RecipientError(f"to: no number after the channel prefix (got {_shown(raw)})")
    try:
        if compact.startswith("+"):
            parsed = phonenumbers.parse(compact, None)
        elif compact.startswith("0"):
            parsed = phonenumbers.parse(compact, region)
        else:
            parsed = phonenumbers.parse("+" + compact, None)
    except NumberParseException:
        raise RecipientError(f"to: not a phone number (got {_shown(raw)})") from None
    # `is_valid_number` is `number_type(...) != UNKNOWN` for the number's own region: one walk
    # of the numbering plan's patterns instead of two.
    number_type = phonenumbers.number_type(parsed)
    if number_type == PhoneNumberType.UNKNOWN:
        raise RecipientError(f"to: not a valid phone number (got {_shown(raw)})")
    refused = _NOT_FOR_SMS if channel == "sms" else _NOT_FOR_WHATSAPP
    if number_type in refused:
        kind = _TYPE_NAMES.get(number_type, "this kind of number")
        wanted = _CHANNEL_NAMES[channel]
        raise RecipientError(f"to: {kind} cannot receive {wanted} (got {_shown(raw)})")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return Destination(msisdn=e164.removeprefix("+"), channel=channel)


_CHANNEL_NAMES = {"sms": "SMS", "whatsapp": "WhatsApp messages"}
_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "a fixed-line number",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.UAN: "a universal access number",
    PhoneNumberType.VOICEMAIL: "a voicemail number",
}


def normalise_recipients(to: str | list[str], *, region: str, limit: int) -> list[Destination]:
    """Unique destinations in request order; `RecipientError` for the first bad entry."""
    seen: set[Destination] = set()
    result: list[Destination] = []
    for raw in split_entries(to):
        dest = parse_recipient(raw, region)
        if dest in seen:
            continue
        seen.add(dest)
        result.append(dest)
        if len(result) > limit:
            raise RecipientError(
                f"to: at most {limit} recipients per request (MAX_RECIPIENTS); got more"
            )
    return result
