"""The overview page's figures for the last 24 hours or 7 days: the outcomes domain's
statistics (`app.outcomes.stats`, from its hourly rollup), the latest balances, and the
counts of what needs attention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.bulk360.repository import BalanceReading, latest_balances
from app.console import repository
from app.console.callback_pages import count_failed
from app.console.views import CHART_STACK, Chart, hourly_chart
from app.outcomes import stats as outcomes

WINDOWS = {"24h": 24, "7d": 7 * 24}


@dataclass
class Overview:
    window: str
    since: datetime
    until: datetime
    since_local: str  # `since` for a datetime-local filter in the operator's zone
    stats: dict[str, Any]  # GET /v1/stats's answer for the window
    chart: Chart
    balances: list[BalanceReading]
    attention: dict[str, int]


async def build_overview(
    session: AsyncSession, *, window: str, zone: ZoneInfo, now: datetime | None = None
) -> Overview:
    hours = WINDOWS[window]
    now = now or datetime.now(UTC)
    # Whole hours, the current one last, so each bar of the chart is one clock hour.
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    query = outcomes.StatsQuery(since=since, until=now, bucket="hour")
    figures = await outcomes.stats(await session.connection(), query)
    series = [
        (entry["start"], {status: int(entry.get(status, 0)) for status in CHART_STACK})
        for entry in figures["series"]
    ]
    return Overview(
        window=window,
        since=since,
        until=now,
        since_local=since.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"),
        stats=figures,
        chart=hourly_chart(series, zone, hours),
        balances=await latest_balances(session),
        attention={
            "unknown": figures["by_status"].get("unknown", 0),
            "unmatched_dns": await repository.count_unmatched_notifications(session),
            "failed_callbacks": await count_failed(session),
        },
    )
