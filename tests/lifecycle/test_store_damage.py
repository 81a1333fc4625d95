"""A damaged store is a clear stop: each kind of damage (gone, emptied, header overwritten, pages
scribbled, truncated, written by a newer version) ends the start with one line naming the file and
what to do, exit 5, before any port opens; `ocpp-gateway store check|recover` find it and move it
aside, saying what is lost, and the gateway starts again on a fresh store."""

from __future__ import annotations

import random
import sqlite3
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.api.helpers import charger
from tests.harness import GatewayProcess, free_port
from tests.lifecycle.conftest import run_once

WHAT_TO_DO = ("the gateway will not start on it: run `ocpp-gateway store recover` (with the same -c) to move it "
              "aside and start a fresh one, or restore data_dir from a backup")


async def _store_with_backlog(gw: GatewayProcess) -> int:
    """Run the gateway with its CSMS away: a 1.6 charger's start and meter values wait in the
    outbox. Returns the (offline) transaction id the gateway issued; the gateway is stopped cleanly."""
    gw.start()
    async with charger(gw.url("CP-A"), "CP-A") as cp:
        await cp.boot()
        started = await cp.start_tx(1)
        for n in range(3):
            await cp.meter(1, started.transaction_id, 7000.0, 1000.0 + n)
    assert gw.stop() == 0
    return int(started.transaction_id)


def _config(tmp: Path) -> dict[str, object]:
    return {"upstream": {"url": f"ws://127.0.0.1:{free_port()}/csms", "reconnect_min": 30.0}}


def _root_page(db_file: Path, table: str) -> int:
    db = sqlite3.connect(db_file)
    try:
        return int(db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
    finally:
        db.close()


def _page_size(db_file: Path) -> int:
    head = db_file.read_bytes()[:100]
    return int.from_bytes(head[16:18], "big")


def _scribble(db_file: Path, table: str) -> None:
    """Random bytes over the whole root page of `table` (a b-tree page in use)."""
    page, size = _root_page(db_file, table), _page_size(db_file)
    with open(db_file, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(random.Random(page).randbytes(size))


def _damage(kind: str, data: Path) -> str:
    """Damage the store the way `kind` says; returns what the line must say about it."""
    db_file = data / "gateway.sqlite3"
    if kind == "missing":
        db_file.unlink()
        return "is missing, but data_dir shows an earlier run (install-id)"
    if kind == "zero-length":
        db_file.write_bytes(b"")
        return "is empty (0 bytes), but data_dir shows an earlier run (install-id)"
    if kind == "overwritten header":
        with open(db_file, "r+b") as f:
            f.write(b"\x00" * 100)
        return "is not an SQLite database (its header is overwritten or cut off)"
    if kind == "scribbled pages":
        _scribble(db_file, "outbox")
        _scribble(db_file, "tx_map")
        return "fails its integrity check ("
    if kind == "truncated":
        size = db_file.stat().st_size
        page = _page_size(db_file)
        with open(db_file, "r+b") as f:
            f.truncate(size // page // 2 * page)
        return "is truncated ("
    if kind == "newer schema":
        db = sqlite3.connect(db_file)
        db.execute("PRAGMA user_version = 99")
        db.close()
        return "was written by a newer ocpp-gateway (schema 99; this one knows up to "
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "zero-length", "overwritten header", "scribbled pages", "truncated",
                                  "newer schema"])
async def test_each_kind_of_damage_is_one_line_and_exit_5(kind: str, tmp_path: Path,
                                                           gateways: Callable[..., GatewayProcess]) -> None:
    gw = gateways(_config(tmp_path))
    await _store_with_backlog(gw)
    data = Path(str(gw.config["data_dir"]))
    said = _damage(kind, data)

    result = run_once(gw.config_path)

    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 5, result
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cannot start: the store {data / 'gateway.sqlite3'} {said}"), lines[0]
    if kind == "newer schema":
        assert lines[0].endswith("the gateway will not start on it: run the newer ocpp-gateway again, or "
                                 + WHAT_TO_DO.removeprefix("the gateway will not start on it: "))
    else:
        assert lines[0].endswith(WHAT_TO_DO), lines[0]
    with pytest.raises(OSError):  # no port was opened
        urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=1)


async def test_a_first_start_is_not_damage(tmp_path: Path, gateways: Callable[..., GatewayProcess]) -> None:
    """No store and nothing that says there was one: a first start, which creates the store and
    the install id; an empty file left by a first start that stopped at once is no damage either."""
    gw = gateways()
    data = Path(str(gw.config["data_dir"]))
    data.mkdir(parents=True)
    (data / "gateway.sqlite3").write_bytes(b"")

    gw.start()

    assert (data / "install-id").read_text().strip().isalnum()
    assert gw.stop() == 0


async def test_store_check_and_recover(tmp_path: Path, gateways: Callable[..., GatewayProcess]) -> None:
    gw = gateways(_config(tmp_path))
    issued = await _store_with_backlog(gw)
    data = Path(str(gw.config["data_dir"]))
    assert run_once(gw.config_path, "check", command="store").returncode == 0
    _scribble(data / "gateway.sqlite3", "chargers")  # damaged, but the outbox can still be read

    check = run_once(gw.config_path, "check", command="store")

    assert check.returncode == 5
    assert check.stderr.startswith(f"the store {data / 'gateway.sqlite3'} fails its integrity check (")
    recover = run_once(gw.config_path, "recover", command="store")

    out = recover.stdout
    assert recover.returncode == 0, recover
    moved = sorted(p.name for p in data.iterdir() if ".damaged-" in p.name)
    assert len(moved) == 1 and moved[0].startswith("gateway.sqlite3.damaged-"), moved
    assert f"moved it to {data / moved[0]}" in out
    assert "messages waiting for the CSMS: 4 (CP-A 4)" in out  # the start and three meter values
    assert "boots waiting for the CSMS: 1" in out
    assert "carried over: the transaction id counters" in out
    assert run_once(gw.config_path, "check", command="store").returncode == 0
    # the gateway starts on the fresh store and does not issue an id again
    gw.start()
    async with charger(gw.url("CP-A"), "CP-A") as cp:
        await cp.boot()
        again = await cp.start_tx(1)
    assert int(again.transaction_id) > issued
    assert gw.stop() == 0


async def test_recover_refuses_while_the_gateway_runs(tmp_path: Path, gateways: Callable[..., GatewayProcess]) -> None:
    gw = gateways().start()
    assert gw.proc is not None

    result = run_once(gw.config_path, "recover", "--force", command="store")

    assert result.returncode == 3
    assert result.stderr.splitlines() == [f"cannot recover: another gateway (pid {gw.proc.pid}) is running with "
                                          f"data_dir {gw.config['data_dir']}; stop it first, or give this one its "
                                          "own data_dir"]
    assert not [p for p in Path(str(gw.config["data_dir"])).iterdir() if ".damaged-" in p.name]
    # a check is safe while it runs (read-only; the store's -wal/-shm are the gateway's and stay)
    files = sorted(p.name for p in Path(str(gw.config["data_dir"])).iterdir())
    check = run_once(gw.config_path, "check", command="store")
    assert check.returncode == 0 and "is sound (integrity_check ok" in check.stdout, check
    assert sorted(p.name for p in Path(str(gw.config["data_dir"])).iterdir()) == files
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=2) as r:
        assert r.status == 200


@pytest.mark.parametrize("kind", ["missing", "zero-length", "overwritten header", "truncated"])
async def test_recover_from_damage_nothing_can_be_read_from(kind: str, tmp_path: Path,
                                                           gateways: Callable[..., GatewayProcess]) -> None:
    """Whatever the damage, recover leaves a store the gateway starts on, and says what it could
    not read instead of guessing."""
    gw = gateways(_config(tmp_path))
    await _store_with_backlog(gw)
    data = Path(str(gw.config["data_dir"]))
    _damage(kind, data)

    recover = run_once(gw.config_path, "recover", command="store")

    assert recover.returncode == 0, recover
    moved = [p for p in data.iterdir() if ".damaged-" in p.name]
    assert len(moved) == (0 if kind == "missing" else 1)
    if kind in ("missing", "zero-length"):
        assert "  nothing (the file is missing or empty)" in recover.stdout
    else:
        assert "cannot be read" in recover.stdout
    assert "the transaction id counters could not be read" in recover.stdout
    assert run_once(gw.config_path, "check", command="store").returncode == 0
    gw.start()
    assert gw.stop() == 0


def test_a_checkpoint_cut_short_is_not_damage(tmp_path: Path) -> None:
    """A crash in the middle of a WAL checkpoint can leave page 1 (with the new page count) written
    and the pages after it not yet: the file is shorter than its header says, but the WAL still has
    every page and SQLite completes the checkpoint on open. That is no damage; the same file without
    its WAL is (it is truncated)."""
    import subprocess
    import sys

    from adapters.store_check import check

    data = tmp_path / "data"
    data.mkdir()
    db_file = data / "gateway.sqlite3"
    script = (f"import sqlite3, os\ndb = sqlite3.connect({str(db_file)!r}, isolation_level=None)\n"
              "db.execute('PRAGMA journal_mode=WAL'); db.execute('PRAGMA wal_autocheckpoint=0')\n"
              "db.execute('CREATE TABLE t (x TEXT)')\n"
              "db.execute('BEGIN'); [db.execute('INSERT INTO t VALUES (?)', ('x' * 500,)) for _ in range(2000)]\n"
              "db.execute('COMMIT'); os._exit(0)\n")  # ends without a checkpoint: every page is in the WAL
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    wal = db_file.with_name("gateway.sqlite3-wal").read_bytes()
    page_size = int.from_bytes(wal[8:12], "big")
    page1 = None
    for offset in range(32, len(wal), 24 + page_size):  # the last frame of page 1 is the newest
        if int.from_bytes(wal[offset:offset + 4], "big") == 1:
            page1 = wal[offset + 24:offset + 24 + page_size]
    assert page1 is not None
    header_pages = int.from_bytes(page1[28:32], "big")
    with open(db_file, "r+b") as f:  # the checkpoint wrote page 1, then the process died
        f.write(page1)
    assert header_pages * page_size > db_file.stat().st_size

    alone = tmp_path / "alone"  # the same file without its WAL: truncated
    alone.mkdir()
    (alone / "gateway.sqlite3").write_bytes(db_file.read_bytes())

    assert check(data).problem is None
    assert (check(alone).problem or "").startswith("is truncated (")
    db = sqlite3.connect(db_file)  # and SQLite reads every row (completing the checkpoint)
    assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2000
    db.close()
