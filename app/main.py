"""The application: `create_app()` and its lifespan (engine, upstream client, DN writer)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app import __version__, embedded
from app.bulk360.client import Bulk360Client
from app.callbacks.dispatcher import CallbackDispatcher
from app.callbacks.endpoints import router as callbacks_router
from app.config import Settings, load_settings
from app.console.endpoints import install_console
from app.db import create_engine, create_sessionmaker
from app.deps import State, refusal_before_dependencies
from app.errors import install_error_handlers
from app.messages.endpoints import router as messages_router
from app.messages.fast_path import SendFastPath
from app.messages.recorder import AnswerRecorder
from app.messages.service import SendService
from app.messages.writer import SendWriter
from app.notifications.endpoints import router as notifications_router
from app.notifications.hook import DNHookFastPath
from app.notifications.hook import hook_router as dn_hook_router
from app.notifications.writer import DNWriter
from app.ops.docs import install_offline_docs
from app.ops.endpoints import router as ops_router
from app.ops.logging import configure_logging
from app.ops.middleware import RequestMiddleware
from app.outcomes.endpoints import router as outcomes_router
from app.outcomes.sweeps import Sweeper

if TYPE_CHECKING:
    from app.bulk360.simulator import Simulator

log = structlog.get_logger("app")

MAX_BODY_BYTES = 1_048_576  # a send to 1,000 recipients with a long text fits easily

DESCRIPTION = """\
Relay between internal services and the Bulk360 SMS/WhatsApp gateway.

* **Send** with `POST /v1/messages` (API key: `Authorization: Bearer <key>`).
* **Look up** what became of a message by `ref`, id, phone number, time or status.
* **Delivery notifications** arrive at `/dn/{DN_HOOK_TOKEN}` (the hook URL registered at
  Bulk360 > Configurations > APIs); the last one received is final.

Every error answers `{"error": "<machine_code>", "detail": "<human text>"}`.
"""


class RelayApp(FastAPI):
    """FastAPI with the DN hook's fast path in front of its whole middleware stack
    (`DNHookFastPath`: right-token DNs are answered there, everything else comes here)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = DNHookFastPath(super().__call__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)


def serve_app() -> FastAPI:
    """The app as `bulk360-relay serve` runs it (uvicorn's factory, once per worker)."""
    return create_app(tune_gc=True)


def _tune_gc() -> None:
    """For a long-running server process, once started: what was loaded and built so far
    (modules, the app, the settings) lives as long as the process, so the collector stops
    re-scanning it (`gc.freeze`), and young-generation collections run every 20,000
    allocations instead of 700 (requests allocate many short-lived objects, nearly all freed
    by reference counting anyway). About a tenth of the send path's CPU went to collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _upstream(settings: Settings) -> tuple[str, Simulator | None]:
    """The provider's base URL: the built-in simulator's (sandbox), else BULK360_BASE_URL."""
    if not settings.uses_builtin_simulator:
        return settings.bulk360_base_url, None
    from app.bulk360.simulator import Simulator, SimulatorConfig

    simulator = Simulator(
        SimulatorConfig(
            app_key=settings.effective_app_key,
            app_secret=settings.effective_app_secret,
            dn_url=f"{settings.public_base_url}/dn/{settings.effective_dn_hook_token}",
            dn_delay_s=settings.sandbox_dn_delay_s,
            # The distance to the real provider, for demos (CONTRACT §6).
            latency_ms=SimulatorConfig.from_env().latency_ms,
        )
    )
    return await simulator.start(), simulator


async def _start(settings: Settings) -> tuple[State, Callable[[], Awaitable[None]]]:
    """Build and start every component; return the app state and how to stop them."""
    # DATABASE_URL, or the embedded server (sandbox): started in a thread, it takes ~1.5 s.
    url = await asyncio.to_thread(embedded.database_url, settings)
    engine = create_engine(url, pool_size=settings.db_pool_size)
    base_url, simulator = await _upstream(settings)
    bulk360 = Bulk360Client(settings, base_url=base_url)
    dn_writer = DNWriter(settings, engine)
    send_writer = SendWriter(engine, idempotency_ttl_h=settings.idempotency_ttl_h)
    recorder = AnswerRecorder(send_writer.record)
    sweeper = Sweeper(settings, engine)
    await bulk360.start()
    await bulk360.balance.start(engine)
    await dn_writer.start()
    await sweeper.start()
    callbacks = None
    if settings.callback_secrets:
        # DN bursts first (see the dispatcher's docstring).
        callbacks = CallbackDispatcher(settings, url, ingest_busy=lambda: dn_writer.busy)
        await callbacks.start()
    if settings.sandbox:
        log.warning(
            "sandbox mode: nothing is really sent; "
            + ("built-in simulator is the upstream" if simulator else f"upstream {base_url}")
            + "".join(f"; {d}" for d in settings.sandbox_defaults_in_use())
        )

    async def stop() -> None:
        # uvicorn has finished in-flight requests by now; the writer drains its queue.
        await sweeper.stop()
        await dn_writer.stop()
        await recorder.stop()  # before the engine goes: a last try to record them
        await send_writer.wait()
        if callbacks is not None:  # after the writers: their last commits may add events
            await callbacks.stop()
        await bulk360.close()
        await bulk360.balance.stop()  # its last reading saved before the engine goes
        if simulator is not None:
            await simulator.stop()
        await engine.dispose()

    state = State(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        bulk360=bulk360,
        dn_writer=dn_writer,
        send_service=SendService(settings, client=bulk360, writer=send_writer, recorder=recorder),
        simulator=simulator,
        sweeper=sweeper,
        callbacks=callbacks,
    )
    return state, stop


def create_app(settings: Settings | None = None, *, tune_gc: bool = False) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, State]]:
        state, stop = await _start(settings)
        if tune_gc:
            _tune_gc()
        try:
            yield {"relay": state}
        finally:
            await stop()

    app = RelayApp(
        title="bulk360-relay",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_offline_docs: FastAPI's pages load a CDN
        redoc_url=None,
        # No per-request telemetry hooks: the DN hook is a hot path and we export our own.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app, refusal_before_dependencies)
    # The DN hook first: routes are matched in order, and it is the hottest path by far.
    app.include_router(dn_hook_router)
    app.include_router(messages_router)
    app.include_router(notifications_router)
    app.include_router(outcomes_router)
    app.include_router(callbacks_router)
    app.include_router(ops_router)
    install_offline_docs(app)
    install_console(app)
    # The body limit lives in our middleware, not FastAPI's max_body_size: Starlette's answers a
    # declared oversized body in plain text, outside the error shape.
    # Inside the request middleware: well-formed sends skip FastAPI's routing (fast_path.py).
    app.add_middleware(SendFastPath)
    app.add_middleware(RequestMiddleware, max_body_bytes=MAX_BODY_BYTES)
    return app
