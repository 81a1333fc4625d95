"""A bounded on-disk FIFO for telemetry that cannot be delivered yet (broker or InfluxDB away).

One SQLite file per sink under `data_dir` (`telemetry-spool-mqtt.sqlite3`,
`telemetry-spool-influx.sqlite3`), WAL mode, used from one worker thread so the event loop never
touches the disk. Items come out in the order they went in. At `max_items` the oldest items are
dropped (and counted): the newest telemetry is the most useful, and the bound keeps a long outage
from filling the disk. Telemetry is not billing data; `synchronous=NORMAL` is enough.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.telemetry.spool")


class Spool:
    def __init__(self, path: Path, max_items: int) -> None:
        self.path = Path(path)
        self.max_items = max_items
        self.dropped = 0
        self.count = 0  # items on disk (kept in memory, exact: only this object writes the file)
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool-{self.path.stem}")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> "Spool":
        self.count = await self._run(self._open)
        if self.count:
            log.info("telemetry spool %s holds %d items from before", self.path.name, self.count)
        return self

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # A damaged spool must not keep the gateway from starting: keep it aside for a human, start empty.
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.error("telemetry spool %s is unreadable (%s); moved to %s, starting an empty one",
                      self.path.name, exc, aside.name)
            if self._db is not None:
                self._db.close()
                self._db = None
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if extra.exists():
                    extra.rename(aside.with_name(aside.name + suffix))
            return self._connect()

    def _connect(self) -> int:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(_close)
        self._pool.shutdown(wait=True)

    async def append(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        self.count = await self._run(self._insert, bodies, False)

    async def prepend(self, bodies: list[bytes]) -> None:
        """Put items in front of everything spooled, in their order: messages that were handed to
        the far end but not acknowledged when it went away. They are older than anything spooled
        since, so the order of the whole stream holds. Not bounded here: they were already counted."""
        if not bodies:
            return
        self.count = await self._run(self._insert, bodies, True)

    def _insert(self, bodies: list[bytes], front: bool) -> int:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        if front:
            first = db.execute("SELECT MIN(seq) FROM items").fetchone()[0]
            start = (first if first is not None else 1) - len(bodies)  # explicit seqs may go below 1
            db.executemany("INSERT INTO items (seq, body) VALUES (?, ?)", [(start + i, b) for i, b in enumerate(bodies)])
        else:
            db.executemany("INSERT INTO items (body) VALUES (?)", [(b,) for b in bodies])
        count = int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        if count > self.max_items and not front:
            excess = count - self.max_items
            db.execute("DELETE FROM items WHERE seq IN (SELECT seq FROM items ORDER BY seq LIMIT ?)", (excess,))
            self.dropped += excess
            count = self.max_items
            log.warning("telemetry spool %s full: dropped the %d oldest items (%d in all)", self.path.name, excess,
                        self.dropped)
        db.execute("COMMIT")
        return count

    async def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` items as (seq, body)."""
        def _peek() -> list[tuple[int, bytes]]:
            assert self._db is not None
            return [(int(s), bytes(b)) for s, b in
                    self._db.execute("SELECT seq, body FROM items ORDER BY seq LIMIT ?", (limit,))]
        return await self._run(_peek)

    async def remove_through(self, seq: int) -> None:
        """Remove every item up to and including `seq` (they were delivered)."""
        def _remove() -> int:
            assert self._db is not None
            self._db.execute("DELETE FROM items WHERE seq <= ?", (seq,))
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        self.count = await self._run(_remove)
