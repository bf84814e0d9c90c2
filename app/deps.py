"""Request dependencies: the lifespan state, a database session, the caller's API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings, hash_api_key
from app.errors import AppError, is_database_unavailable

if TYPE_CHECKING:
    from app.bulk360.client import Bulk360Client
    from app.bulk360.simulator import Simulator
    from app.callbacks.dispatcher import CallbackDispatcher
    from app.messages.service import SendService
    from app.notifications.writer import DNWriter
    from app.outcomes.sweeps import Sweeper


@dataclass
class State:
    """Everything a request needs, built once per process in the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bulk360: Bulk360Client
    dn_writer: DNWriter
    send_service: SendService
    simulator: Simulator | None = None
    sweeper: Sweeper | None = None
    callbacks: CallbackDispatcher | None = None  # None while no signing secret is configured
    extras: dict[str, object] = field(default_factory=dict)


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a thread hop per request on the send path.
async def get_state(request: Request) -> State:
    state: State = request.state.relay
    return state


StateDep = Annotated[State, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """A session per request. The endpoint commits before answering; this only rolls back."""
    async with state.sessionmaker() as session:
        try:
            yield session
        finally:
            try:
                await session.rollback()
            except Exception as exc:
                # This runs after the response went out: a connection cut in between must not
                # surface as an ASGI error. SQLAlchemy has already invalidated the connection.
                if not is_database_unavailable(exc):
                    raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS (`keygen`).")


def caller_name(settings: Settings, authorization: str | None) -> str:
    """The name of the API key in an `Authorization: Bearer <key>` header; AppError 401
    unless it matches an API_KEYS entry."""
    scheme, key = get_authorization_scheme_param(authorization)
    if not key or scheme.lower() != "bearer":
        raise AppError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    # A dict lookup on the sha256 of the presented key, not a loop of compare_digest: the
    # lookup's timing depends on the digest (and on the per-process string-hash seed), never
    # on how much of the secret matches. Learning that a digest prefix matches would still
    # need a sha256 preimage to be of any use.
    found = settings.api_key_hashes.get(hash_api_key(key))
    if found is None:
        raise AppError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    return found


async def api_key_name(
    state: StateDep,
    # Parsed again by caller_name; declared so that OpenAPI documents the bearer scheme.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    request: Request,
) -> str:
    """The name of the caller's API key; 401 unless it matches an API_KEYS entry."""
    return caller_name(state.settings, request.headers.get("authorization"))


def _needs_api_key(dependant: Dependant) -> bool:
    return any(dep.call is api_key_name or _needs_api_key(dep) for dep in dependant.dependencies)


def refusal_before_dependencies(request: Request) -> AppError | None:
    """The 401 for a request refused before its dependencies ran (a body that is not JSON or
    not UTF-8): an unauthenticated caller learns nothing about how its body was read. None
    when the route needs no API key or the key is valid."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not _needs_api_key(route.dependant):
        return None
    relay = request.scope.get("state", {}).get("relay")
    if relay is None:
        return None
    try:
        caller_name(relay.settings, request.headers.get("authorization"))
    except AppError as exc:
        return exc
    return None


ApiKeyDep = Annotated[str, Depends(api_key_name)]
