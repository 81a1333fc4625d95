"""The store's start-up check, and `ocpp-gateway store check|recover`.

A damaged `gateway.sqlite3` must stop the start with one line, not start empty or end in a
traceback that a supervisor restarts for ever. Before the store is opened, `check` looks at:

- the file: missing or empty (0 bytes) although data_dir shows an earlier run (the install id, a
  WAL file): the backlog and the id counters would silently be gone;
- the header: not an SQLite database (overwritten), or shorter than the header says (truncated);
- the content: `PRAGMA quick_check` at start (every page read, each b-tree checked; the full
  `integrity_check`, which also matches every index to its table, with `store check`);
- the schema: a version newer than this gateway knows (a downgrade), or tables missing.

It opens the file read-only: a damaged file is left as it was found (its WAL is not folded in), for
`recover` to move aside and for whoever looks at it later.

`recover` (run with the gateway stopped: it takes the instance lock) moves the file (and its WAL)
aside as `gateway.sqlite3.damaged-<UTC time>`, says what is lost as far as the file can still be
read (messages waiting for the CSMS per charger, open transactions, ...), creates a fresh store and
carries the transaction-id counters over when they can be read, so ids the gateway issued are not
issued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import struct
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from adapters.datadir import InstanceLock, install_id, install_id_path
from adapters.sqlite_store import SqliteStore, schema_tables, schema_version
from gateway.errors import EXIT_STORE_DAMAGED, StoreDamaged

HEADER = b"SQLite format 3\x00"
COUNTERS = ("transaction_id", "offline_transaction_id")


@dataclass
class Finding:
    """What the check found: `problem` is None for a healthy store (or a first start)."""

    path: Path
    problem: str | None = None
    fresh: bool = False  # no store yet, and nothing says there was one
    version: int | None = None
    newer: bool = False  # written by a newer gateway (a downgrade): not damaged, but not readable here

    def line(self) -> str:
        """The one line for the operator: the file, what is wrong, what to do."""
        do = WHAT_TO_DO
        if self.newer:
            do = "run the newer ocpp-gateway again, or " + do
        return f"the store {self.path} {self.problem}; the gateway will not start on it: {do}"


WHAT_TO_DO = ("run `ocpp-gateway store recover` (with the same -c) to move it aside and start a fresh one, "
              "or restore data_dir from a backup")


def store_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SqliteStore.FILE_NAME


def check(data_dir: str | Path, *, full: bool = False) -> Finding:
    """Look at the store in `data_dir` without changing it. `full`: integrity_check instead of
    quick_check."""
    path = store_path(data_dir)
    wal = path.with_name(path.name + "-wal")
    earlier = [p.name for p in (install_id_path(data_dir), wal) if p.exists()]
    found = Finding(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if earlier:
            found.problem = f"is missing, but data_dir shows an earlier run ({', '.join(earlier)})"
        else:
            found.fresh = True
        return found
    if size == 0:
        if earlier:
            found.problem = f"is empty (0 bytes), but data_dir shows an earlier run ({', '.join(earlier)})"
        else:
            found.fresh = True  # created and never written: a first start that stopped at once
        return found
    # A WAL with frames in it may hold pages the file does not have yet (a checkpoint that a crash
    # cut short writes page 1, with the new page count, first): SQLite completes that on open, so
    # the size is only checked against the header when there is no such WAL.
    wal_frames = wal.exists() and wal.stat().st_size > 32  # 32 bytes: a WAL header and no frame
    problem = _header_problem(path, size, check_size=not wal_frames)
    if problem is None:
        problem = _content_problem(path, found, full)
    found.problem = problem
    return found


def _header_problem(path: Path, size: int, *, check_size: bool = True) -> str | None:
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(HEADER):
        return "is not an SQLite database (its header is overwritten or cut off)"
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return "has a damaged header (page size)"
    if not check_size:
        return None
    pages, change, valid_for = struct.unpack(">I", head[28:32])[0], head[24:28], head[92:96]
    if change == valid_for and pages * page_size > size:  # the header's page count is current
        return f"is truncated ({size} bytes; its header says {pages * page_size})"
    if size % page_size:
        return f"is truncated ({size} bytes, not a whole number of {page_size}-byte pages)"
    return None


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection (the WAL is read, never folded into the file). SQLite may create the
    -wal and -shm files to read a WAL database; those it created are removed afterwards."""
    siblings = {s: path.with_name(path.name + s) for s in ("-wal", "-shm")}
    existed = {s for s, p in siblings.items() if p.exists()}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        yield db
    finally:
        db.close()
        for suffix, sibling in siblings.items():
            if suffix not in existed:
                with contextlib.suppress(OSError):
                    sibling.unlink()


def _content_problem(path: Path, found: Finding, full: bool) -> str | None:
    try:
        with _read_only(path) as db:
            return _content(db, found, full)
    except sqlite3.Error as exc:
        return f"cannot be read ({exc})"


def _content(db: sqlite3.Connection, found: Finding, full: bool) -> str | None:
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check(5)" if full else "PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:  # so damaged that the check itself stops
        return f"fails its integrity check ({exc})"
    if rows != ["ok"]:
        return f"fails its integrity check ({'; '.join(str(r) for r in rows)[:300]})"
    version = found.version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > schema_version():
        found.newer = True
        return f"was written by a newer ocpp-gateway (schema {version}; this one knows up to {schema_version()})"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = sorted(schema_tables(version) - tables)
    if missing:
        return f"lacks tables of its schema {version} ({', '.join(missing)})"
    return None


def startup_check(data_dir: str | Path) -> Finding:
    """The check at start: raises StoreDamaged with the line for the operator."""
    found = check(data_dir)
    if found.problem is not None:
        raise StoreDamaged(found.line())
    return found


# -- recover --------------------------------------------------------------------------------------


def what_it_holds(path: Path) -> tuple[list[str], dict[str, int]]:
    """What can still be read from a (damaged) store: lines for the operator, and the counters."""
    lines: list[str] = []
    counters: dict[str, int] = {}
    if not path.exists() or path.stat().st_size == 0:
        return ["nothing (the file is missing or empty)"], counters
    try:
        with _read_only(path) as db:

            def ask(what: str, sql: str) -> list[tuple[object, ...]] | None:
                try:
                    return list(db.execute(sql))
                except sqlite3.Error as exc:
                    lines.append(f"{what}: cannot be read ({exc})")
                    return None

            waiting = ask("messages waiting for the CSMS",
                          "SELECT o.charger_id, COUNT(*) FROM outbox o LEFT JOIN replay_cursor c USING (charger_id) "
                          "WHERE o.state = 'pending' AND o.seq > COALESCE(c.acked, 0) GROUP BY o.charger_id "
                          "ORDER BY 2 DESC, 1")
            if waiting is not None:
                total = sum(int(str(n)) for _, n in waiting)
                per = ", ".join(f"{cid} {n}" for cid, n in waiting[:10]) + (", ..." if len(waiting) > 10 else "")
                lines.append(f"messages waiting for the CSMS: {total}" + (f" ({per})" if waiting else ""))
            for what, sql in (
                    ("dead letters", "SELECT COUNT(*) FROM outbox WHERE state != 'pending'"),
                    ("open 1.6 transactions (id mappings)", "SELECT COUNT(*) FROM tx_map WHERE stopped = 0"),
                    ("transactions in the transaction log", "SELECT COUNT(*) FROM transactions"),
                    ("authorization cache entries", "SELECT COUNT(*) FROM auth_cache"),
                    ("local authorization list entries", "SELECT COUNT(*) FROM local_list"),
                    ("boots waiting for the CSMS", "SELECT COUNT(*) FROM pending_boot")):
                rows = ask(what, sql)
                if rows is not None:
                    lines.append(f"{what}: {rows[0][0]}")
            rows = ask("transaction id counters", "SELECT name, value FROM counters")
            if rows is not None:
                counters = {str(name): int(str(value)) for name, value in rows if name in COUNTERS}
    except sqlite3.Error as exc:
        lines.append(f"nothing can be read from it ({exc})")
    return lines, counters


def move_aside(path: Path, now: datetime | None = None) -> Path:
    """`gateway.sqlite3` -> `gateway.sqlite3.damaged-<UTC>`; its WAL and shared-memory files follow
    under the names SQLite pairs with the new one (`...-wal`, `...-shm`)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target


async def fresh_store(data_dir: str | Path, counters: dict[str, int]) -> None:
    """Create the store anew (schema and all), then carry the transaction-id counters over."""
    async with SqliteStore(data_dir):
        pass
    db = sqlite3.connect(store_path(data_dir), isolation_level=None)
    try:
        for name, value in counters.items():
            db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = ?", (value, name))
    finally:
        db.close()


def store_command(action: str, data_dir: str | Path, *, force: bool = False) -> int:
    """`ocpp-gateway store check|recover`. Check: exit 0 (healthy, or no store yet), 5 damaged.
    Recover: takes the instance lock (AlreadyRunning while the gateway runs), moves the damaged
    file aside, says what is lost, creates a fresh store; exit 0."""
    if action == "check":
        found = check(data_dir, full=True)
        if found.problem is not None:
            print(found.line(), file=sys.stderr)
            return EXIT_STORE_DAMAGED
        if found.fresh:
            print(f"no store yet at {found.path} (the first start creates it)")
        else:
            print(f"the store {found.path} is sound (integrity_check ok, schema {found.version})")
        return 0
    with InstanceLock(data_dir):
        found = check(data_dir, full=True)
        if found.problem is None and not force:
            print(f"the store {found.path} is sound; nothing to recover (--force starts a fresh one anyway)")
            return 0
        print(f"the store {found.path} {found.problem or 'is sound (recovering it anyway: --force)'}")
        held, counters = what_it_holds(found.path)
        target = move_aside(found.path) if found.path.exists() else None
        asyncio.run(fresh_store(data_dir, counters))
        install_id(data_dir)
        if target is not None:
            print(f"moved it to {target} (with its -wal/-shm files, if any); it stays there for you to keep or delete")
        print("lost with it (not in the new store):")
        for line in held:
            print(f"  {line}")
        if counters:
            carried = ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))
            print(f"carried over: the transaction id counters ({carried}), so no id is issued twice")
        else:
            print("the transaction id counters could not be read: 1.6 transaction ids start again from the beginning")
        print(f"created a fresh store {found.path}; start the gateway")
    return 0
