"""SMS segment count as Bulk360 will bill it (GSM 03.38 / 3GPP TS 23.038, TS 23.040).

No maintained package gets this right (see shared/ECOSYSTEM.md): code-point counters call
36 emoji one segment and split escape pairs, under-reporting what the provider charges.
"""

from __future__ import annotations

from typing import Final, Literal

RM0_PREFIX: Final = "RM0 "

# Basic table less 0x1B: ESC is the switch to the extension table, not a character, so a
# literal ESC cannot be sent as GSM-7 faithfully ("\x1be" would arrive as "€").
_GSM7_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION: Final = "\f^{}\\[~]|€"
_GSM7_CHARS: Final = frozenset(_GSM7_BASIC + _GSM7_EXTENSION)

# (single-segment limit, per-part limit once a user-data header takes its share)
_LIMITS: Final = {"gsm7": (160, 153), "ucs2": (70, 67)}

Encoding = Literal["gsm7", "ucs2"]


def provider_prefix(msisdn: str, channel: str) -> str:
    """The provider prepends "RM0 " to SMS for Malaysia and bills those 4 characters."""
    return RM0_PREFIX if channel == "sms" and msisdn.startswith("60") else ""


def count_segments(text: str, *, prefix: str = "") -> tuple[Encoding, int]:
    full = prefix + text
    encoding: Encoding
    if _GSM7_CHARS.issuperset(full):
        encoding = "gsm7"
        wide = sum(full.count(c) for c in _GSM7_EXTENSION)
    else:
        encoding = "ucs2"
        # surrogatepass: a lone surrogate is still one code unit, not an exception.
        wide = len(full.encode("utf-16-le", "surrogatepass")) // 2 - len(full)
    single, part = _LIMITS[encoding]
    units = len(full) + wide
    if units <= single:
        return encoding, 1
    if not wide:
        return encoding, -(-units // part)
    return encoding, _pack(full, encoding, part)


def _pack(full: str, encoding: Encoding, part: int) -> int:
    # Greedy fill, because a two-unit character (escape pair or surrogate pair) may not
    # straddle parts: the part it would overflow ends one unit short instead.
    parts, used = 1, 0
    for char in full:
        size = 2 if (char in _GSM7_EXTENSION if encoding == "gsm7" else char > "\uffff") else 1
        if used + size > part:
            parts, used = parts + 1, 0
        used += size
    return parts
