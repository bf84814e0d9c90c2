"""What counts as "the database is unavailable" (503) rather than a bug (500)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.errors import is_database_unavailable


def _wrapped(orig: BaseException) -> DBAPIError:
    # What SQLAlchemy raises around a driver error that it does not see as a disconnect.
    try:
        raise DBAPIError("SELECT 1", None, orig, connection_invalidated=False) from orig
    except DBAPIError as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions._base.InternalClientError("cannot switch to state 15"),
        ConnectionRefusedError(111, "refused"),
    ],
)
def test_connection_failures_are_unavailable_bare_or_wrapped(exc: BaseException) -> None:
    assert is_database_unavailable(exc)
    assert is_database_unavailable(_wrapped(exc))


def test_a_constraint_violation_is_not_unavailability() -> None:
    orig = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not is_database_unavailable(IntegrityError("INSERT", None, orig))
    assert not is_database_unavailable(ValueError("bug"))
