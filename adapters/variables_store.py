"""The store's part for the variables mirror (gateway/mirror.py): tables `variables` (one row per
charger and variable name, with when it was read or last changed and by which message),
`variable_reads` (the state of each charger's last read) and `variable_requests` (what the gateway
asked a charger for, e.g. environment reporting, and the charger's answer).

Mixed into `adapters.sqlite_store.SqliteStore` (its writer thread, its connection). A secret's value
never reaches these tables: the mirror passes None for it."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, TypeVar

import orjson

T = TypeVar("T")

MIGRATION = """
CREATE TABLE variables (
    charger_id TEXT NOT NULL,
    name TEXT NOT NULL,
    component TEXT,
    component_instance TEXT,
    evse INTEGER,
    connector INTEGER,
    variable TEXT NOT NULL,
    variable_instance TEXT,
    attribute TEXT,
    value TEXT,
    secret INTEGER NOT NULL DEFAULT 0,
    known INTEGER NOT NULL DEFAULT 1,
    mutability TEXT,
    characteristics TEXT,
    monitors TEXT,
    source TEXT NOT NULL,
    read_at TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    read_id INTEGER,
    PRIMARY KEY (charger_id, name)
);
CREATE INDEX variables_changed ON variables (charger_id, changed_at);
CREATE TABLE variable_reads (
    charger_id TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    read_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    detail TEXT
);
CREATE TABLE variable_requests (
    charger_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    info TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (charger_id, kind, target)
);
"""

COLUMNS = ("name", "component", "component_instance", "evse", "connector", "variable", "variable_instance", "attribute",
           "value", "secret", "known", "mutability", "characteristics", "monitors", "source", "read_at", "changed_at",
           "read_id")

_UPSERT = (
    "INSERT INTO variables (charger_id, " + ", ".join(COLUMNS) + ") VALUES (:charger_id, "
    + ", ".join(f":{c}" for c in COLUMNS) + ") ON CONFLICT (charger_id, name) DO UPDATE SET "
    "value = CASE WHEN excluded.known = 0 OR :value_given THEN excluded.value ELSE variables.value END, "
    "changed_at = CASE WHEN (excluded.known = 0 OR :value_given) AND (variables.value IS NOT excluded.value "
    "  OR variables.known IS NOT excluded.known) THEN excluded.changed_at ELSE variables.changed_at END, "
    "secret = MAX(variables.secret, excluded.secret), known = excluded.known, "
    "mutability = COALESCE(excluded.mutability, variables.mutability), "
    "characteristics = COALESCE(excluded.characteristics, variables.characteristics), "
    "monitors = COALESCE(excluded.monitors, variables.monitors), "
    # a message that carries no value (a monitor set or reported) leaves where the value came from
    "source = CASE WHEN excluded.known = 0 OR :value_given THEN excluded.source ELSE variables.source END, "
    "read_at = CASE WHEN excluded.known = 0 OR :value_given THEN excluded.read_at ELSE variables.read_at END, "
    "read_id = COALESCE(excluded.read_id, variables.read_id)"
)


class VariablesStore:
    """Mixin for SqliteStore (needs its `db` and `_run`)."""

    _run: Callable[..., Any]

    @property
    def db(self) -> sqlite3.Connection:  # SqliteStore's own property comes first in the MRO
        raise NotImplementedError

    def _vars_put(self, charger_id: str, rows: list[dict[str, Any]], max_rows: int) -> int:
        """Upsert `rows`; a new name beyond `max_rows` for the charger is not taken. Returns how
        many were not taken."""
        db = self.db
        have = db.execute("SELECT COUNT(*) FROM variables WHERE charger_id = ?", (charger_id,)).fetchone()[0]
        dropped = 0
        db.execute("BEGIN")
        try:
            for row in rows:
                new = db.execute("SELECT 1 FROM variables WHERE charger_id = ? AND name = ?",
                                 (charger_id, row["name"])).fetchone() is None
                if new and have >= max_rows:
                    dropped += 1
                    continue
                args = {"charger_id": charger_id, **{c: row.get(c) for c in COLUMNS}, "value_given": row["value_given"]}
                for c in ("characteristics", "monitors"):
                    if args[c] is not None:
                        args[c] = orjson.dumps(args[c]).decode()
                db.execute(_UPSERT, args)
                have += new
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return dropped

    async def variables_put(self, charger_id: str, rows: list[dict[str, Any]], max_rows: int = 1_000_000) -> int:
        return int(await self._run(self._vars_put, charger_id, rows, max_rows))

    def _vars_prune(self, charger_id: str, read_id: int) -> int:
        return self.db.execute("DELETE FROM variables WHERE charger_id = ? AND read_id IS NOT ?",
                               (charger_id, read_id)).rowcount

    async def variables_prune(self, charger_id: str, read_id: int) -> int:
        """A complete read is the whole truth: what it did not list is gone."""
        return int(await self._run(self._vars_prune, charger_id, read_id))

    def _vars_list(self, charger_id: str, component: str | None, variable: str | None, key: str | None,
                   changed_since: str | None, name: str | None, limit: int) -> list[dict[str, Any]]:
        where, args = ["charger_id = ?"], [charger_id]
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if component is not None:
            where.append("component = ? COLLATE NOCASE")
            args.append(component)
        if variable is not None:
            where.append("variable = ? COLLATE NOCASE")
            args.append(variable)
        if key is not None:
            where.append("instr(lower(name), lower(?)) > 0")
            args.append(key)
        if changed_since is not None:
            where.append("changed_at >= ?")
            args.append(changed_since)
        cur = self.db.execute("SELECT " + ", ".join(COLUMNS) + " FROM variables WHERE " + " AND ".join(where)
                              + " ORDER BY name LIMIT ?", (*args, limit))
        out = []
        for r in cur.fetchall():
            row = dict(zip(COLUMNS, r))
            for c in ("characteristics", "monitors"):
                row[c] = orjson.loads(row[c]) if row[c] else None
            row["secret"], row["known"] = bool(row["secret"]), bool(row["known"])
            out.append(row)
        return out

    async def variables(self, charger_id: str, *, component: str | None = None, variable: str | None = None,
                        key: str | None = None, changed_since: str | None = None, name: str | None = None,
                        limit: int = 100_000) -> list[dict[str, Any]]:
        return list(await self._run(self._vars_list, charger_id, component, variable, key, changed_since, name, limit))

    def _read_set(self, charger_id: str, protocol: str, read_id: int, state: str, started_at: str,
                  finished_at: str | None, detail: dict[str, Any] | None) -> None:
        self.db.execute(
            "INSERT INTO variable_reads (charger_id, protocol, read_id, state, started_at, finished_at, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (charger_id) DO UPDATE SET protocol = excluded.protocol, "
            "read_id = excluded.read_id, state = excluded.state, started_at = excluded.started_at, "
            "finished_at = excluded.finished_at, detail = excluded.detail",
            (charger_id, protocol, read_id, state, started_at, finished_at,
             orjson.dumps(detail).decode() if detail is not None else None))

    async def variables_read_set(self, charger_id: str, protocol: str, read_id: int, state: str, started_at: str,
                                 finished_at: str | None = None, detail: dict[str, Any] | None = None) -> None:
        await self._run(self._read_set, charger_id, protocol, read_id, state, started_at, finished_at, detail)

    def _read_get(self, charger_id: str) -> dict[str, Any] | None:
        r = self.db.execute("SELECT protocol, read_id, state, started_at, finished_at, detail FROM variable_reads "
                            "WHERE charger_id = ?", (charger_id,)).fetchone()
        if r is None:
            return None
        return {"protocol": r[0], "read_id": r[1], "state": r[2], "started_at": r[3], "finished_at": r[4],
                "detail": orjson.loads(r[5]) if r[5] else None}

    async def variables_read(self, charger_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run(self._read_get, charger_id)
        return result

    def _request_put(self, charger_id: str, kind: str, target: str, request: dict[str, Any], status: str,
                     info: str | None, at: str) -> None:
        self.db.execute(
            "INSERT INTO variable_requests (charger_id, kind, target, request, status, info, at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (charger_id, kind, target) DO UPDATE SET request = excluded.request, status = excluded.status, "
            "info = excluded.info, at = excluded.at",
            (charger_id, kind, target, orjson.dumps(request).decode(), status, info, at))

    async def variable_request_put(self, charger_id: str, kind: str, target: str, request: dict[str, Any], status: str,
                                   info: str | None, at: str) -> None:
        await self._run(self._request_put, charger_id, kind, target, request, status, info, at)

    def _requests(self, charger_id: str, kind: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT target, request, status, info, at FROM variable_requests "
                              "WHERE charger_id = ? AND kind = ? ORDER BY target", (charger_id, kind))
        return [{"target": r[0], "request": orjson.loads(r[1]), "status": r[2], "info": r[3], "at": r[4]}
                for r in cur.fetchall()]

    async def variable_requests(self, charger_id: str, kind: str) -> list[dict[str, Any]]:
        return list(await self._run(self._requests, charger_id, kind))

    def _forget(self, charger_id: str) -> None:
        for table in ("variables", "variable_reads", "variable_requests"):
            self.db.execute(f"DELETE FROM {table} WHERE charger_id = ?", (charger_id,))  # noqa: S608 - fixed names

    async def variables_forget(self, charger_id: str) -> None:
        await self._run(self._forget, charger_id)
