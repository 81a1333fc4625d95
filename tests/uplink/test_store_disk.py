"""The SQLite store on a small tmpfs that the test fills: a write that cannot be kept raises the
core's StoreWriteFailed (never a bare sqlite3 error), once per episode an ERROR line, health says
why; room again and it writes by itself; nothing committed before is lost. And the 1.6 id
mappings kept for the grace period, bounded in count."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.sqlite_store import SqliteStore
from gateway.errors import StoreWriteFailed
from tests.uplink.netns import Tmpfs

pytestmark = pytest.mark.timeout(60)


def _row(n: int, kind: str = "meter") -> dict[str, object]:
    return {"charger_id": "CP1", "protocol": "ocpp1.6", "action": "MeterValues",
            "payload": '{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
                       '"sampledValue":[{"value":"%d","comment":"%s"}]}]}' % (n, "x" * 2000),
            "kind": kind, "connector": None, "received_at": "2026-01-01T00:00:00+00:00"}


async def test_a_full_disk_is_an_error_per_write_one_log_line_and_recovers(small_disk: Tmpfs,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store")
    async with SqliteStore(small_disk.path / "data") as store:
        kept = []
        for n in range(5):
            seq, _ = await store.outbox_append(_row(n), max_per_charger=10_000, max_total=10_000)
            kept.append(seq)
        small_disk.fill()
        refused = 0
        for n in range(5, 400):  # bounded: the disk is full long before
            try:
                seq, _ = await store.outbox_append(_row(n), max_per_charger=10_000, max_total=10_000)
                kept.append(seq)
            except StoreWriteFailed as exc:
                refused += 1
                assert "cannot write" in str(exc) and "gateway.sqlite3" in str(exc)
                if refused >= 20:
                    break
        assert refused >= 20, "the store never reported a full disk"
        health = store.health()
        assert isinstance(health, str) and "cannot write" in health and "gateway.sqlite3" in health
        assert not store.writable
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "gateway.store"]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert store.write_failures >= 20
        small_disk.make_room()
        for _ in range(100):  # the probe notices the room (PROBE_PERIOD 1 s)
            if store.writable:
                break
            await asyncio.sleep(0.1)
        assert store.health() is True
        seq, _ = await store.outbox_append(_row(999), max_per_charger=10_000, max_total=10_000)
        kept.append(seq)
        rows = await store.outbox_head("CP1", 1000)
        assert [r.seq for r in rows] == kept  # every acknowledged append is there, in order
    async with SqliteStore(small_disk.path / "data") as store:  # and after a reopen
        assert [r.seq for r in await store.outbox_head("CP1", 1000)] == kept


async def test_finished_id_mappings_stay_for_the_grace_period_bounded(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path, id_map_max=10) as store:
        ids = []
        for n in range(15):
            _, local = await store.outbox_append(
                {**_row(n, "start"), "action": "StartTransaction"}, max_per_charger=100, max_total=100,
                id_range=(2_000_000_000, 2_000_000_100))
            assert local is not None
            ids.append(local)
        for n, local in enumerate(ids):
            await store.outbox_step("CP1", (n + 1, ("CP1", local, 1000 + n, "Accepted"), None), None)
        for local in ids:
            await store.tx_retire("CP1", local)
        mapping = dict(await store.tx_map("CP1"))
        assert len(mapping) == 10  # the 10 newest finished mappings
        assert all(mapping[local] == 1000 + n for n, local in enumerate(ids) if local in mapping)
        assert ids[-1] in mapping and ids[0] not in mapping
        assert await store.tx_retired("CP1") == set(mapping)
    async with SqliteStore(tmp_path, id_map_grace=0.0) as store:
        await store.tx_retire("CP1", ids[-1])  # grace 0: every finished mapping goes at the next retirement
        assert await store.tx_map("CP1") == []


async def test_status_history_keeps_every_status_row(tmp_path: Path) -> None:
    def status(n: int) -> dict[str, object]:
        return {**_row(n, "status"), "action": "StatusNotification", "connector": 1}

    async with SqliteStore(tmp_path / "a") as store:
        for n in range(3):
            await store.outbox_append(status(n), max_per_charger=100, max_total=100)
        assert len(await store.outbox_head("CP1", 100)) == 1  # default: the latest per connector
    async with SqliteStore(tmp_path / "b", status_history=True) as store:
        for n in range(3):
            await store.outbox_append(status(n), max_per_charger=100, max_total=100)
        assert len(await store.outbox_head("CP1", 100)) == 3


async def test_rows_know_their_protocol_and_the_backlog_starts_with_the_oldest(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path) as store:
        await store.outbox_append(_row(1), max_per_charger=100, max_total=100)
        await store.outbox_append({**_row(2), "protocol": "ocpp2.0.1", "action": "TransactionEvent"},
                                  max_per_charger=100, max_total=100)
        assert await store.outbox_protocols("CP1") == ["ocpp1.6", "ocpp2.0.1"]
        assert await store.chargers_with_backlog() == [("CP1", "ocpp1.6")]
        assert [r.protocol for r in await store.outbox_head("CP1", 10)] == ["ocpp1.6", "ocpp2.0.1"]
        seq = await store.outbox_dead_letter(_row(3), "no CSMS transaction id known for local id 2000000003")
        letters = await store.dead_letters()
        assert letters[0]["seq"] == seq and "no CSMS transaction id" in letters[0]["error"]
