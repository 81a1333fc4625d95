"""The store's memory of known chargers (adapters/sqlite_store.py, migration 5) on the real SQLite
file: saved rows come back after reopening, JSON columns round-trip, forgetting deletes, the table
is bounded (the chargers seen longest ago go first), and a store from before the migration upgrades
with its chargers kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from adapters.sqlite_store import _MIGRATIONS, SqliteStore


def row(cid: str, seen: str, status: str = "Charging") -> dict:
    return {"charger_id": cid, "protocol": "ocpp1.6", "transport": "websocket", "last_seen": seen,
            "boot": {"vendor": "ACME", "model": "W"}, "connectors": [{"evse": 1, "connector": None,
                                                                     "status": status, "error_code": "NoError",
                                                                     "since": seen}],
            "state": {"connected": False}}


async def test_known_chargers_round_trip_forget_and_bound(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path) as store:
        assert await store.known_chargers() == []
        await store.chargers_save([row("A", "2026-01-01T10:00:00Z"), row("B", "2026-01-01T11:00:00Z")])
        await store.chargers_save([row("A", "2026-01-01T12:00:00Z", "Available")])  # an update
    async with SqliteStore(tmp_path) as store:  # reopened
        known = {r["charger_id"]: r for r in await store.known_chargers()}
        assert set(known) == {"A", "B"}
        assert known["A"]["connectors"][0]["status"] == "Available" and known["A"]["boot"]["vendor"] == "ACME"
        assert known["A"]["last_seen"] == "2026-01-01T12:00:00Z" and known["B"]["state"] == {"connected": False}
        await store.chargers_save([], ["B"])
        assert [r["charger_id"] for r in await store.known_chargers()] == ["A"]
        # bounded: beyond `keep`, the ones seen longest ago are forgotten
        await store.chargers_save([row(f"C{i}", f"2026-02-01T10:00:{i:02d}Z") for i in range(5)], keep=3)
        assert [r["charger_id"] for r in await store.known_chargers()] == ["C2", "C3", "C4"]


async def test_a_store_from_before_known_chargers_upgrades(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / SqliteStore.FILE_NAME, isolation_level=None)  # a store of schema 4
    try:
        for n, script in enumerate(_MIGRATIONS[:4], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={n}; COMMIT;")
        db.execute("INSERT INTO chargers (charger_id, protocol, transport, last_seen) "
                   "VALUES ('OLD', 'ocpp2.0.1', 'soap', '2025-01-01T00:00:00Z')")
    finally:
        db.close()
    async with SqliteStore(tmp_path) as store:
        (old,) = await store.known_chargers()
        assert (old["charger_id"], old["protocol"], old["transport"], old["boot"], old["connectors"]) == (
            "OLD", "ocpp2.0.1", "soap", None, None)
