"""The SQLite store's records beside the outbox: the boot to replay, the 1.6 transaction-id map,
the authorization cache and local lists, the known chargers (gateway/registry.py) and the
transaction log (gateway/txlog.py, /api/v1/transactions). Plain functions over the store's
connection, run on its writer thread, and `ChargerRecords`, the mixin of adapters/sqlite_store.py
that offers them as the store's awaitable methods."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Sequence
from typing import Any


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def chargers_save(db: sqlite3.Connection, rows: list[dict[str, Any]], forget: list[str], keep: int) -> None:
    db.execute("BEGIN")
    try:
        for row in rows:
            db.execute(
                "INSERT INTO chargers (charger_id, protocol, transport, last_seen, boot, connectors, state) "
                "VALUES (:charger_id, :protocol, :transport, :last_seen, :boot, :connectors, :state) "
                "ON CONFLICT (charger_id) DO UPDATE SET protocol = excluded.protocol, "
                "transport = excluded.transport, last_seen = excluded.last_seen, boot = excluded.boot, "
                "connectors = excluded.connectors, state = excluded.state",
                {**row, "boot": _json_or_none(row.get("boot")),
                 "connectors": _json_or_none(row.get("connectors")), "state": _json_or_none(row.get("state"))})
        for charger_id in forget:
            db.execute("DELETE FROM chargers WHERE charger_id = ?", (charger_id,))
        # bounded: beyond `keep`, the chargers seen longest ago are forgotten
        db.execute("DELETE FROM chargers WHERE charger_id IN (SELECT charger_id FROM chargers "
                   "ORDER BY last_seen DESC LIMIT -1 OFFSET ?)", (keep,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def known_chargers(db: sqlite3.Connection) -> list[dict[str, Any]]:
    out = []
    for r in db.execute("SELECT charger_id, protocol, transport, last_seen, boot, connectors, state "
                        "FROM chargers ORDER BY charger_id"):
        row = dict(zip(("charger_id", "protocol", "transport", "last_seen", "boot", "connectors", "state"), r))
        for key in ("boot", "connectors", "state"):
            try:
                row[key] = json.loads(row[key]) if row[key] else None
            except ValueError:
                row[key] = None
        out.append(row)
    return out


def transaction_event(db: sqlite3.Connection, ev: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO transactions (charger_id, transaction_id, evse, connector, started_at, ended_at, meter_start, "
        "meter_stop, energy_wh, reason, offline, ts_clamped, updated_at) VALUES (:charger_id, :transaction_id, "
        ":evse, :connector, :started_at, :ended_at, :meter_start, :meter_stop, :energy_wh, :reason, :offline, "
        ":ts_clamped, :ts) "
        "ON CONFLICT (charger_id, transaction_id) DO UPDATE SET "
        "evse = COALESCE(excluded.evse, evse), connector = COALESCE(excluded.connector, connector), "
        "started_at = COALESCE(started_at, excluded.started_at), ended_at = COALESCE(excluded.ended_at, ended_at), "
        "meter_start = COALESCE(meter_start, excluded.meter_start), "
        "meter_stop = COALESCE(excluded.meter_stop, meter_stop), energy_wh = COALESCE(excluded.energy_wh, energy_wh), "
        "reason = COALESCE(excluded.reason, reason), offline = MAX(offline, excluded.offline), "
        "ts_clamped = MAX(ts_clamped, excluded.ts_clamped), "
        "updated_at = excluded.updated_at", ev)


def transactions(db: sqlite3.Connection, charger_id: str | None, state: str | None, since: str | None, until: str | None,
                  limit: int) -> list[dict[str, Any]]:
    where, args = [], []
    if charger_id is not None:
        where.append("charger_id = ?")
        args.append(charger_id)
    if state == "open":
        where.append("ended_at IS NULL")
    elif state == "ended":
        where.append("ended_at IS NOT NULL")
    if since is not None:
        where.append("COALESCE(started_at, updated_at) >= ?")
        args.append(since)
    if until is not None:
        where.append("COALESCE(started_at, updated_at) < ?")
        args.append(until)
    sql = ("SELECT charger_id, transaction_id, evse, connector, started_at, ended_at, meter_start, meter_stop, "
           "energy_wh, reason, offline, ts_clamped FROM transactions")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY COALESCE(started_at, updated_at) DESC LIMIT ?"
    cur = db.execute(sql, (*args, limit))
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r)) for r in cur.fetchall()]
    for row in out:
        row["offline"] = bool(row["offline"])
        row["ts_clamped"] = bool(row["ts_clamped"])
    return out


def rollback(db: sqlite3.Connection) -> None:
    """Roll back what is open (SQLite may already have rolled back after a full disk)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def pending_boot_set(db: sqlite3.Connection, charger_id: str, protocol: str, payload: str, received_at: str) -> None:
    db.execute("INSERT OR REPLACE INTO pending_boot (charger_id, protocol, payload, received_at) "
                    "VALUES (?, ?, ?, ?)", (charger_id, protocol, payload, received_at))


def pending_boot(db: sqlite3.Connection, charger_id: str) -> dict[str, Any] | None:
    r = db.execute("SELECT payload, received_at, protocol FROM pending_boot WHERE charger_id = ?",
                        (charger_id,)).fetchone()
    return {"payload": r[0], "received_at": r[1], "protocol": r[2]} if r else None


def tx_retire(db: sqlite3.Connection, charger_id: str, local_id: int, grace: float, keep: int) -> None:
    """The CSMS acknowledged the stop: the mapping stays `grace` seconds more (bounded by `keep`
    finished ones), for late MeterValues and retried StopTransactions. In the caller's transaction."""
    now = datetime.now(timezone.utc)
    db.execute("UPDATE tx_map SET stopped = 1, retired_at = COALESCE(retired_at, ?) "
               "WHERE charger_id = ? AND local_id = ?", (now.isoformat(), charger_id, local_id))
    db.execute("DELETE FROM tx_map WHERE retired_at IS NOT NULL AND retired_at < ?",
               ((now - timedelta(seconds=grace)).isoformat(),))
    db.execute("DELETE FROM tx_map WHERE rowid IN (SELECT rowid FROM tx_map WHERE retired_at IS NOT NULL "
               "ORDER BY retired_at DESC, rowid DESC LIMIT -1 OFFSET ?)", (keep,))


def auth_load(db: sqlite3.Connection) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str, str, str | None]]]:
    cache = [tuple(r) for r in db.execute("SELECT id_tag, status, expires_at FROM auth_cache")]
    lists = [tuple(r) for r in db.execute("SELECT charger_id, id_tag, status, expires_at FROM local_list")]
    return cache, lists


def local_list_update(db: sqlite3.Connection, charger_id: str, full: bool, version: int | None,
                 entries: list[tuple[str, str | None, str | None]]) -> None:
    db.execute("BEGIN")
    try:
        if full:
            db.execute("DELETE FROM local_list WHERE charger_id = ?", (charger_id,))
        for id_tag, status, expires in entries:
            if status is None:
                db.execute("DELETE FROM local_list WHERE charger_id = ? AND id_tag = ?", (charger_id, id_tag))
            else:
                db.execute("INSERT OR REPLACE INTO local_list (charger_id, id_tag, status, expires_at) "
                           "VALUES (?, ?, ?, ?)", (charger_id, id_tag, status, expires))
        if version is not None:
            db.execute("INSERT OR REPLACE INTO local_list_version (charger_id, version) VALUES (?, ?)",
                       (charger_id, version))
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


class ChargerRecords:
    """Mixin for SqliteStore (needs its `db`, `_run` and `_retire`): the records beside the outbox."""

    _run: Callable[..., Any]
    _retire: Callable[[str, int], None]

    @property
    def db(self) -> sqlite3.Connection:  # SqliteStore's own property comes first in the MRO
        raise NotImplementedError

    # -- known chargers (gateway/registry.py) ----------------------------------------------------

    async def chargers_save(self, rows: list[dict[str, Any]], forget: Sequence[str] = (), keep: int = 5000) -> None:
        """Upsert known chargers (`charger_id`, `protocol`, `transport`, `last_seen`, and JSON-able
        `boot`, `connectors`, `state`) and delete the `forget` ones, in one transaction."""
        await self._run(chargers_save, self.db, rows, list(forget), keep)

    async def known_chargers(self) -> list[dict[str, Any]]:
        """Every charger the store remembers, with what it last said (see chargers_save)."""
        return await self._run(known_chargers, self.db)

    # -- the boot to replay -----------------------------------------------------------------------

    async def pending_boot_set(self, charger_id: str, protocol: str, payload: str, received_at: str) -> None:
        await self._run(pending_boot_set, self.db, charger_id, protocol, payload, received_at)

    async def pending_boot(self, charger_id: str) -> dict[str, Any] | None:
        return await self._run(pending_boot, self.db, charger_id)

    async def pending_boot_clear(self, charger_id: str) -> None:
        await self._run(lambda: self.db.execute("DELETE FROM pending_boot WHERE charger_id = ?", (charger_id,)))

    # -- 1.6 transaction-id map -------------------------------------------------------------------

    async def tx_map(self, charger_id: str) -> list[tuple[int, int | None]]:
        def q() -> list[tuple[int, int | None]]:
            return [(r[0], r[1]) for r in self.db.execute(
                "SELECT local_id, csms_id FROM tx_map WHERE charger_id = ?", (charger_id,)).fetchall()]
        return await self._run(q)

    async def tx_mark_stopped(self, charger_id: str, local_id: int) -> None:
        await self._run(lambda: self.db.execute(
            "UPDATE tx_map SET stopped = 1 WHERE charger_id = ? AND local_id = ?", (charger_id, local_id)))

    async def tx_retire(self, charger_id: str, local_id: int) -> None:
        """The CSMS acknowledged the stop: the mapping is kept `id_map_grace` seconds more (see
        `tx_retire`)."""
        await self._run(self._retire, charger_id, local_id)

    async def tx_forget(self, charger_id: str, local_id: int) -> None:
        """Kept for callers of the earlier API: the mapping is retired (kept for the grace period)."""
        await self.tx_retire(charger_id, local_id)

    async def tx_retired(self, charger_id: str) -> set[int]:
        """Local ids of the charger whose mapping is finished (kept for the grace period)."""
        def q() -> set[int]:
            return {int(r[0]) for r in self.db.execute(
                "SELECT local_id FROM tx_map WHERE charger_id = ? AND retired_at IS NOT NULL", (charger_id,))}
        return await self._run(q)

    # -- authorization ----------------------------------------------------------------------------

    async def auth_load(self) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str, str, str | None]]]:
        return await self._run(auth_load, self.db)

    async def auth_cache_put(self, id_tag: str, status: str, expires_at: str | None) -> None:
        await self._run(lambda: self.db.execute(
            "INSERT OR REPLACE INTO auth_cache (id_tag, status, expires_at) VALUES (?, ?, ?)",
            (id_tag, status, expires_at)))

    async def auth_cache_clear(self) -> None:
        await self._run(lambda: self.db.execute("DELETE FROM auth_cache"))

    async def local_list_update(self, charger_id: str, full: bool, version: int | None,
                                entries: list[tuple[str, str | None, str | None]]) -> None:
        await self._run(local_list_update, self.db, charger_id, full, version, entries)

    # -- transaction log --------------------------------------------------------------------------

    async def transaction_event(self, ev: dict[str, Any]) -> None:
        await self._run(transaction_event, self.db, ev)

    async def transactions(self, *, charger_id: str | None = None, state: str | None = None, since: str | None = None,
                           until: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first. `state`: "open" | "ended" | None; `since`/`until`: ISO 8601 bounds on the start."""
        return await self._run(transactions, self.db, charger_id, state, since, until, limit)
