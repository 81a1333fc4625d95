"""The SQLite store: one database file in WAL mode under `data_dir`, owned by one writer thread.

Every call runs on that thread, so the event loop never blocks on disk and SQLite sees one
connection. Writes that guard an invariant commit with `synchronous=FULL` before the awaited call
returns. The schema is versioned with `PRAGMA user_version` and migrated forward on open.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from gateway.errors import GatewayError

T = TypeVar("T")

_MIGRATIONS: list[str] = [
    # 1: counters (durable id sequences) and the charger registry
    """
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('transaction_id', 0);
    CREATE TABLE chargers (
        charger_id TEXT PRIMARY KEY,
        protocol TEXT NOT NULL,
        transport TEXT NOT NULL,
        last_seen TEXT NOT NULL
    );
    """,
]


class StoreError(GatewayError):
    pass


class SqliteStore:
    FILE_NAME = "gateway.sqlite3"

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / self.FILE_NAME
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def __aenter__(self) -> "SqliteStore":
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for n, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={n}; COMMIT;")
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _next_id(self, name: str) -> int:
        row = self.db.execute("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value", (name,)).fetchone()
        return int(row[0])

    async def next_transaction_id(self) -> int:
        return await self._run(self._next_id, "transaction_id")

    def _seen(self, charger_id: str, protocol: str, transport: str, when: str) -> None:
        self.db.execute(
            "INSERT INTO chargers (charger_id, protocol, transport, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (charger_id) DO UPDATE SET protocol = excluded.protocol, "
            "transport = excluded.transport, last_seen = excluded.last_seen",
            (charger_id, protocol, transport, when),
        )

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None:
        await self._run(self._seen, charger_id, version, transport, when)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)
