"""A SOAP 1.5 charger through a CSMS outage: the gateway answers it, keeps what the CSMS must get,
and replays it in order, converted to OCPP 1.6J and with the CSMS's transaction id, when the CSMS
returns. The gateway runs as its own process; the CSMS is built on the `ocpp` package. Also: the
charger's endpoint learned from wsa:From survives a gateway restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from ocpp import v16

from tests.harness import GatewayProcess, free_port
from tests.offline.peers import CSMS_INTERVAL, CountingCsms, until
from tests.soap.peers import OfficialChargePoint, OfficialCharger
from tests.soap.test_soap_relay import NOW

pytestmark = pytest.mark.timeout(80)


def soap_config(**extra: Any) -> dict[str, Any]:
    return {"soap": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "path": "/ocpp-s",
                     "trusted_endpoint_networks": ["127.0.0.0/8"]}, **extra}  # test chargers on loopback


def soap_url(gw: GatewayProcess) -> str:
    return f"http://{gw.config['soap']['listen']}/ocpp-s"


def values15(v: str) -> list[dict[str, Any]]:
    return [{"timestamp": NOW, "value": [{"_value_1": v, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]


async def test_soap_15_outage_is_answered_locally_and_replayed_in_order(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    upstream = {"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.5, "call_timeout": 5.0}
    gw = gateway_factory(soap_config(upstream=upstream))
    cid = "SOAPOFF"
    async with OfficialChargePoint("1.5", {"RemoteStopTransaction": {"status": "Accepted"}}) as cp:
        charger = OfficialCharger("1.5", soap_url(gw), cid, from_address=cp.url)
        try:
            await charger.call("Heartbeat")  # starts the session and its upstream link
            await until(lambda: cid in csms.cps, what="upstream link")
            boot = await charger.call("BootNotification", chargePointVendor="ACME", chargePointModel="OLD-1")
            assert boot["heartbeatInterval"] == CSMS_INTERVAL  # the CSMS's answer, in 1.5 terms
            assert (await charger.call("Authorize", idTag="TAG1"))["status"] == "Accepted"
            await csms.stop()
            # a message sent before the gateway sees the link go would be relayed live and lost with it
            await until(lambda: not gw_online(gw, cid), what="the gateway sees the outage")
            # -- the outage ------------------------------------------------------------------------
            start = await charger.call("StartTransaction", connectorId=1, idTag="TAG1", timestamp=NOW, meterStart=0)
            local_id = start["transactionId"]
            assert 2_000_000_000 <= local_id <= 2_147_483_646  # a gateway id that fits the SOAP int
            for i in range(1, 4):
                await charger.call("MeterValues", connectorId=1, transactionId=local_id, values=values15(str(100 * i)))
            before = len(csms.of(cid))
            await csms.start()
            await until(lambda: len(csms.of(cid, "MeterValues")) == 3, what="replay")
            replayed = [r for r in csms.of(cid)[before:] if r.action != "Heartbeat"]
            assert [r.action for r in replayed] == ["StartTransaction", *["MeterValues"] * 3]
            (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
            assert all(r.payload["transaction_id"] == csms_id for r in replayed[1:])
            assert [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in replayed[1:]] == [
                "100", "200", "300"]
            # -- back online: the CSMS's id is rewritten to the charger's, both ways ---------------
            await until(lambda: gw_online(gw, cid), what="upstream online")
            answer = await csms.cps[cid].call(v16.call.RemoteStopTransaction(transaction_id=csms_id))
            assert answer.status == "Accepted"
            assert cp.received[-1].op == "RemoteStopTransaction"
            assert cp.received[-1].payload["transactionId"] == local_id
            await charger.call("StopTransaction", transactionId=local_id, timestamp=NOW, meterStop=300,
                               transactionData=[{"values": values15("300")}])
            await until(lambda: len(csms.of(cid, "StopTransaction")) == 1, what="stop")
            stop = csms.of(cid, "StopTransaction")[0].payload
            assert stop["transaction_id"] == csms_id
            assert stop["transaction_data"][0]["sampled_value"][0]["unit"] == "Wh"
        finally:
            await csms.stop()


def gw_online(gw: GatewayProcess, cid: str) -> bool:
    try:
        status, body = gw.api("GET", f"/api/v1/chargers/{cid}", timeout=2)
    except OSError:
        return False
    return status == 200 and body["upstream"]["state"] == "online"


async def test_the_chargers_endpoint_survives_a_restart(gateway_factory: Callable[..., GatewayProcess]) -> None:
    async with OfficialChargePoint("1.6", {"Reset": {"status": "Accepted"}}) as cp:
        gw = gateway_factory(soap_config())
        charger = OfficialCharger("1.6", soap_url(gw), "REMEMBER1", from_address=cp.url)
        await charger.call("Heartbeat")
        saved = json.loads((Path(gw.config["data_dir"]) / "soap-endpoints.json").read_text())
        assert saved == {"REMEMBER1": cp.url}
        gw.stop()
        gw.start()
        # after the restart the charger's next request carries no wsa:From: the saved one is used
        quiet = OfficialCharger("1.6", soap_url(gw), "REMEMBER1")
        await quiet.call("Heartbeat")

        status, body = await asyncio.to_thread(gw.api, "POST", "/api/v1/chargers/REMEMBER1/calls/Reset",
                                               {"type": "Soft"})
        assert (status, body) == (200, {"status": "Accepted"})
        assert [r.op for r in cp.received] == ["Reset"]
