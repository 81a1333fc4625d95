"""The SQLite store's write health: a write that could not be kept (a full disk, a failing or
read-only file system) starts an episode, logged once at ERROR; `/readyz` and the metrics read
it; a probe notices the space returning and any write that succeeds ends it. A mixin for
adapters/sqlite_store.py (it needs the store's connection and `_run`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, StoreWriteFailed

_log = logging.getLogger("gateway.store")

# SQLite result codes (primary, the low byte) that mean "this write could not be kept": the disk
# is full, the file system failed or went read-only, a file could not be opened
_WRITE_FAILURES = {13: "SQLITE_FULL", 10: "SQLITE_IOERR", 8: "SQLITE_READONLY", 14: "SQLITE_CANTOPEN"}
PROBE_PERIOD = 1.0  # s between checks whether a store that could not write can again
PROBE_FREE = 256 * 1024  # bytes free in data_dir before a write is tried again by the probe


class StoreError(GatewayError):
    pass


class StoreFull(StoreWriteFailed, StoreError):
    """A write failed for lack of space or a failing disk (see `_WRITE_FAILURES`)."""


def write_failure_reason(exc: sqlite3.Error) -> str | None:
    """Why a failed statement means "this write could not be kept" (None: another error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _WRITE_FAILURES:
        return str(exc)
    text = str(exc).lower()
    if "disk is full" in text or "disk i/o error" in text or "readonly" in text:
        return str(exc)
    return None


class WriteHealth:
    """Mixin for SqliteStore: the write-failure episodes (see the module doc)."""

    path: Path
    _db: sqlite3.Connection | None
    _run: Callable[..., Any]
    write_failure: tuple[str, float, int] | None  # (reason, wall-clock since, refused writes)
    write_failures: int  # writes refused since start (a metric)
    _prober: asyncio.Task[None] | None
    _loop: asyncio.AbstractEventLoop | None

    @property
    def db(self) -> sqlite3.Connection:  # SqliteStore's own property comes first in the MRO
        raise NotImplementedError

    def _failed(self, reason: str) -> None:
        self.write_failures += 1
        failure = self.write_failure
        if failure is not None:
            self.write_failure = (failure[0], failure[1], failure[2] + 1)
            return
        self.write_failure = (reason, time.time(), 1)
        _log.error("the store cannot write (%s): %s; messages that must be kept for the CSMS are refused with "
                   "InternalError (the chargers retry them) until it can write again", reason, self.path)
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._start_probe)

    def _recovered(self) -> None:
        failure, self.write_failure = self.write_failure, None
        if failure is not None:
            _log.warning("the store writes again after %.0f s (%d writes refused meanwhile): %s",
                         time.time() - failure[1], failure[2], self.path)

    def _start_probe(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe(), name="store-probe")

    async def _probe(self) -> None:
        """While writes fail: once data_dir has room again, try a small write; its success ends
        the episode (so does any other write that succeeds)."""
        while self.write_failure is not None and self._db is not None:
            await asyncio.sleep(PROBE_PERIOD)
            try:
                free = await asyncio.to_thread(self._free_bytes)
                if free >= PROBE_FREE:
                    await self._run(self._probe_write)
            except (StoreError, OSError):
                continue

    def _free_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _probe_write(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('write_probe', ?)", (int(time.time()),))

    @property
    def writable(self) -> bool:
        return self._db is not None and self.write_failure is None

    def health(self) -> bool | str:
        """For /readyz: True, or why the store is not ready."""
        if self._db is None:
            return f"store {self.path} is not open"
        failure = self.write_failure
        if failure is not None:
            since = datetime.fromtimestamp(failure[1], timezone.utc).isoformat(timespec="seconds")
            return f"store {self.path} cannot write since {since}: {failure[0]}"
        return True
