"""SIGTERM: the gateway process closes its chargers with 1001 (going away), closes the store
cleanly (WAL checkpointed and removed), exits 0, and starts again where it left off."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.api.helpers import charger, csms_answer
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
            pending = asyncio.create_task(http.post(f"{api}/api/v1/chargers/TERM-3/calls/GetConfiguration", json={},
                                                    headers={"Authorization": f"Bearer {gw.api_token()}"}))
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


@pytest.mark.timeout(90)
async def test_sigterm_while_offline_loses_nothing(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """Transaction messages a charger was told were accepted while the CSMS was away survive a
    SIGTERM and reach the CSMS, in order, after the restart."""
    import json

    from ocpp.v16 import call as call16

    from tests.e2e.rawpeers import RawCsms

    csms = RawCsms(csms_answer, subprotocols=("ocpp1.6",))  # its port is chosen but nothing listens yet
    gw = gateway_factory({"upstream": {"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.5},
                          "auth": {"unknown_id_tags": "accept"}})
    async with charger(gw.url("TERM-4"), "TERM-4") as cp:
        await cp.boot()
        started = await cp.start_tx(1, id_tag="TAG-OFF", meter_start=100)
        await cp.meter(1, started.transaction_id, power_w=7000, energy_wh=600)
        await cp.call(call16.StopTransaction(transaction_id=started.transaction_id, meter_stop=900,
                                             timestamp="2030-01-01T01:00:00Z"))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(cp.ws.wait_closed(), 10)
        assert cp.ws.close_code == 1001
        assert await _wait_exit(gw) == 0
    async with csms:
        gw.start()
        async with charger(gw.url("TERM-4"), "TERM-4"):
            [conn] = await csms.wait_connections(1, timeout=10)
            seen: list[list] = []
            deadline = time.monotonic() + 20
            while not any(f[0] == 2 and f[2] == "StopTransaction" for f in seen):
                assert time.monotonic() < deadline, f"not replayed: {seen}"
                seen.append(json.loads(await asyncio.wait_for(conn.received.get(), deadline - time.monotonic())))
        calls = [(f[2], f[3]) for f in seen if f[0] == 2 and f[2] in ("StartTransaction", "MeterValues",
                                                                       "StopTransaction")]
        assert [a for a, _ in calls] == ["StartTransaction", "MeterValues", "StopTransaction"], calls
        assert calls[0][1]["idTag"] == "TAG-OFF" and calls[0][1]["meterStart"] == 100
        assert calls[1][1]["transactionId"] == 4242  # rewritten to the CSMS's id
        assert calls[2][1]["transactionId"] == 4242 and calls[2][1]["meterStop"] == 900
    gw.proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(gw) == 0
