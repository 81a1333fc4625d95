"""The SQLite store's schema, as the migrations that build it (adapters/sqlite_store.py applies
them in order on open and records how many ran in `PRAGMA user_version`). Append only: a released
migration is never edited, a change is a new one."""

from __future__ import annotations

import re

from adapters.variables_store import MIGRATION as VARIABLES_MIGRATION

MIGRATIONS: list[str] = [
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
    # 2: offline operation: the outbox, the boot to replay, 1.6 transaction-id map, authorization
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL,
        protocol TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        kind TEXT NOT NULL,
        connector INTEGER,
        local_tx INTEGER,
        received_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        sent_id TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        error TEXT
    );
    CREATE INDEX outbox_by_charger ON outbox (charger_id, state, seq);
    CREATE TABLE pending_boot (
        charger_id TEXT PRIMARY KEY,
        protocol TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE TABLE tx_map (
        charger_id TEXT NOT NULL,
        local_id INTEGER NOT NULL,
        csms_id INTEGER,
        auth_status TEXT,
        stopped INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (charger_id, local_id)
    );
    CREATE TABLE auth_cache (
        id_tag TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        expires_at TEXT
    );
    CREATE TABLE local_list (
        charger_id TEXT NOT NULL,
        id_tag TEXT NOT NULL,
        status TEXT NOT NULL,
        expires_at TEXT,
        PRIMARY KEY (charger_id, id_tag)
    );
    CREATE TABLE local_list_version (charger_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('offline_transaction_id', 0);
    """,
    # 3: the transaction log behind /api/v1/transactions
    """
    CREATE TABLE transactions (
        charger_id TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        evse INTEGER,
        connector INTEGER,
        started_at TEXT,
        ended_at TEXT,
        meter_start REAL,
        meter_stop REAL,
        energy_wh REAL,
        reason TEXT,
        offline INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (charger_id, transaction_id)
    );
    CREATE INDEX transactions_by_time ON transactions (started_at);
    """,
    # 4: replay cursor per charger (see the module docstring) and the token of replay message ids
    """
    CREATE TABLE replay_cursor (
        charger_id TEXT PRIMARY KEY,
        acked INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO counters (name, value) VALUES ('replay_id_token', abs(random()) % 281474976710656);
    """,
    # 5: known chargers keep what they last said (gateway/registry.py): boot info, connectors, state
    """
    ALTER TABLE chargers ADD COLUMN boot TEXT;
    ALTER TABLE chargers ADD COLUMN connectors TEXT;
    ALTER TABLE chargers ADD COLUMN state TEXT;
    """,
    # 6: the variables mirror (adapters/variables_store.py)
    VARIABLES_MIGRATION,
    # 7: the transaction log says when a charger's time was out of range and was clamped
    """
    ALTER TABLE transactions ADD COLUMN ts_clamped INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: finished 1.6 id mappings are kept for a grace period (late MeterValues, retried stops)
    """
    ALTER TABLE tx_map ADD COLUMN retired_at TEXT;
    CREATE INDEX tx_map_retired ON tx_map (retired_at) WHERE retired_at IS NOT NULL;
    """,
]


# -- what the start-up check (adapters/store_check.py) needs to know about the schema ------------


def schema_version() -> int:
    """The newest schema this version writes (`PRAGMA user_version` after the migrations)."""
    return len(MIGRATIONS)


def schema_tables(version: int) -> set[str]:
    """The tables a database of schema `version` has, as the migrations create them."""
    return {name for script in MIGRATIONS[:version] for name in re.findall(r"CREATE TABLE (\w+)", script)}
