"""Segment counting pinned on the boundaries the provider bills, and checked against
the gsm0338 codec and an independent reference splitter."""

from __future__ import annotations

from collections.abc import Callable

import gsm0338  # noqa: F401  # registers the "gsm03.38" codec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.bulk360.segments import RM0_PREFIX, count_segments, provider_prefix

try:  # an optional oracle: stale upstream, so not a declared dev dependency
    import smsutil
except ImportError:  # pragma: no cover
    smsutil = None

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "\f^{}\\[~]|€"
EMOJI = "\U0001f600"
CJK = "中"


def reference_count(full: str) -> tuple[str, int]:
    """Cut the encoded stream into fixed windows, stepping a window back by one unit
    when it would end between an ESC and its character or inside a surrogate pair.

    Deliberately a different method from the module's greedy per-character fill, and
    built on the real encodings (gsm0338 bytes, UTF-16 code units).
    """
    try:
        septets = full.encode("gsm03.38")
    except UnicodeEncodeError:
        utf16 = full.encode("utf-16-be")
        units = [int.from_bytes(utf16[i : i + 2]) for i in range(0, len(utf16), 2)]
        return "ucs2", _windows(units, 70, 67, lambda u: 0xD800 <= u <= 0xDBFF)
    return "gsm7", _windows(list(septets), 160, 153, lambda s: s == 0x1B)


def _windows(units: list[int], single: int, part: int, opens_pair: Callable[[int], bool]) -> int:
    if len(units) <= single:
        return 1
    count = start = 0
    while start < len(units):
        end = min(start + part, len(units))
        if end < len(units) and opens_pair(units[end - 1]):
            end -= 1
        count += 1
        start = end
    return count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("gsm7", 1)),
        ("a" * 160, ("gsm7", 1)),
        ("a" * 161, ("gsm7", 2)),
        ("a" * 306, ("gsm7", 2)),
        ("a" * 307, ("gsm7", 3)),
        ("a" * 459, ("gsm7", 3)),
        ("a" * 460, ("gsm7", 4)),
        (CJK * 70, ("ucs2", 1)),
        (CJK * 71, ("ucs2", 2)),
        (CJK * 134, ("ucs2", 2)),
        (CJK * 135, ("ucs2", 3)),
        # One non-GSM character turns the whole text UCS-2.
        ("a" * 69 + CJK, ("ucs2", 1)),
        ("a" * 70 + CJK, ("ucs2", 2)),
        ("a" * 159 + "ç", ("ucs2", 3)),
    ],
)
def test_boundaries(text: str, expected: tuple[str, int]) -> None:
    assert count_segments(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("€" * 80, ("gsm7", 1)),  # 160 septets
        ("€" * 81, ("gsm7", 2)),
        ("a" * 159 + "€", ("gsm7", 2)),  # 161 septets
        ("a" * 158 + "€", ("gsm7", 1)),
        # 306 septets either way; the euro decides where part 1 can end.
        ("a" * 153 + "€" + "a" * 151, ("gsm7", 2)),
        ("a" * 152 + "€" + "a" * 152, ("gsm7", 3)),
        ("a" * 152 + "€" + "a" * 151, ("gsm7", 2)),
        ("€" * 153, ("gsm7", 3)),  # 76 + 76 + 1: each part holds 152 septets
        ("\f" * 80, ("gsm7", 1)),  # form feed is an escape pair too
        ("\f" * 81, ("gsm7", 2)),
    ],
)
def test_escape_pair_never_split(text: str, expected: tuple[str, int]) -> None:
    assert count_segments(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (EMOJI * 35, ("ucs2", 1)),  # 70 code units
        (EMOJI * 36, ("ucs2", 2)),  # code-point counters say 1
        (EMOJI * 67, ("ucs2", 3)),  # 134 units, but 33 emoji fill a 67-unit part
        ("a" * 66 + EMOJI + "a" * 66, ("ucs2", 3)),
        ("a" * 67 + EMOJI + "a" * 65, ("ucs2", 2)),
        ("a" * 69 + EMOJI, ("ucs2", 2)),
        ("a" * 68 + EMOJI, ("ucs2", 1)),
        ("\ud83d", ("ucs2", 1)),  # a lone surrogate is counted, not an exception
    ],
)
def test_surrogate_pair_never_split(text: str, expected: tuple[str, int]) -> None:
    assert count_segments(text) == expected


def test_escape_is_not_gsm7_text() -> None:
    # gsm0338 encodes a bare ESC, but on the handset it would swallow the next character.
    assert count_segments("\x1b") == ("ucs2", 1)
    assert count_segments("a\x1be") == ("ucs2", 1)


def test_rm0_prefix_is_counted() -> None:
    assert RM0_PREFIX == "RM0 "
    assert count_segments("a" * 156, prefix=RM0_PREFIX) == ("gsm7", 1)
    assert count_segments("a" * 157) == ("gsm7", 1)
    assert count_segments("a" * 157, prefix=RM0_PREFIX) == ("gsm7", 2)
    assert count_segments("", prefix=RM0_PREFIX) == ("gsm7", 1)
    assert count_segments(CJK * 66, prefix=RM0_PREFIX) == ("ucs2", 1)
    assert count_segments(CJK * 67, prefix=RM0_PREFIX) == ("ucs2", 2)


@pytest.mark.parametrize(
    ("msisdn", "channel", "expected"),
    [
        ("60123240066", "sms", "RM0 "),
        ("60123240066", "whatsapp", ""),
        ("6512345678", "sms", ""),
        ("16005550100", "sms", ""),
    ],
)
def test_provider_prefix(msisdn: str, channel: str, expected: str) -> None:
    assert provider_prefix(msisdn, channel) == expected


def test_alphabet_matches_gsm0338_codec() -> None:
    # A character's weight shows as the segment count of 81 copies: 81 or 162 septets.
    encodable: dict[str, int] = {}
    for cp in range(0x10000):
        char = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or char == "\x1b":
            continue
        try:
            encodable[char] = len(char.encode("gsm03.38"))
        except UnicodeEncodeError:
            continue
    assert set(encodable) == set(GSM7_BASIC + GSM7_EXTENSION)
    assert {c for c, n in encodable.items() if n == 2} == set(GSM7_EXTENSION)
    for char, septets in encodable.items():
        assert count_segments(char * 81) == ("gsm7", septets)


GSM_CHARS = st.sampled_from(GSM7_BASIC + GSM7_EXTENSION)
ANY_CHARS = st.one_of(
    GSM_CHARS,
    st.sampled_from([EMOJI, "\U0001f44d", "\U0001f3fd", CJK, "ç", "’", "\u00a0"]),
    st.characters(exclude_categories=("Cs",), exclude_characters="\x1b"),
)
TEXTS = st.one_of(
    st.text(GSM_CHARS, max_size=500),
    st.text(st.sampled_from("a€"), max_size=500),
    st.text(st.sampled_from(["a", EMOJI]), max_size=300),
    st.text(ANY_CHARS, max_size=400),
)


def _gsm0338_encodes(text: str) -> bool:
    try:
        text.encode("gsm03.38")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=400)
@given(TEXTS)
def test_gsm7_iff_gsm0338_encodes(text: str) -> None:
    encoding, _ = count_segments(text)
    assert (encoding == "gsm7") == _gsm0338_encodes(text)


@settings(max_examples=400)
@given(TEXTS, st.sampled_from(["", RM0_PREFIX]))
def test_matches_reference_splitter(text: str, prefix: str) -> None:
    assert count_segments(text, prefix=prefix) == reference_count(prefix + text)
    assert count_segments(text, prefix=prefix) == count_segments(prefix + text)


@pytest.mark.skipif(smsutil is None, reason="smsutil (test oracle) not installed")
@settings(max_examples=400)
@given(TEXTS.filter(bool))
def test_matches_smsutil(text: str) -> None:
    # smsutil calls "" UCS-2 and a bare ESC GSM-7; TEXTS has neither.
    assert smsutil is not None
    split = smsutil.split(text)
    encoding = "gsm7" if split.encoding == "gsm0338" else "ucs2"
    assert count_segments(text) == (encoding, len(split.parts))
