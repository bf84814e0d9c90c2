"""Group commit for the send path: concurrent sends share one statement and one fsync.

Each send hands an item to `GroupCommit.submit()` and awaits the COMMIT of the batch that
carried it; only then does it go on (to the provider, or to answer its caller). There is no
timer and no writer task: a submit starts a batch at once when fewer than `pipeline` batches
are in flight, else it waits in the queue, and each batch that ends starts the next with
everything queued by then (up to `max_rows` rows, at least one item). Alone, a send is written
at once; under load, the batches grow to the number of sends that arrived during one commit.

Failures: a batch that fails because the database is unreachable fails every item in it
(each caller decides: a 503 before sending, a retry when recording an answer). A batch that
fails otherwise is written again one item per transaction, so one bad item cannot fail its
neighbours. `conflicts` keeps items that must not share a statement (two claims of one
Idempotency-Key) in separate batches, in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import structlog

from app.errors import is_database_unavailable
from app.ops.metrics import SEND_BATCH_SIZE

log = structlog.get_logger("app.messages")

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        kind: str,
        rows: Callable[[T], int],
        max_rows: int,
        pipeline: int,
        conflict_key: Callable[[T], Hashable | None] | None = None,
    ) -> None:
        self._write = write
        self._sizes = SEND_BATCH_SIZE.labels(kind)
        self._rows = rows
        self._max_rows = max_rows
        self._pipeline = pipeline
        self._conflict_key = conflict_key
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> None:
        """Return once the batch holding `item` has committed; raise its failure otherwise."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if len(self._in_flight) < self._pipeline:
            self._start()
        await fut

    async def wait(self) -> None:
        """Until every batch started has ended (shutdown)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _start(self) -> None:
        batch = self._take()
        if batch:
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._ended)

    def _take(self) -> list[tuple[T, asyncio.Future[None]]]:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        kept: list[tuple[T, asyncio.Future[None]]] = []
        seen: set[Hashable] = set()
        rows, full = 0, False
        for entry in self._queue:
            if entry[1].done():  # the caller went away before its turn: never written
                continue
            key = self._conflict_key(entry[0]) if self._conflict_key is not None else None
            size = self._rows(entry[0])
            # In arrival order: once an item does not fit, the rest wait for the next batch.
            full = full or (batch != [] and rows + size > self._max_rows)
            if full or (key is not None and key in seen):
                kept.append(entry)
                continue
            if key is not None:
                seen.add(key)
            batch.append(entry)
            rows += size
        self._queue = kept
        return batch

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._queue and len(self._in_flight) < self._pipeline:
            self._start()

    async def _run(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        self._sizes.observe(len(batch))
        try:
            await self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or is_database_unavailable(exc):
                _settle(batch, exc)
                return
            log.warning("send batch failed, writing singly", size=len(batch), error=repr(exc))
            for entry in batch:
                try:
                    await self._write([entry[0]])
                except Exception as single:
                    _settle([entry], single)
                else:
                    _settle([entry], None)
            return
        except BaseException:  # cancelled (the loop is closing): the callers must not hang
            _settle(batch, RuntimeError("the batch was cancelled"))
            raise
        _settle(batch, None)


def _settle(batch: list[tuple[T, asyncio.Future[None]]], exc: BaseException | None) -> None:
    for _, fut in batch:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
