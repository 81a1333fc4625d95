"""The SQLite store: one database file in WAL mode under `data_dir`, owned by one writer thread.

Every call runs on that thread, so the event loop never blocks on disk and SQLite sees one
connection. Writes that guard an invariant commit with `synchronous=FULL` before the awaited call
returns. The schema is versioned with `PRAGMA user_version` and migrated forward on open.

The outbox and its replay:
- An append is one transaction committed with `synchronous=FULL` (fsync) before the charger is
  answered. The outbox bounds are checked against exact in-memory counts of pending rows per
  charger and in total (the store is the only writer: counted once with GROUP BY on open, then
  kept on append, coalescing delete, acknowledgement and dead letter), so an append costs the same
  with ten rows waiting as with a million.
- Replay keeps a cursor per charger (table `replay_cursor`): `sent` is the seq of the row last
  sent to the CSMS, `acked` the seq of the last one the CSMS answered. A pending row with
  `seq <= acked` is done; such rows are deleted in batches (when the session reads its next page,
  and on open), so a replayed message costs one small UPDATE, not a DELETE and an UPDATE of the
  outbox and its index. A pending row with `acked < seq <= sent` was in flight: after a crash it is
  sent again, with the same message id, and reported as a possible duplicate.
- A replayed row's message id is derived from its seq (`gw-<token>-o<seq>`, the token drawn once
  per database): seq is AUTOINCREMENT, so an id is never reused, and the id of a message sent
  again after a crash is the same without having been written down.
- Replay steps run on the event loop thread as a group commit with `synchronous=NORMAL`: in WAL
  mode a commit survives a crash of the process (SIGKILL) at any instant; only a power loss can
  undo the last ones, and then those messages are replayed again (duplicates, with the same
  message ids), never lost, because a row leaves the outbox only after its acknowledgement was
  committed. The step that marks a row as sent is committed before the row is sent, so after a
  SIGKILL exactly the row that may have reached the CSMS is reported as a possible duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from adapters import sqlite_records as records
from adapters.sqlite_health import StoreError, StoreFull, WriteHealth, write_failure_reason
from adapters.sqlite_records import ChargerRecords
from adapters.sqlite_records import rollback as _rollback
from adapters.sqlite_schema import MIGRATIONS as _MIGRATIONS
from adapters.sqlite_schema import schema_tables, schema_version
from adapters.variables_store import VariablesStore
from gateway.ports import OutboxRow

T = TypeVar("T")
_log = logging.getLogger("gateway.store")
__all__ = ["SqliteStore", "StoreError", "StoreFull", "schema_tables", "schema_version"]

# Acknowledged outbox rows are deleted behind the replay, not in its way: a chunk per writer-thread
# job (so appends and commits interleave), once a charger's replay ends or when this many are due.
PURGE_CHUNK = 500
PURGE_DUE = 20_000
PURGE_QUIET = 0.5  # s without a replay commit before a finished replay's rows are deleted

PROTECTED_KINDS = ("start", "stop")  # never refused at the outbox bounds


class SqliteStore(WriteHealth, VariablesStore, ChargerRecords):
    FILE_NAME = "gateway.sqlite3"

    def __init__(self, data_dir: str | Path, *, status_history: bool = False, id_map_grace: float = 7 * 86_400.0,
                 id_map_max: int = 10_000) -> None:
        self.path = Path(data_dir) / self.FILE_NAME
        self.status_history = status_history  # keep every StatusNotification row (no coalescing)
        self.id_map_grace = id_map_grace  # s a finished 1.6 id mapping is kept
        self.id_map_max = id_map_max  # finished id mappings kept at most
        # writes failing now (a full disk): (reason, wall-clock since, refused writes); one ERROR
        # line per episode, `/readyz` and the metrics read it; a probe notices the space returning
        self.write_failure: tuple[str, float, int] | None = None
        self.write_failures = 0  # writes refused since start (a metric)
        self._prober: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection is used by the writer thread and, for replay steps, the loop
        self._step_batch: list[tuple[str, Any, int | None, Any]] = []  # a future, or a callback
        self._last_step = 0.0  # loop time of the last replay commit
        self._purger: asyncio.Task[None] | None = None
        self._purge_ready: set[str] = set()
        self._step_flush: asyncio.Handle | None = None
        # exact in-memory state of the outbox (the store is its only writer; see the module docstring)
        self._pending: dict[str, int] = {}  # pending rows per charger, acknowledged ones excluded
        self._pending_total = 0
        self._cursor: dict[str, list[int]] = {}  # charger -> [acked, sent], as committed in replay_cursor
        self._purge: dict[str, int] = {}  # charger -> acked seq up to which pending rows are not yet deleted
        self._unpurged: dict[str, int] = {}  # charger -> how many acknowledged rows are not yet deleted
        self._read_upto: dict[str, int] = {}  # charger -> highest seq handed to its replay (never coalesced)
        self._replay_prefix = ""

    async def __aenter__(self) -> "SqliteStore":
        self._loop = asyncio.get_running_loop()
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._locked, fn, *args)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """The core's error for a failed statement; a write that could not be kept starts (or
        continues) a write-failure episode."""
        reason = write_failure_reason(exc)
        if reason is None:
            return StoreError(f"{self.path}: {exc}")
        self._failed(reason)
        return StoreFull(f"the store cannot write ({reason}): {self.path}")

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            db = self._db
            before = db.total_changes if db is not None and self.write_failure is not None else None
            result = fn(*args)
            if before is not None and self._db is not None and self._db.total_changes > before:
                self._recovered()
            return result

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL by default (a WAL commit survives a crash of the process, not a power loss);
        # the writes that guard invariant 1 (outbox appends, issued ids) switch to FULL: see _durable
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for n, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={n}; COMMIT;")
        self._db = db
        self._load_outbox_state()

    def _load_outbox_state(self) -> None:
        """Delete the rows acknowledged before the last stop; count what is pending (once)."""
        db = self.db
        token = db.execute("SELECT value FROM counters WHERE name = 'replay_id_token'").fetchone()[0]
        self._replay_prefix = f"gw-{int(token):012x}-o"
        self._cursor = {r[0]: [r[1], r[2]] for r in db.execute("SELECT charger_id, acked, sent FROM replay_cursor")}
        db.execute("BEGIN")
        try:
            for charger_id, (acked, _) in self._cursor.items():
                db.execute("DELETE FROM outbox WHERE charger_id = ? AND state = 'pending' AND seq <= ?",
                           (charger_id, acked))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._pending = {r[0]: r[1] for r in db.execute(
            "SELECT charger_id, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY charger_id")}
        self._pending_total = sum(self._pending.values())
        self._purge.clear()
        self._unpurged.clear()
        self._read_upto.clear()

    def _count(self, charger_id: str, delta: int) -> None:
        n = self._pending.get(charger_id, 0) + delta
        if n > 0:
            self._pending[charger_id] = n
        else:
            self._pending.pop(charger_id, None)
        self._pending_total += delta

    def is_open(self) -> bool:
        """The database is open (a readiness check)."""
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _durable(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` with synchronous=FULL: its commit is on disk (fsync) before it returns."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            return fn(*args)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def _next_id_now(self, name: str) -> int:
        row = self.db.execute("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value", (name,)).fetchone()
        return int(row[0])

    def _next_id(self, name: str) -> int:
        return self._durable(self._next_id_now, name)

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

    # -- outbox ---------------------------------------------------------------------------------

    def _append(self, row: dict[str, Any], max_per_charger: int, max_total: int,
                id_range: tuple[int, int] | None) -> tuple[int | None, int | None]:
        return self._durable(self._append_now, row, max_per_charger, max_total, id_range)

    def _append_now(self, row: dict[str, Any], max_per_charger: int, max_total: int,
                    id_range: tuple[int, int] | None) -> tuple[int | None, int | None]:
        """Insert one outbox row in one transaction. Returns (seq or None if refused, local tx id)."""
        db = self.db
        charger_id = row["charger_id"]
        coalesced = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            if row["kind"] == "status" and not self.status_history:
                # coalesced: only the latest status per connector waits for the CSMS; never a row that
                # was sent (it may have reached the CSMS) or handed to the replay already
                cursor = self._cursor.get(charger_id)
                done = max(cursor[1] if cursor else 0, self._read_upto.get(charger_id, 0))
                coalesced = db.execute(
                    "DELETE FROM outbox WHERE charger_id = ? AND kind = 'status' AND connector IS ? "
                    "AND state = 'pending' AND attempts = 0 AND seq > ?", (charger_id, row["connector"], done)).rowcount
            if row["kind"] not in PROTECTED_KINDS:
                n_charger = self._pending.get(charger_id, 0) - coalesced
                n_total = self._pending_total - coalesced
                if n_charger >= max_per_charger or n_total >= max_total:
                    db.execute("COMMIT")
                    if coalesced:
                        self._count(charger_id, -coalesced)
                    return None, None
            local_tx = None
            if id_range is not None:
                low, high = id_range
                span = high - low + 1
                n = db.execute("UPDATE counters SET value = value + 1 WHERE name = 'offline_transaction_id' "
                               "RETURNING value").fetchone()[0]
                local_tx = low + (n - 1) % span
                db.execute("INSERT OR REPLACE INTO tx_map (charger_id, local_id, csms_id) VALUES (?, ?, NULL)",
                           (row["charger_id"], local_tx))
            sent_id = row.get("sent_id")  # it is on its way to the CSMS already (answered after answer_within)
            cur = db.execute(
                "INSERT INTO outbox (charger_id, protocol, action, payload, kind, connector, local_tx, received_at, "
                "attempts, sent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (charger_id, row["protocol"], row["action"], row["payload"], row["kind"], row["connector"],
                 local_tx, row["received_at"], 1 if sent_id else 0, sent_id),
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._count(charger_id, 1 - coalesced)
        return cur.lastrowid, local_tx

    async def outbox_append(self, row: dict[str, Any], *, max_per_charger: int, max_total: int,
                            id_range: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        """Durably append (synchronous=FULL) before the charger is answered. With `id_range`, also
        issue a local 1.6 transaction id and record it in the id map, in the same transaction."""
        return await self._run(self._append, row, max_per_charger, max_total, id_range)

    def _head(self, charger_id: str, limit: int, after: int) -> list[OutboxRow]:
        db = self.db
        cursor = self._cursor.get(charger_id)
        if cursor is None:
            db.execute("INSERT OR IGNORE INTO replay_cursor (charger_id) VALUES (?)", (charger_id,))
            cursor = self._cursor[charger_id] = [0, 0]
        acked, sent = cursor
        # the row in flight when the link or the gateway went down (seq <= sent) counts one attempt
        # more; the message id is the one it was sent with live, or the one derived from its seq
        # (the rows are built here, on the store's thread, not on the event loop)
        cur = db.execute(
            "SELECT seq, action, payload, local_tx, attempts + (seq <= ?) AS attempts, "
            "COALESCE(sent_id, ? || seq) AS message_id, protocol "
            "FROM outbox WHERE charger_id = ? AND state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
            (sent, self._replay_prefix, charger_id, max(acked, after), limit))
        rows = [OutboxRow(*r) for r in cur.fetchall()]
        if rows:
            self._read_upto[charger_id] = max(self._read_upto.get(charger_id, 0), rows[-1].seq)
        return rows

    async def outbox_head(self, charger_id: str, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        """The next `limit` pending rows of a charger, oldest first: `seq`, `action`, `payload`,
        `local_tx` (a 1.6 start's local id), `message_id` (the id
        it is replayed with: the one it was already sent with, or the one derived from its seq) and
        `attempts` (> 0 when it may have reached the CSMS already); with `after`, only rows after that
        seq (the replay reads its next page while the rows before it are still being replayed).
        Deletes acknowledged rows first when PURGE_DUE of them wait (see `outbox_purge`)."""
        if self._unpurged.get(charger_id, 0) >= PURGE_DUE:
            await self.outbox_purge(charger_id)
        return await self._run(self._head, charger_id, limit, after)

    def _purge_chunk(self, charger_id: str) -> bool:
        upto = self._purge.get(charger_id)
        if upto is None:
            return False
        n = self.db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE charger_id = ? AND state = 'pending' "
            "AND seq <= ? ORDER BY seq LIMIT ?)", (charger_id, upto, PURGE_CHUNK)).rowcount
        if n < PURGE_CHUNK:  # every acknowledged row is gone (`_steps` moves `_purge` under the same lock)
            del self._purge[charger_id]
            self._unpurged.pop(charger_id, None)
        else:
            self._unpurged[charger_id] = max(self._unpurged.get(charger_id, 0) - n, 0)
        return n == PURGE_CHUNK

    def outbox_purge_later(self, charger_id: str) -> None:
        """The charger's replay is over: delete its acknowledged rows once no replay has committed
        for PURGE_QUIET seconds (the DELETE holds the store's lock, which would stall the replays
        of the other chargers), in the background."""
        self._purge_ready.add(charger_id)
        if self._purger is None or self._purger.done():
            self._purger = asyncio.get_running_loop().create_task(self._purge_when_quiet(), name="outbox-purge")

    async def _purge_when_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        while self._purge_ready:
            idle = loop.time() - self._last_step
            if idle < PURGE_QUIET:
                await asyncio.sleep(PURGE_QUIET - idle)
                continue
            charger_id = self._purge_ready.pop()
            try:
                await self.outbox_purge(charger_id)
            except StoreError as exc:  # a restart deletes them
                _log.warning("deleting the replayed outbox rows of %s failed: %s", charger_id, exc)

    async def outbox_purge(self, charger_id: str) -> None:
        """Delete the charger's acknowledged rows (they are already out of every count and query:
        the replay cursor says they are done), PURGE_CHUNK per writer-thread job. Deleting them
        while the replay runs would hold the store's lock for the length of the DELETE and stall
        every charger's replay commits; a restart deletes whatever is left."""
        while await self._run(self._purge_chunk, charger_id):
            pass

    def _step_statements(self, charger_id: str, ack: tuple[int, Any, Any] | None, send: int | None) -> None:
        db = self.db
        if ack is not None:
            seq, bind, stopped = ack
            if send is not None:
                db.execute("UPDATE replay_cursor SET acked = ?, sent = ? WHERE charger_id = ?", (seq, send, charger_id))
            else:
                db.execute("UPDATE replay_cursor SET acked = ? WHERE charger_id = ?", (seq, charger_id))
            if bind is not None:
                db.execute("UPDATE tx_map SET csms_id = ?, auth_status = ? WHERE charger_id = ? AND local_id = ?",
                           (bind[2], bind[3], bind[0], bind[1]))
            if stopped is not None:
                # the CSMS acknowledged the stop: the mapping is kept for a grace period
                self._retire_now(stopped[0], stopped[1])
        elif send is not None:
            db.execute("UPDATE replay_cursor SET sent = ? WHERE charger_id = ?", (send, charger_id))

    def _steps(self, batch: list[tuple[str, Any, int | None]]) -> None:
        """Acknowledge replayed rows (with what their answers taught: a 1.6 id binding, a finished
        mapping) and mark the next rows as sent, for every charger replaying now, in one commit.

        synchronous=NORMAL: in WAL mode a commit survives a crash of the process (SIGKILL); only a
        power loss can undo the last ones, which replays them again (with the same message ids)."""
        db = self.db
        moves: list[tuple[int, int, str]] = []  # the common step (acknowledged, next sent, nothing learnt)
        move = "UPDATE replay_cursor SET acked = ?, sent = ? WHERE charger_id = ?"
        db.execute("BEGIN")
        try:
            for charger_id, ack, send in batch:
                if ack is not None and send is not None and ack[1] is None and ack[2] is None:
                    moves.append((ack[0], send, charger_id))
                    continue
                if moves:  # in batch order
                    db.executemany(move, moves)
                    moves.clear()
                self._step_statements(charger_id, ack, send)
            if moves:
                db.executemany(move, moves)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        for charger_id, ack, send in batch:  # committed: the in-memory copies follow
            cursor = self._cursor.setdefault(charger_id, [0, 0])
            if ack is not None:
                cursor[0] = self._purge[charger_id] = ack[0]
                self._unpurged[charger_id] = self._unpurged.get(charger_id, 0) + 1
                self._count(charger_id, -1)
            if send is not None:
                cursor[1] = send

    def _flush_steps(self) -> None:
        self._last_step = asyncio.get_running_loop().time()
        batch, self._step_batch = self._step_batch, []
        self._step_flush = None
        try:
            self._locked(self._steps, [(charger_id, ack, send) for charger_id, ack, send, _ in batch])
        except sqlite3.Error as exc:
            error = self._error(exc)
            for *_, future in batch:
                if isinstance(future, asyncio.Future):
                    if not future.done():
                        future.set_exception(error)
                else:
                    future(error)
            return
        for *_, future in batch:
            if isinstance(future, asyncio.Future):
                if not future.done():
                    future.set_result(None)
            else:
                future(None)

    async def outbox_step(self, charger_id: str, ack: tuple[int, Any, Any] | None, send: int | None) -> None:
        """Move the charger's replay cursor; returns once committed.

        `ack` = (seq, bind, stopped): the CSMS answered row `seq`; `bind` = (charger, local id,
        CSMS id, auth status) for a replayed 1.6 start; `stopped` = (charger, local id) to unmap.
        `send` = seq: that row goes out now (with the `message_id` outbox_head gave it). Rows are
        acknowledged and sent in seq order; the acknowledged ones are deleted later
        (`outbox_purge`).

        Group commit on the event loop thread: the steps of every charger that replays in the same
        loop iteration share one transaction (a WAL append without fsync, crash-safe for SIGKILL:
        see the module docstring). A hop to the writer thread, or a commit, per replayed message
        cost more than the work and set the replay rate (measured with bench/replay.py). It may
        wait for the writer thread's current statement."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._step_batch.append((charger_id, ack, send, future))
        if self._step_flush is None:
            self._step_flush = loop.call_soon(self._flush_steps)
        await future

    def outbox_step_then(self, charger_id: str, ack: tuple[int, Any, Any] | None, send: int | None,
                         then: Callable[[Exception | None], None]) -> None:
        """`outbox_step` without a future: `then(None)` is called right after the commit, in the
        same loop callback that commits (`then(error)` if it failed). Lets the session send the next
        replayed row from there, with no task switch per message. Call it on the event loop thread."""
        self._step_batch.append((charger_id, ack, send, then))
        if self._step_flush is None:
            self._step_flush = asyncio.get_running_loop().call_soon(self._flush_steps)

    def _mark_sent(self, seq: int, sent_id: str) -> None:
        self.db.execute("UPDATE outbox SET attempts = attempts + 1, sent_id = ? WHERE seq = ?", (sent_id, seq))

    async def outbox_mark_sent(self, seq: int, sent_id: str) -> None:
        """Row `seq` was sent live with `sent_id` and its answer never came: it is replayed with
        that id and reported as a possible duplicate."""
        await self._run(self._mark_sent, seq, sent_id)

    def _dead(self, seq: int, error: str) -> None:
        row = self.db.execute("UPDATE outbox SET state = 'dead', error = ? WHERE seq = ? AND state = 'pending' "
                              "RETURNING charger_id", (error[:500], seq)).fetchone()
        if row is not None:
            self._count(row[0], -1)

    async def outbox_dead(self, seq: int, error: str) -> None:
        await self._run(self._dead, seq, error)

    def _acknowledge(self, charger_id: str, seq: int, bind: tuple[str, int, int, Any] | None,
                     stopped: tuple[str, int] | None) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            gone = db.execute("DELETE FROM outbox WHERE seq = ? AND charger_id = ? AND state = 'pending'",
                              (seq, charger_id)).rowcount
            if bind is not None:
                db.execute("UPDATE tx_map SET csms_id = ?, auth_status = ? WHERE charger_id = ? AND local_id = ?",
                           (bind[2], bind[3], bind[0], bind[1]))
            if stopped is not None:
                self._retire_now(stopped[0], stopped[1])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        cursor = self._cursor.get(charger_id)
        if gone and not (cursor is not None and seq <= cursor[0]):
            self._count(charger_id, -1)

    async def outbox_acknowledge(self, charger_id: str, seq: int, bind: tuple[str, int, int, Any] | None = None,
                                 stopped: tuple[str, int] | None = None) -> None:
        """The CSMS answered row `seq` on the live link after the gateway had stored it (a late
        answer beyond [upstream].answer_within): the row is done, wherever it is in the outbox,
        with what the answer taught (`bind`, `stopped`: as for `outbox_step`), in one commit."""
        await self._run(self._acknowledge, charger_id, seq, bind, stopped)

    def _dead_append(self, row: dict[str, Any], error: str) -> int:
        return self._durable(self._dead_append_now, row, error)

    def _dead_append_now(self, row: dict[str, Any], error: str) -> int:
        cur = self.db.execute(
            "INSERT INTO outbox (charger_id, protocol, action, payload, kind, connector, local_tx, received_at, state, "
            "error) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 'dead', ?)",
            (row["charger_id"], row["protocol"], row["action"], row["payload"], row["kind"], row.get("connector"),
             row["received_at"], error[:500]))
        return int(cur.lastrowid or 0)

    async def outbox_dead_letter(self, row: dict[str, Any], error: str) -> int:
        """Keep a message that must not go to the CSMS as it is (e.g. a 1.6 local transaction id
        with no mapping to the CSMS's) as a dead letter with `error` as its reason, durably."""
        return await self._run(self._dead_append, row, error)

    def _protocols(self, charger_id: str) -> list[str]:
        cursor = self._cursor.get(charger_id)
        acked = cursor[0] if cursor else 0
        rows = self.db.execute(
            "SELECT protocol, MIN(seq) AS first FROM outbox WHERE charger_id = ? AND state = 'pending' AND seq > ? "
            "GROUP BY protocol ORDER BY first", (charger_id, acked)).fetchall()
        return [r[0] for r in rows]

    async def outbox_protocols(self, charger_id: str) -> list[str]:
        """The protocols of the charger's pending rows, that of its oldest row first."""
        return await self._run(self._protocols, charger_id)

    def _backlogs(self) -> list[tuple[str, str]]:
        # per charger, the protocol of its oldest pending row (a backlog is replayed in the
        # protocol it was stored in, oldest first), else that of its boot to replay
        rows = self.db.execute(
            "SELECT charger_id, protocol FROM outbox o WHERE state = 'pending' AND seq = (SELECT MIN(seq) FROM outbox i "
            "WHERE i.charger_id = o.charger_id AND i.state = 'pending' AND i.seq > "
            "COALESCE((SELECT acked FROM replay_cursor c WHERE c.charger_id = o.charger_id), 0)) "
            "UNION SELECT charger_id, protocol FROM pending_boot b WHERE NOT EXISTS (SELECT 1 FROM outbox i "
            "WHERE i.charger_id = b.charger_id AND i.state = 'pending' AND i.seq > "
            "COALESCE((SELECT acked FROM replay_cursor c WHERE c.charger_id = b.charger_id), 0))").fetchall()
        return [(r[0], r[1]) for r in rows]

    async def chargers_with_backlog(self) -> list[tuple[str, str]]:
        return await self._run(self._backlogs)

    def _has_backlog(self, charger_id: str) -> bool:
        if self._pending.get(charger_id, 0) > 0:
            return True
        return self.db.execute("SELECT 1 FROM pending_boot WHERE charger_id = ?", (charger_id,)).fetchone() is not None

    async def has_backlog(self, charger_id: str) -> bool:
        return await self._run(self._has_backlog, charger_id)

    def _summary(self) -> list[dict[str, Any]]:
        # rows acknowledged but not yet deleted (seq <= the charger's acked cursor) do not count
        cur = self.db.execute(
            "SELECT o.charger_id, SUM(o.state = 'pending' AND o.seq > COALESCE(c.acked, 0)) AS depth, "
            "MIN(CASE WHEN o.state = 'pending' AND o.seq > COALESCE(c.acked, 0) THEN o.received_at END), "
            "SUM(o.state = 'dead') AS dead FROM outbox o LEFT JOIN replay_cursor c ON c.charger_id = o.charger_id "
            "GROUP BY o.charger_id HAVING depth > 0 OR dead > 0 ORDER BY o.charger_id")
        return [{"charger_id": r[0], "depth": r[1] or 0, "oldest": r[2], "dead_letters": r[3] or 0}
                for r in cur.fetchall()]

    async def outbox_summary(self) -> list[dict[str, Any]]:
        return await self._run(self._summary)

    def _dead_letters(self, limit: int) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT seq, charger_id, action, received_at, error FROM outbox WHERE state = 'dead' "
                              "ORDER BY seq DESC LIMIT ?", (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(self._dead_letters, limit)

    # -- retiring a 1.6 transaction-id mapping (also inside the outbox steps) -----------------------

    def _retire(self, charger_id: str, local_id: int) -> None:
        self.db.execute("BEGIN")
        try:
            self._retire_now(charger_id, local_id)
            self.db.execute("COMMIT")
        except BaseException:
            _rollback(self.db)
            raise

    def _retire_now(self, charger_id: str, local_id: int) -> None:
        records.tx_retire(self.db, charger_id, local_id, self.id_map_grace, self.id_map_max)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        if self._purger is not None and not self._purger.done():
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

