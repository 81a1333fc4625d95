"""A full disk is an answer, not a crash: `data_dir` on a small tmpfs that the test fills while a
1.6 charger runs a transaction with the CSMS away. Messages the gateway must keep get CALLERROR
InternalError (the charger's own retry applies), the connection stays up, one ERROR line for the
episode, /readyz 503 naming the store, the metric says so; room again and it serves by itself;
every message it acknowledged reaches the CSMS."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest
from ocpp import v16
from ocpp.exceptions import InternalError

from tests.harness import GatewayProcess
from tests.offline.peers import Connected, meter_value, now, until
from tests.uplink.netns import Tmpfs
from tests.uplink.peers import LoopbackCsms

pytestmark = pytest.mark.timeout(120)


def readyz(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{gw.config['api']['listen']}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(gw: GatewayProcess, name: str) -> float:
    status, text = gw.api("GET", "/metrics", timeout=5)
    assert status == 200, text
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_full_disk_gives_internal_error_and_readyz_503_and_loses_nothing(
    small_disk: Tmpfs, gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = LoopbackCsms()  # away until the end
    gw = gateway_factory({"data_dir": str(small_disk.path / "data"),
                          "upstream": {"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.5}})
    cid = "DISK1"
    accepted: list[str] = []
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await cp.call(v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="M1"))
            local = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                              timestamp=now()))).transaction_id
            for v in range(1, 4):
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local,
                                                   meter_value=meter_value(str(v))))
                accepted.append(str(v))
            assert readyz(gw)[0] == 200
            small_disk.fill()
            refused: list[str] = []
            for v in range(4, 400):  # bounded: the disk is full long before
                try:
                    await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local,
                                                       meter_value=meter_value(str(v)) * 4), suppress=False)
                    accepted.append(str(v))
                except InternalError as exc:
                    refused.append(str(v))
                    assert "store" in exc.description and ("full" in exc.description or "write" in exc.description)
                    if len(refused) >= 5:
                        break
            assert len(refused) >= 5, "the disk never filled"
            assert (await cp.call(v16.call.Heartbeat())).current_time  # the same connection still serves
            status, body = readyz(gw)
            assert status == 503 and body["checks"]["store"] is False
            assert "gateway.sqlite3" in body["reasons"]["store"], body
            assert metric(gw, "ocppgw_store_writable") == 0
            assert metric(gw, "ocppgw_store_write_failures_total") >= 5
            assert gw.logs().count("the store cannot write") == 1, "one ERROR line per episode"
            assert "Traceback" not in gw.logs()
            small_disk.make_room()
            await until(lambda: readyz(gw)[0] == 200, 15, "ready again once there is room")
            for again in refused:  # the charger's retry
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local,
                                                   meter_value=meter_value(again) * 4), suppress=False)
                accepted.append(again)
            await cp.call(v16.call.StopTransaction(transaction_id=local, meter_stop=9, timestamp=now()))
            await csms.start()
            await until(lambda: len(csms.of(cid, "StopTransaction")) == 1, 30, "the stop at the CSMS")
        got = [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in csms.of(cid, "MeterValues")]
        assert got == accepted  # everything acknowledged, in order, once
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        assert {r.payload["transaction_id"] for r in csms.of(cid, "MeterValues")} == {csms_id}
    finally:
        await csms.stop()
