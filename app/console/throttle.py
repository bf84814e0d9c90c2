"""The console's failed sign-in throttle, kept in PostgreSQL (`console_sign_in_failures`), so
every replica counts the same failures.

After the n-th failure in a row an address may try again only `min(2**(n-1), 60)` seconds
later; an attempt before then is refused without looking at the key. So a typo costs a second,
and guessing is held to about one try a minute, however many replicas answer. An address is
forgotten after a success, or 15 minutes without failures (the sweep deletes its row).

Checking and reserving a try are one statement (`_RESERVE`): an upsert whose
`ON CONFLICT ... DO UPDATE ... WHERE` only passes when the address may try now, and which then
moves `next_try_at` on by the delay a failure would bring, so parallel attempts (on any
replica) wait on the row's lock, find the try taken and are refused; the one let through then
records its failure (the same delay, from then) or deletes the row on a success. A replica
that stops in between leaves the address waiting as after a failure. Every time is the
database's clock (`now()`, one statement per transaction), never a process's.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
FORGET_AFTER_S = 900.0
PURGE_ROWS_MAX = 2_000

# The delay after the n-th failure in a row (the exponent bounded: 2**16 s is past the cap).
_DELAY = (
    "make_interval(secs => least(CAST(:first_s AS float8) * power(2, least({n} - 1, 16)), "
    "CAST(:max_s AS float8)))"
)
# Forgotten: no failure for FORGET_AFTER_S. Such a row counts as no row.
_STALE = "f.last_failure_at < now() - make_interval(secs => CAST(:forget_s AS float8))"

# A row with `failures` 0 is a first try in flight. RETURNING nothing: refused.
_RESERVE = text(
    f"""
INSERT INTO console_sign_in_failures AS f (address, failures, last_failure_at, next_try_at)
VALUES (:address, 0, now(), now() + {_DELAY.format(n="1")})
ON CONFLICT (address) DO UPDATE SET
    failures = CASE WHEN {_STALE} THEN 0 ELSE f.failures END,
    last_failure_at = CASE WHEN {_STALE} THEN now() ELSE f.last_failure_at END,
    next_try_at = now() + CASE WHEN {_STALE} THEN {_DELAY.format(n="1")}
                               ELSE {_DELAY.format(n="f.failures + 1")} END
WHERE f.next_try_at <= now() OR {_STALE}
RETURNING f.failures
"""  # noqa: S608 (constants only; every value is a bound parameter)
)

_WAIT = text(
    "SELECT greatest(extract(epoch FROM next_try_at - now()), 0)::float8 "
    "FROM console_sign_in_failures WHERE address = :address"
)

_FAILED = text(
    f"""
INSERT INTO console_sign_in_failures AS f (address, failures, last_failure_at, next_try_at)
VALUES (:address, 1, now(), now() + {_DELAY.format(n="1")})
ON CONFLICT (address) DO UPDATE SET
    failures = f.failures + 1,
    last_failure_at = now(),
    next_try_at = now() + {_DELAY.format(n="f.failures + 1")}
RETURNING extract(epoch FROM next_try_at - last_failure_at)::float8
"""  # noqa: S608 (constants only; every value is a bound parameter)
)

_SUCCEEDED = text("DELETE FROM console_sign_in_failures WHERE address = :address")

_PURGE = text(
    f"""
DELETE FROM console_sign_in_failures
WHERE address IN (
    SELECT address FROM console_sign_in_failures AS f WHERE {_STALE}
    LIMIT :rows_max FOR UPDATE SKIP LOCKED
)
"""  # noqa: S608 (constants only; every value is a bound parameter)
)

_TIMES = {"first_s": FIRST_DELAY_S, "max_s": MAX_DELAY_S, "forget_s": FORGET_AFTER_S}


async def try_now(engine: AsyncEngine, address: str) -> float | None:
    """None: this address may try now, and the try is reserved (report it with `failed` or
    `succeeded`). Else the seconds it must wait first (≥ 0)."""
    async with engine.begin() as conn:
        reserved = await conn.execute(_RESERVE, {"address": address} | _TIMES)
        if reserved.first() is not None:
            return None
    # A new transaction (so a new snapshot): the row that refused this try is visible.
    async with engine.begin() as conn:
        wait = await conn.scalar(_WAIT, {"address": address})
    # No row: a success forgot the address in between; this try was still refused.
    return FIRST_DELAY_S if wait is None else float(wait)


async def failed(engine: AsyncEngine, address: str) -> float:
    """Record a failure; the seconds the address must now wait."""
    async with engine.begin() as conn:
        delay = await conn.scalar(_FAILED, {"address": address} | _TIMES)
    return float(delay)


async def succeeded(engine: AsyncEngine, address: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(_SUCCEEDED, {"address": address})


async def purge_batch(engine: AsyncEngine) -> int:
    """Forget up to PURGE_ROWS_MAX addresses without a failure for FORGET_AFTER_S (the sweep)."""
    async with engine.begin() as conn:
        result = await conn.execute(_PURGE, {"rows_max": PURGE_ROWS_MAX} | _TIMES)
    return int(result.rowcount)
