"""Operations: liveness, readiness and Prometheus metrics (CONTRACT §4.4).

`/readyz` fails (503) only for what this replica cannot serve without: the database and a
schema at the migrations' head. The upstream token state, the mode and the DN writer's queue
are reported but never fail readiness: Bulk360 being down or refusing our credentials is the
same for every replica, and taking them all out of rotation would also close the DN hook and
the lookups, which need no upstream. The same holds for a low provider balance.
"""

from __future__ import annotations

import asyncio
import functools
import os
from datetime import datetime
from typing import Literal

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.deps import State, StateDep
from app.errors import is_database_unavailable
from app.migrate import head_revision
from app.ops.metrics import UPSTREAM_TOKEN_STATE

log = structlog.get_logger("app.ops")
router = APIRouter(tags=["operations"])

DB_CHECK_TIMEOUT_S = 2.0
TOKEN_STATES = ("none", "valid", "expired", "failing")


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"status": "ok"}})

    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    detail: str


class Balance(BaseModel):
    amount: str = Field(description="Decimal text, as the provider reported it")
    currency: str
    seen_at: datetime = Field(description="When a send answer last reported it")


class Readiness(BaseModel):
    """Readiness of this replica; `failed` names the checks that made it 503."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "ready",
                "failed": [],
                "checks": {
                    "database": {"ok": True, "detail": "reachable"},
                    "schema": {"ok": True, "detail": "at head 2c353680191e"},
                },
                "mode": "sandbox",
                "upstream_token": "valid",
                "dn_writer_queue_depth": 0,
                "balance": {
                    "amount": "4229.8700",
                    "currency": "MYR",
                    "seen_at": "2026-11-30T22:15:38.019152+00:00",
                },
                "low_balance": False,
            }
        }
    )

    status: Literal["ready", "not_ready"]
    failed: list[str]
    checks: dict[str, Check]
    mode: Literal["sandbox", "live"]
    upstream_token: str = Field(description="none, valid, expired or failing")
    dn_writer_queue_depth: int
    balance: Balance | None = Field(
        description="The balance the provider last reported to this process (at start-up: the "
        "last one saved); null if none yet"
    )
    low_balance: bool = Field(description="balance under LOW_BALANCE_THRESHOLD (not a failure)")


@functools.cache
def _head() -> str | None:
    # Reads the migration scripts from disk: once per process is enough.
    return head_revision()


@router.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process is up and serving (checks nothing else)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness (database, schema, mode, upstream token)",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready; `failed` says why"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: database reachable and schema at head (503 otherwise), plus mode and upstream."""
    database, schema = await _check_database(state.engine)
    checks = {"database": database, "schema": schema}
    failed = [name for name, check in checks.items() if not check.ok]
    body = Readiness(
        status="not_ready" if failed else "ready",
        failed=failed,
        checks=checks,
        mode=state.settings.bulk360_mode,
        upstream_token=state.bulk360.token_state,
        dn_writer_queue_depth=state.dn_writer.queue_depth,
        balance=_balance(state),
        low_balance=state.bulk360.balance.low,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if failed else 200)


def _balance(state: State) -> Balance | None:
    reading = state.bulk360.balance.latest
    if reading is None:
        return None
    return Balance(amount=str(reading.amount), currency=reading.currency, seen_at=reading.seen_at)


async def _check_database(engine: AsyncEngine) -> tuple[Check, Check]:
    head = _head()
    try:
        current = await asyncio.wait_for(_schema_revision(engine), DB_CHECK_TIMEOUT_S)
    except TimeoutError:
        return (
            Check(ok=False, detail=f"no answer within {DB_CHECK_TIMEOUT_S:g}s"),
            Check(ok=False, detail="unknown: database unreachable"),
        )
    except Exception as exc:
        # Readiness never answers 500; the class only, as its message may carry the URL.
        error = type(exc).__name__
        log.warning("readiness_database_check_failed", error=error)
        state = "unreachable" if is_database_unavailable(exc) else "check failed"
        return (
            Check(ok=False, detail=f"{state} ({error})"),
            Check(ok=False, detail="unknown: database unreachable"),
        )
    reachable = Check(ok=True, detail="reachable")
    if current is None:
        return reachable, Check(ok=False, detail=f"not migrated (head is {head}): run migrate")
    if current != head:
        return reachable, Check(ok=False, detail=f"at {current}, head is {head}: run migrate")
    return reachable, Check(ok=True, detail=f"at head {head}")


async def _schema_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        has_table = await conn.run_sync(
            lambda sync: sync.dialect.has_table(sync, "alembic_version")
        )
        if not has_table:
            return None
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return str(version) if version is not None else None


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"example": 'relay_messages_total{outcome="pending"} 3.0\n'}},
            "description": "Prometheus text format (OpenMetrics if the Accept header asks)",
        },
    },
)
async def metrics(state: StateDep, request: Request) -> Response:
    """Prometheus metrics of this process (of all workers with PROMETHEUS_MULTIPROC_DIR)."""
    token_state = state.bulk360.token_state
    for name in TOKEN_STATES:
        UPSTREAM_TOKEN_STATE.labels(name).set(1 if name == token_state else 0)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: each writes its own files; merge them per scrape.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(encoder(registry), media_type=content_type)
