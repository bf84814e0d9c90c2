"""The overview page's figures for the last 24 hours or 7 days."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.bulk360.codes import describe_error_code, dn_error_category
from app.bulk360.repository import BalanceReading, latest_balances
from app.console import repository
from app.console.views import Chart, hourly_chart

WINDOWS = {"24h": 24, "7d": 7 * 24}
FAILED = ("undelivered", "expired")


@dataclass
class TopCode:
    code: str
    description: str
    category: str
    count: int


@dataclass
class Overview:
    window: str
    since: datetime
    until: datetime
    total: int
    by_status: dict[str, int]
    delivery_rate: float | None
    chart: Chart
    top_codes: list[TopCode]
    spend: list[tuple[str, Decimal]]
    since_local: str  # `since` for a datetime-local filter in the operator's zone
    attention: dict[str, int] = field(default_factory=dict)
    balances: list[BalanceReading] = field(default_factory=list)


async def build_overview(
    session: AsyncSession, *, window: str, zone: ZoneInfo, now: datetime | None = None
) -> Overview:
    hours = WINDOWS[window]
    now = now or datetime.now(UTC)
    # Whole hours, the current one last, so each bar of the chart is one clock hour.
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    since, until = first, now
    counts = await repository.hourly_status_counts(session, since, until)
    series: dict[datetime, dict[str, int]] = {first + timedelta(hours=i): {} for i in range(hours)}
    by_status: dict[str, int] = {}
    for hour, status, n in counts:
        series.setdefault(hour.astimezone(UTC), {})[status] = n
        by_status[status] = by_status.get(status, 0) + n
    decided = by_status.get("delivered", 0) + sum(by_status.get(s, 0) for s in FAILED)
    top = await repository.top_error_codes(session, since, until)
    return Overview(
        window=window,
        since=since,
        until=until,
        total=sum(by_status.values()),
        by_status=by_status,
        delivery_rate=by_status.get("delivered", 0) / decided if decided else None,
        chart=hourly_chart(sorted(series.items()), zone, hours),
        top_codes=[
            TopCode(code, describe_error_code(code) or "", dn_error_category(code), n)
            for code, n in top
        ],
        spend=await repository.spend(session, since, until),
        since_local=since.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"),
        attention={
            "unknown": await repository.count_status(session, "unknown", since),
            "unmatched_dns": await repository.count_unmatched_notifications(session),
        },
        balances=await latest_balances(session),
    )
