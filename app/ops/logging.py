"""Structured logging (structlog): console for people, JSON (orjson) for production.

Nothing here ever receives a secret, a token, an API key or a message text: callers log
identifiers, counts and outcomes only. uvicorn's own loggers are routed through the same
renderer so there is one format per process.

The relay writes a line per request, thousands a second on the DN hook, so the line is cheap:
our own events are rendered once, inside structlog, and handed to the standard library
already rendered (`_Formatter` passes them through); only other libraries' records go
through structlog's `ProcessorFormatter`. The standard library is told not to look up the
caller's source file, thread and process for each record: no line shows them. Together
that is about half the cost of a line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_RENDERED = "_relay_rendered"  # set on records whose message is the finished line


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


class _Formatter(structlog.stdlib.ProcessorFormatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _RENDERED, False):
            return str(record.msg)
        return super().format(record)


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        # Plain tracebacks: the default (rich, when installed) prints every frame's local
        # variables, i.e. request bodies, message texts and the Authorization header.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )

    def render(logger: Any, method: str, event: Any) -> tuple[tuple[str], dict[str, Any]]:
        return (renderer(logger, method, event),), {"extra": {_RENDERED: True}}

    structlog.configure(
        processors=[*shared, render],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = _Formatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    # Documented optimisations (logging HOWTO, "Optimization"): no line prints these.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would print raw paths (the DN token is in one): our middleware
    # logs the route template instead.
    logging.getLogger("uvicorn.access").disabled = True
    # Driver loggers print SQL parameters (phone numbers, refs) at DEBUG: never let them.
    for name in ("asyncpg", "sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
