"""GroupCommit on its own: concurrent submits share batches, in arrival order, bounded in rows;
two items with one conflict key never share one; a batch that fails for a reason other than
an outage is written again item by item, so only the bad item fails."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError

from app.messages.group_commit import GroupCommit

_CUT = OperationalError("INSERT", {}, ConnectionError("server closed the connection"))


class Store:
    """The write: records each batch; fails on items named in `bad`, or on every batch while
    `down`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.bad: set[str] = set()
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, items: list[str]) -> None:
        await self.gate.wait()
        self.batches.append(list(items))
        if self.down:
            raise _CUT
        if self.bad & set(items):
            raise ValueError("a bad item")


def group(store: Store, **kwargs: object) -> GroupCommit[str]:
    options: dict[str, object] = {"max_rows": 100, "pipeline": 1, "conflict_key": None}
    options.update(kwargs)
    return GroupCommit(
        store.write,
        kind="test",
        rows=lambda item: int(item.split(":")[1]) if ":" in item else 1,
        **options,  # type: ignore[arg-type]
    )


async def test_submits_during_a_commit_share_the_next_batch_in_arrival_order() -> None:
    store = Store()
    commits = group(store)
    store.gate.clear()  # the first batch is "committing"
    first = asyncio.create_task(commits.submit("a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(commits.submit(x)) for x in "bcd"]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.batches == [["a"], ["b", "c", "d"]]


async def test_a_batch_holds_at_most_max_rows_but_always_one_item() -> None:
    store = Store()
    commits = group(store, max_rows=10)
    store.gate.clear()
    items = ["x:1", "big:30", "y:4", "z:4", "w:4"]
    tasks = [asyncio.create_task(commits.submit(item)) for item in items]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert store.batches == [["x:1"], ["big:30"], ["y:4", "z:4"], ["w:4"]]


async def test_two_claims_of_one_key_never_share_a_batch() -> None:
    store = Store()
    commits = group(store, conflict_key=lambda item: item[0])
    store.gate.clear()
    tasks = [asyncio.create_task(commits.submit(item)) for item in ("k1", "j1", "k2", "k3")]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert store.batches == [["k1"], ["j1", "k2"], ["k3"]]


async def test_a_bad_item_fails_alone_and_an_outage_fails_the_whole_batch() -> None:
    store = Store()
    store.bad = {"b"}
    commits = group(store)
    store.gate.clear()
    tasks = [asyncio.create_task(commits.submit(item)) for item in ("0", "a", "b", "c")]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "ValueError", "NoneType"]
    assert store.batches == [["0"], ["a", "b", "c"], ["a"], ["b"], ["c"]]

    store.down, store.batches = True, []
    store.gate.clear()
    tasks = [asyncio.create_task(commits.submit(item)) for item in ("d", "e", "f")]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is _CUT for r in results)
    assert store.batches == [["d"], ["e", "f"]]  # not retried one by one


async def test_a_caller_gone_before_its_turn_is_never_written() -> None:
    store = Store()
    commits = group(store)
    store.gate.clear()
    first = asyncio.create_task(commits.submit("a"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(commits.submit("gone"))
    kept = asyncio.create_task(commits.submit("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    store.gate.set()
    await asyncio.gather(first, kept)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert store.batches == [["a"], ["kept"]]
