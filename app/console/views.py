"""What the console's templates show, computed in Python: times in UTC and in the operator's
zone, the hourly chart's geometry, CSV rows, parsing of the messages page's filters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from markupsafe import Markup
from phonenumbers import timezone as phone_timezones

from app.bulk360.codes import message_error_category
from app.console.repository import MessageFilter
from app.delivery import category_of_dn
from app.errors import AppError
from app.messages.lookup import normalise_to
from app.models import DeliveryNotification, Message
from app.vocabulary import Channel, MessageStatus

STATUSES: tuple[str, ...] = tuple(MessageStatus)
CHANNELS: tuple[str, ...] = tuple(Channel)

# The zone operators of a region read their clocks in. phonenumbers knows the zones of a
# region's numbers, but names an arbitrary one where there are several (MY: Asia/Kuching, the
# same UTC+8 as Kuala Lumpur, but not the name a Kuala Lumpur operator expects).
_REGION_ZONES = {
    "MY": "Asia/Kuala_Lumpur",
    "SG": "Asia/Singapore",
    "ID": "Asia/Jakarta",
    "TH": "Asia/Bangkok",
    "PH": "Asia/Manila",
    "BN": "Asia/Brunei",
    "VN": "Asia/Ho_Chi_Minh",
    "HK": "Asia/Hong_Kong",
    "IN": "Asia/Kolkata",
    "AU": "Australia/Sydney",
    "GB": "Europe/London",
    "US": "America/New_York",
}


@lru_cache
def region_zone(region: str) -> ZoneInfo:
    """DEFAULT_REGION's time zone: the map above, else the first zone phonenumbers gives the
    region's example mobile number, else UTC."""
    name = _REGION_ZONES.get(region)
    if name is None:
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        zones = phone_timezones.time_zones_for_number(example) if example else ()
        name = zones[0] if zones and zones[0] != "Etc/Unknown" else "UTC"
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:  # no tz database (Windows without the tzdata package)
        return ZoneInfo("UTC")


def when(value: datetime | None, zone: ZoneInfo) -> Markup:
    """A time in UTC, then in the operator's zone: `<time>` with the exact ISO value."""
    if value is None:
        return Markup('<span class="none">—</span>')
    utc = value.astimezone(UTC)
    local = utc.astimezone(zone)
    return Markup(
        '<time datetime="{iso}">{utc} UTC</time> <span class="local">{local} {abbr}</span>'
    ).format(
        iso=utc.isoformat(),
        utc=utc.strftime("%Y-%m-%d %H:%M:%S"),
        local=local.strftime("%Y-%m-%d %H:%M:%S"),
        abbr=_zone_label(local),
    )


def _zone_label(local: datetime) -> str:
    # "+08" reads better than Python's "%Z" for zones whose abbreviation is a number anyway.
    offset = local.utcoffset() or timedelta(0)
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    label = f"UTC{hours:+d}" + (f":{rest // 60:02d}" if rest else "")
    return label if hours or rest else "UTC"


# ---- the messages page's filters ---------------------------------------------------------


@dataclass
class FilterForm:
    """The messages page's query string as typed, and the problems found in it."""

    q: str = ""
    status: str = ""
    channel: str = ""
    since: str = ""  # datetime-local in the operator's zone, or ISO 8601 with an offset
    until: str = ""
    problems: tuple[str, ...] = field(default=(), kw_only=True)

    def query_string(self, **extra: str) -> str:
        from urllib.parse import urlencode

        fields = {k: getattr(self, k) for k in ("q", "status", "channel", "since", "until")}
        return urlencode({k: v for k, v in (fields | extra).items() if v})


def read_filters(params: dict[str, str], region: str, zone: ZoneInfo) -> tuple[FilterForm, Any]:
    """(the form as typed, a MessageFilter or None when a value is invalid)."""
    form = FilterForm(*(params.get(k, "").strip()[:128] for k in _FORM_FIELDS))
    problems: list[str] = []
    msisdn = None
    channel = form.channel or None
    if form.q:
        try:
            msisdn, prefixed = normalise_to(form.q, region)
            channel = channel or prefixed
        except AppError:
            msisdn = None  # not a phone number: a ref or a client_ref
    if form.status and form.status not in STATUSES:
        problems.append(f"Status: {form.status!r} is not one of {', '.join(STATUSES)}")
    if form.channel and form.channel not in CHANNELS:
        problems.append(f"Channel: {form.channel!r} is not one of {', '.join(CHANNELS)}")
    since = _read_time("From", form.since, zone, problems)
    until = _read_time("To", form.until, zone, problems)
    if "\x00" in form.q:
        problems.append("Search: must not contain NUL characters")
    form.problems = tuple(problems)
    if problems:
        return form, None
    return form, MessageFilter(
        q=form.q or None,
        msisdn=msisdn,
        status=form.status or None,
        channel=channel,
        since=since,
        until=until,
    )


_FORM_FIELDS = ("q", "status", "channel", "since", "until")


def _read_time(label: str, raw: str, zone: ZoneInfo, problems: list[str]) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        problems.append(f"{label}: {raw!r} is not a date and time (2026-11-30T08:00)")
        return None
    # An `<input type="datetime-local">` sends no offset: it is the operator's local time.
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


# ---- the hourly chart --------------------------------------------------------------------

CHART_STACK = ("delivered", "pending", "undelivered", "expired", "rejected", "unknown")
CHART_W, CHART_H, CHART_TOP = 720, 160, 8


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    status: str


@dataclass(frozen=True)
class Column:
    """One hour: its stacked segments and one tooltip for them all."""

    x: float
    width: float
    title: str
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    columns: list[Column]
    ticks: list[str]  # evenly spaced labels from the first hour to the end (operator's time)
    peak: int
    width: int = CHART_W
    height: int = CHART_H


def hourly_chart(
    series: Iterable[tuple[datetime, dict[str, int]]], zone: ZoneInfo, hours: int
) -> Chart:
    """Stacked bars, one per hour, in an SVG viewBox of CHART_W x CHART_H (scaled by CSS).
    The tick labels are HTML under the SVG: text inside a stretched SVG would be squeezed."""
    buckets = list(series)
    peak = max((sum(counts.values()) for _, counts in buckets), default=0)
    slot = CHART_W / max(hours, 1)
    scale = (CHART_H - CHART_TOP) / peak if peak else 0.0
    columns: list[Column] = []
    for i, (start, counts) in enumerate(buckets):
        if not any(counts.values()):
            continue
        top = float(CHART_H)
        segments = []
        for status in CHART_STACK:
            if n := counts.get(status, 0):
                top -= n * scale
                segments.append(Segment(round(top, 2), round(n * scale, 2), status))
        local = start.astimezone(zone)
        title = f"{local:%d %b %H:00} ({_zone_label(local)}): " + ", ".join(
            f"{counts[s]} {s}" for s in CHART_STACK if counts.get(s)
        )
        # 85% of the slot: a gap between hours.
        columns.append(Column(round(i * slot, 2), round(slot * 0.85, 2), title, segments))
    step = 6 if hours <= 48 else 24
    first = buckets[0][0] if buckets else datetime.now(UTC)
    fmt = "%H:%M" if step < 24 else "%d %b"
    ticks = [
        (first + timedelta(hours=h)).astimezone(zone).strftime(fmt)
        for h in range(0, hours + 1, step)
    ]
    return Chart(columns, ticks, peak)


# ---- CSV ---------------------------------------------------------------------------------

CSV_COLUMNS = (
    "created_at",
    "ref",
    "id",
    "to",
    "channel",
    "status",
    "delivery_status",
    "error_code",
    "error_description",
    "client_ref",
    "api_key_name",
    "from",
    "submit_code",
    "submit_desc",
    "rate",
    "currency",
    "segments",
    "dn_count",
    "submitted_at",
    "final_at",
    "send_id",
)


def csv_row(m: Message) -> list[object]:
    def iso(value: datetime | None) -> str:
        return value.astimezone(UTC).isoformat() if value is not None else ""

    return [
        iso(m.created_at),
        m.ref or "",
        m.id,
        m.msisdn,
        m.channel,
        m.status,
        m.delivery_status or "",
        m.error_code or "",
        m.error_description or "",
        _csv_safe(m.client_ref),
        m.api_key_name,
        m.sender or "",
        "" if m.submit_code is None else m.submit_code,
        m.submit_desc or "",
        m.rate or "",
        m.currency or "",
        "" if m.segments is None else m.segments,
        m.dn_count,
        iso(m.submitted_at),
        iso(m.final_at),
        m.send_id,
    ]


def _csv_safe(value: str | None) -> str:
    # A caller-chosen client_ref starting with = + - @ would run as a formula when the file is
    # opened in a spreadsheet (CSV injection, OWASP): a leading quote keeps it text.
    if not value:
        return ""
    return "'" + value if value[0] in "=+-@\t\r" else value


def dn_category(dn: DeliveryNotification) -> str:
    """A DN's error category, read as the message status it maps to (as the API does)."""
    return str(category_of_dn(dn.status, dn.error_code))


def message_category(m: Message) -> str:
    return str(message_error_category(m.status, m.error_code, m.submit_code))
