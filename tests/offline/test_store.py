"""The outbox in the SQLite store: the replay cursor, message ids, in-memory bounds, reopening.

A reopened store stands for a restart after SIGKILL: every replay step is a commit, so what a
killed process leaves is what a closed one leaves at that point.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from adapters.sqlite_store import SqliteStore


def row(charger_id: str, kind: str = "meter", connector: int | None = None, n: int = 0) -> dict[str, Any]:
    return {"charger_id": charger_id, "protocol": "ocpp1.6", "action": "MeterValues", "payload": f'{{"n":{n}}}',
            "kind": kind, "connector": connector, "received_at": "2026-01-01T00:00:00Z"}


def sql_pending(path: Path) -> dict[str, int]:
    """Pending rows the CSMS has not acknowledged, counted the slow way."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute(
            "SELECT o.charger_id, COUNT(*) FROM outbox o LEFT JOIN replay_cursor c ON c.charger_id = o.charger_id "
            "WHERE o.state = 'pending' AND o.seq > COALESCE(c.acked, 0) GROUP BY o.charger_id").fetchall())
    finally:
        db.close()


async def test_replay_cursor_ids_counts_and_reopen(tmp_path: Path) -> None:
    big = {"max_per_charger": 1000, "max_total": 1000}
    async with SqliteStore(tmp_path) as store:
        for n in range(5):
            await store.outbox_append(row("A", n=n), **big)
            await store.outbox_append(row("B", n=n), **big)
        head = await store.outbox_head("A")
        assert [r.payload for r in head] == [f'{{"n":{n}}}' for n in range(5)]
        assert all(r.attempts == 0 for r in head)
        ids = [r.message_id for r in head]
        assert len(set(ids)) == 5 and all(i.startswith("gw-") and len(i) <= 36 for i in ids)
        # A: rows 0 and 1 acknowledged, row 2 in flight
        await store.outbox_step("A", None, head[0].seq)
        await store.outbox_step("A", (head[0].seq, None, None), head[1].seq)
        await store.outbox_step("A", (head[1].seq, None, None), head[2].seq)
        assert store._pending == sql_pending(store.path) == {"A": 3, "B": 5}
        # B: one row set aside as a dead letter
        await store.outbox_dead((await store.outbox_head("B"))[0].seq, "GenericError: no")
        assert store._pending == sql_pending(store.path) == {"A": 3, "B": 4}
        assert await store.has_backlog("A") and await store.has_backlog("B")
        assert {r["charger_id"]: r["depth"] for r in await store.outbox_summary()} == {"A": 3, "B": 4}
    async with SqliteStore(tmp_path) as store:  # a restart: the acknowledged rows are gone for good
        db = sqlite3.connect(store.path)
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE charger_id = 'A'").fetchone()[0] == 3
        db.close()
        head = await store.outbox_head("A")
        assert [r.payload for r in head] == ['{"n":2}', '{"n":3}', '{"n":4}']
        assert [r.attempts for r in head] == [1, 0, 0]  # the one in flight: a possible duplicate
        assert head[0].message_id == ids[2]  # sent again with the same id
        assert store._pending == sql_pending(store.path) == {"A": 3, "B": 4}
        for prev, cur in zip(head, head[1:]):
            await store.outbox_step("A", (prev.seq, None, None), cur.seq)
        await store.outbox_step("A", (head[-1].seq, None, None), None)
        assert await store.outbox_head("A") == []
        assert not await store.has_backlog("A")
        assert store._pending == sql_pending(store.path) == {"B": 4}
        assert sorted(await store.chargers_with_backlog()) == [("B", "ocpp1.6")]


async def test_bounds_from_counts_never_refuse_starts_and_stops(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path) as store:
        bounds = {"max_per_charger": 3, "max_total": 5}
        assert [(await store.outbox_append(row("A", n=n), **bounds))[0] is not None for n in range(4)] == \
            [True, True, True, False]
        assert (await store.outbox_append(row("A", kind="start"), **bounds))[0] is not None
        assert [(await store.outbox_append(row("B", n=n), **bounds))[0] is not None for n in range(2)] == [True, False]
        # a status row replaces the waiting status of its connector (coalesced), so it fits
        assert (await store.outbox_append(row("C", kind="status", connector=1), **bounds))[0] is None
        head = await store.outbox_head("A")
        await store.outbox_step("A", None, head[0].seq)
        await store.outbox_step("A", (head[0].seq, None, None), None)  # one acknowledged: room again
        assert (await store.outbox_append(row("B", n=9), **bounds))[0] is not None
        assert store._pending == sql_pending(store.path) == {"A": 3, "B": 2}
        assert store._pending_total == 5


async def test_status_rows_coalesce_but_never_one_that_was_sent(tmp_path: Path) -> None:
    big = {"max_per_charger": 100, "max_total": 100}
    async with SqliteStore(tmp_path) as store:
        await store.outbox_append(row("S", kind="status", connector=1, n=1), **big)
        await store.outbox_append(row("S", kind="status", connector=1, n=2), **big)
        await store.outbox_append(row("S", kind="status", connector=2, n=3), **big)
        assert store._pending == sql_pending(store.path) == {"S": 2}
        (first, second) = await store.outbox_head("S")
        assert (first.payload, second.payload) == ('{"n":2}', '{"n":3}')
        await store.outbox_step("S", None, first.seq)  # in flight: it may reach the CSMS
        await store.outbox_append(row("S", kind="status", connector=1, n=4), **big)
        await store.outbox_append(row("S", kind="status", connector=2, n=5), **big)  # read by the replay: kept
        assert store._pending == sql_pending(store.path) == {"S": 4}
    async with SqliteStore(tmp_path) as store:
        await store.outbox_append(row("S", kind="status", connector=1, n=6), **big)  # replaces n=4 only
        assert [r.payload for r in await store.outbox_head("S")] == ['{"n":2}', '{"n":3}', '{"n":5}', '{"n":6}']
        assert store._pending == sql_pending(store.path) == {"S": 4}


async def test_acknowledged_rows_are_deleted_behind_the_replay_in_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    import adapters.sqlite_store as module

    monkeypatch.setattr(module, "PURGE_CHUNK", 3)
    monkeypatch.setattr(module, "PURGE_DUE", 5)
    monkeypatch.setattr(module, "PURGE_QUIET", 0.2)
    big = {"max_per_charger": 100, "max_total": 100}

    def rows_of(path: Path, charger_id: str) -> int:
        db = sqlite3.connect(path)
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE charger_id = ?", (charger_id,)).fetchone()[0])
        finally:
            db.close()

    async with SqliteStore(tmp_path) as store:
        for n in range(12):
            await store.outbox_append(row("A", n=n), **big)
        await store.outbox_append(row("B"), **big)
        head = await store.outbox_head("A", 4)
        await store.outbox_step("A", None, head[0].seq)
        for prev, cur in zip(head, head[1:]):
            await store.outbox_step("A", (prev.seq, None, None), cur.seq)
        await store.outbox_step("A", (head[-1].seq, None, None), None)
        # acknowledged, out of every count, still on disk: reading the next page does not delete them
        assert rows_of(store.path, "A") == 12 and store._pending == sql_pending(store.path) == {"A": 8, "B": 1}
        head = await store.outbox_head("A", 4)
        assert [r.payload for r in head] == [f'{{"n":{n}}}' for n in range(4, 8)]
        assert rows_of(store.path, "A") == 12
        await store.outbox_step("A", None, head[0].seq)
        for prev, cur in zip(head, head[1:]):
            await store.outbox_step("A", (prev.seq, None, None), cur.seq)
        await store.outbox_step("A", (head[-1].seq, None, None), None)
        # 8 acknowledged >= PURGE_DUE: the next page deletes them first (three chunks of at most 3)
        head = await store.outbox_head("A", 4)
        assert [r.payload for r in head] == [f'{{"n":{n}}}' for n in range(8, 12)]
        assert rows_of(store.path, "A") == 4 and rows_of(store.path, "B") == 1
        await store.outbox_step("A", None, head[0].seq)
        await store.outbox_step("A", (head[0].seq, None, None), None)
        store.outbox_purge_later("A")  # what the session does when a replay ends: not while replays commit
        assert rows_of(store.path, "A") == 4
        async with asyncio.timeout(5):
            while rows_of(store.path, "A") != 3:
                await asyncio.sleep(0.01)
        assert rows_of(store.path, "B") == 1
        await store.outbox_purge("A")  # nothing more to do
        assert rows_of(store.path, "A") == 3
        assert store._pending == sql_pending(store.path) == {"A": 3, "B": 1}


async def test_the_next_page_is_read_after_the_current_one_while_that_one_replays(tmp_path: Path) -> None:
    big = {"max_per_charger": 100, "max_total": 100}
    async with SqliteStore(tmp_path) as store:
        for n in range(7):
            await store.outbox_append(row("P", n=n), **big)
            await store.outbox_append(row("Q", n=n), **big)
        page = await store.outbox_head("P", 3)
        await store.outbox_step("P", None, page[0].seq)  # the first row is in flight
        ahead = await store.outbox_head("P", 3, after=page[-1].seq)
        assert [r.payload for r in ahead] == ['{"n":3}', '{"n":4}', '{"n":5}']
        assert [r.attempts for r in ahead] == [0, 0, 0]
        await store.outbox_step("P", (page[0].seq, None, None), page[1].seq)
        await store.outbox_step("P", (page[1].seq, None, None), page[2].seq)
        await store.outbox_step("P", (page[2].seq, None, None), ahead[0].seq)
        # `after` below the acknowledged rows never returns one of them
        assert [r.payload for r in await store.outbox_head("P", 2, after=0)] == ['{"n":3}', '{"n":4}']
        assert [r.attempts for r in await store.outbox_head("P", 1, after=0)] == [1]  # in flight
