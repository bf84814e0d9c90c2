"""A TCP proxy in front of Postgres that a test can "stop" and "start" like the database.

The relay (a child process) connects to the proxy's port instead of Postgres. `stop()` does
what a database shutdown does to its clients: every open connection is cut (pooled ones too,
so the relay must notice and replace them) and new connections are refused (the listener is
closed: ECONNREFUSED, as with no server on the port). `stop(answer=...)` instead keeps
listening and answers every new connection the way Postgres does while it shuts down or starts
up: a FATAL 57P03 error ("the database system is shutting down") in place of the handshake.
`start()` forwards again, on the same port. The shared Postgres server itself is never
touched: other tests and CI use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from sqlalchemy.engine import make_url

from tests.servers import free_port

SHUTTING_DOWN = "the database system is shutting down"
STARTING_UP = "the database system is starting up"
_SSL_REQUEST = 80877103  # the code of an SSLRequest in place of a protocol version


def cannot_connect_now(message: str) -> bytes:
    """A Postgres ErrorResponse: FATAL, SQLSTATE 57P03 (cannot_connect_now), `message`."""
    fields = b"".join(
        kind + value.encode() + b"\0"
        for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "57P03"), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


class PgProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = free_port()
        self.accepted = 0  # connections accepted since construction
        self._server: asyncio.Server | None = None
        self._answer: str | None = None  # while stopped: the error new connections get
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_url(cls, url: str) -> PgProxy:
        parsed = make_url(url)
        socket_dir = parsed.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            # A server on a Unix socket (the embedded one): target its socket file.
            return cls(f"{socket_dir}/.s.PGSQL.{parsed.port or 5432}", 0)
        return cls(parsed.host or "127.0.0.1", parsed.port or 5432)

    def url(self, url: str) -> str:
        """`url` (a database URL on the target server) rewritten to go through the proxy."""
        parsed = make_url(url)
        return parsed.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target_host.startswith("/"):
            return await asyncio.open_unix_connection(self.target_host)
        return await asyncio.open_connection(self.target_host, self.target_port)

    @property
    def running(self) -> bool:
        return self._server is not None and self._answer is None

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._answer = None
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            # reuse_address (asyncio's default on POSIX): the port is free again at once.
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self, answer: str | None = None) -> None:
        """Cut every open connection (both directions, with a RST). New connections are then
        refused, or, with `answer` (e.g. SHUTTING_DOWN), answered with that FATAL error."""
        server = self._server
        if answer is None:
            self._server = None
            if server is not None:
                server.close()
        self._answer = answer
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None and answer is None:
            await server.wait_closed()
        if answer is not None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._answer is not None:
            await self._refuse(reader, writer, self._answer)
            return
        if self._server is None:  # stopped between accept and this callback
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await self._connect_upstream()
        except OSError:
            writer.transport.abort()
            return
        if self._server is None or self._answer is not None:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # When either side ends, end both: a half-open link would look like a hung database.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        self._links.discard(link)
        for side in link:
            side.close()

    @staticmethod
    async def _refuse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str
    ) -> None:
        """Read the client's SSLRequest (answered "no SSL") and startup packet, then answer
        with the error, as the postmaster does while it cannot accept connections."""
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if code == _SSL_REQUEST:
                writer.write(b"N")
                length, _ = struct.unpack("!II", await reader.readexactly(8))
            await reader.readexactly(length - 8)
            writer.write(cannot_connect_now(message))
            await writer.drain()
        writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
