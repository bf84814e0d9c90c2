"""`GET /v1/stats` (API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.db import utcnow
from app.deps import ApiKeyDep, StateDep
from app.errors import error_responses
from app.outcomes import stats as service
from app.outcomes.schemas import Stats
from app.vocabulary import Channel, Timestamp

router = APIRouter(tags=["outcomes"])


@router.get("/v1/stats", response_model=Stats, responses=error_responses(401, 422, 503))
async def get_stats(
    *,
    state: StateDep,
    _caller: ApiKeyDep,
    since: Annotated[
        Timestamp | None,
        Query(
            description="Messages created at or after (ISO 8601 with offset; default: 24 h "
            "before `until`). Day buckets start at midnight at its offset.",
            examples=["2026-11-24T00:00:00+08:00"],
        ),
    ] = None,
    until: Annotated[
        Timestamp | None,
        Query(
            description="Messages created before (ISO 8601 with offset; default: now)",
            examples=["2026-11-25T00:00:00+08:00"],
        ),
    ] = None,
    bucket: Annotated[service.Bucket, Query(description="Width of each `series` entry")] = "hour",
    api_key_name: Annotated[
        str | None, Query(max_length=64, description="Only messages sent with this API key")
    ] = None,
    channel: Annotated[Channel | None, Query(description="Only this channel")] = None,
) -> dict[str, Any]:
    """Counts by status and error category, delivery rate, top error codes, spend and a
    series, for the messages created in [since, until) as they stand now."""
    since, until = service.resolve_range(since, until, utcnow())
    query = service.StatsQuery(
        since=since,
        until=until,
        bucket=bucket,
        api_key_name=api_key_name,
        channel=channel,
    )
    async with state.engine.connect() as conn:
        return await service.stats(conn, query)
