"""Request dependencies: the lifespan state, a database session, the caller's API key."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings, hash_api_key
from app.errors import AppError

if TYPE_CHECKING:
    from app.bulk360.client import Bulk360Client
    from app.bulk360.simulator import Simulator
    from app.notifications.writer import DNWriter


@dataclass
class State:
    """Everything a request needs, built once per process in the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bulk360: Bulk360Client
    dn_writer: DNWriter
    simulator: Simulator | None = None
    extras: dict[str, object] = field(default_factory=dict)


def get_state(request: Request) -> State:
    state: State = request.state.relay
    return state


StateDep = Annotated[State, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """A session per request. The endpoint commits before answering; this only rolls back."""
    async with state.sessionmaker() as session:
        try:
            yield session
        finally:
            await session.rollback()


SessionDep = Annotated[AsyncSession, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS (`keygen`).")


def api_key_name(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The name of the caller's API key; 401 unless it matches an API_KEYS entry."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AppError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    digest = hash_api_key(credentials.credentials).encode()
    found: str | None = None
    # Compare against every entry in constant time; don't stop at the first match.
    for known, name in state.settings.api_key_hashes.items():
        if hmac.compare_digest(digest, known.encode()):
            found = name
    if found is None:
        raise AppError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    return found


ApiKeyDep = Annotated[str, Depends(api_key_name)]
