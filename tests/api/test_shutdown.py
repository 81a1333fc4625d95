"""SIGTERM: the gateway process closes its chargers with 1001 (going away), closes the store
cleanly (WAL checkpointed and removed), exits 0, and starts again where it left off."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.api.helpers import charger
from tests.harness import GatewayProcess


async def _wait_exit(gw: GatewayProcess, timeout: float = 15.0) -> int:
    assert gw.proc is not None
    deadline = time.monotonic() + timeout
    while gw.proc.poll() is None:
        assert time.monotonic() < deadline, f"gateway did not stop within {timeout} s:\n{gw.logs()[-3000:]}"
        await asyncio.sleep(0.05)
    return gw.proc.returncode


@pytest.mark.timeout(60)
async def test_sigterm_closes_chargers_with_1001_and_the_store_cleanly(
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory()
    data = Path(gw.config["data_dir"])
    async with charger(gw.url("TERM-1"), "TERM-1") as cp1, charger(gw.url("TERM-2"), "TERM-2", "2.0.1") as cp2:
        await cp1.boot()
        await cp2.boot()
        first = await cp1.start_tx(1)
        assert (data / "gateway.sqlite3-wal").exists()  # the store is open in WAL mode
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        for cp in (cp1, cp2):
            await asyncio.wait_for(cp.ws.wait_closed(), 10)
            assert cp.ws.close_code == 1001, cp.ws.close_code
        assert await _wait_exit(gw) == 0
    logs = gw.logs()
    assert "stopping" in logs and "stopped" in logs
    assert "Traceback" not in logs
    # closed cleanly: the last connection checkpointed the WAL and removed it
    assert not (data / "gateway.sqlite3-wal").exists()
    # and the next run continues from what was stored
    gw.start()
    async with charger(gw.url("TERM-1"), "TERM-1") as cp1:
        await cp1.boot()
        again = await cp1.start_tx(1)
        assert again.transaction_id > first.transaction_id
    gw.proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(gw) == 0


@pytest.mark.timeout(60)
async def test_sigterm_with_a_call_in_flight(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """An operator call waiting on a charger does not hold the shutdown up."""
    import aiohttp

    gw = gateway_factory()
    api = f"http://{gw.config['api']['listen']}"
    async with charger(gw.url("TERM-3"), "TERM-3") as cp:
        await cp.boot()
        cp.slow = 30.0  # never answers in time
        async with aiohttp.ClientSession() as http:
            pending = asyncio.create_task(http.post(f"{api}/api/v1/chargers/TERM-3/calls/GetConfiguration", json={}))
            await asyncio.sleep(0.5)
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            assert await _wait_exit(gw) == 0
            try:
                r = await asyncio.wait_for(pending, 10)
            except aiohttp.ClientError:
                pass  # the API dropped the request after its shutdown grace period
            else:
                assert r.status == 404, r.status  # or answered it: the charger's session is gone
