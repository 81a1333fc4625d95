"""SOAP chargers through the gateway to a CSMS built on the `ocpp` package, and back.

A zeep client of the official CentralSystemService WSDL (1.5 and 1.6) sends every charger-initiated
operation; the CSMS (an `ocpp` v16 ChargePoint behind websockets) sees an OCPP 1.6J charger and
sends every Charge Point operation, which reaches a SOAP server built from the official
ChargePointService WSDL; its answers come back to the CSMS.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from gateway.app import running
from gateway.config import Settings
from tests.e2e.peers import CSMS_DT_DATA_16, CSMS_GOOD_TAG, CSMS_INTERVAL, CSMS_TX_ID, CsmsServer, RpcError
from tests.harness import free_port
from tests.soap.peers import OfficialChargePoint, OfficialCharger

pytestmark = pytest.mark.timeout(60)

NOW = "2030-01-02T03:04:05Z"


async def until(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}", "call_timeout": 5.0},
        "soap": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "path": "/ocpp-s",
                 "trusted_endpoint_networks": ["127.0.0.0/8"]},  # the test chargers listen on loopback
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "DEBUG"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    async with running(Settings(**base)) as gw:
        gw.soap_url = f"http://127.0.0.1:{gw.soap.port}/ocpp-s"
        yield gw


def meter_values(version: str) -> Any:
    if version == "1.6":
        return {"meterValue": [{"timestamp": NOW, "sampledValue": [
            {"value": "1500", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Sample.Periodic"},
            {"value": "16.1", "measurand": "Current.Import", "unit": "A", "phase": "L1"}]}]}
    return {"values": [{"timestamp": NOW, "value": [
        {"_value_1": "1500", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Sample.Periodic"},
        {"_value_1": "16.1", "measurand": "Current.Import", "unit": "Amp"}]}]}


# CSMS command (1.6J payload) -> what the charger answers (1.6 / 1.5 fields) -> what the CSMS must get
COMMANDS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}, {"status": "Accepted"}, {"status": "Accepted"},
     {"status": "Accepted"}),
    ("RemoteStopTransaction", {"transactionId": CSMS_TX_ID}, {"status": "Accepted"}, {"status": "Accepted"},
     {"status": "Accepted"}),
    ("Reset", {"type": "Soft"}, {"status": "Accepted"}, {"status": "Accepted"}, {"status": "Accepted"}),
    ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}, {"status": "Accepted"},
     {"status": "Accepted"}, {"status": "Accepted"}),
    ("GetConfiguration", {"key": ["HeartbeatInterval", "Foo"]},
     {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}], "unknownKey": ["Foo"]},
     {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}], "unknownKey": ["Foo"]},
     {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}], "unknownKey": ["Foo"]}),
    ("UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}, {"status": "Accepted"}, {"status": "Unlocked"}),
    ("CancelReservation", {"reservationId": 7}, {"status": "Rejected"}, {"status": "Rejected"}, {"status": "Rejected"}),
    ("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}, {"status": "Scheduled"},
     {"status": "Scheduled"}, {"status": "Scheduled"}),
    ("ClearCache", {}, {"status": "Accepted"}, {"status": "Accepted"}, {"status": "Accepted"}),
    ("DataTransfer", {"vendorId": "ACME", "messageId": "m", "data": "ping"}, {"status": "Accepted", "data": "cp-pong"},
     {"status": "Accepted", "data": "cp-pong"}, {"status": "Accepted", "data": "cp-pong"}),
    ("GetDiagnostics", {"location": "ftp://diag.example/up", "retries": 2, "startTime": NOW},
     {"fileName": "diag.zip"}, {"fileName": "diag.zip"}, {"fileName": "diag.zip"}),
    ("GetLocalListVersion", {}, {"listVersion": 3}, {"listVersion": 3}, {"listVersion": 3}),
    ("ReserveNow", {"connectorId": 1, "expiryDate": NOW, "idTag": "TAG1", "reservationId": 8},
     {"status": "Occupied"}, {"status": "Occupied"}, {"status": "Occupied"}),
    ("SendLocalList", {"listVersion": 4, "updateType": "Full",
                       "localAuthorizationList": [{"idTag": "TAG1", "idTagInfo": {"status": "Accepted"}}]},
     {"status": "Accepted"}, {"status": "HashError"}, {"status": "Failed"}),
    ("UpdateFirmware", {"location": "http://fw.example/f.bin", "retrieveDate": NOW}, {}, {}, {}),
]
ONLY_16 = [
    ("TriggerMessage", {"requestedMessage": "Heartbeat", "connectorId": 1}, {"status": "Accepted"}),
    ("ClearChargingProfile", {"id": 3}, {"status": "Unknown"}),
    ("GetCompositeSchedule", {"connectorId": 1, "duration": 60}, {"status": "Rejected"}),
    ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}}},
     {"status": "Accepted"}),
]


@pytest.mark.parametrize("version", ["1.6", "1.5"])
async def test_soap_charger_full_session_through_the_relay(tmp_path: Path, version: str) -> None:
    cid = f"SOAP{version.replace('.', '')}"
    answers = {op: (a16 if version == "1.6" else a15) for op, _, a16, a15, _ in COMMANDS}
    answers.update({op: a for op, _, a in ONLY_16})
    async with CsmsServer(subprotocols=("ocpp1.6",)) as csms, OfficialChargePoint(version, answers) as cp, \
            gateway(tmp_path, upstream={"url": csms.url}) as gw:
        charger = OfficialCharger(version, gw.soap_url, cid, from_address=cp.url)

        # the first request starts the session and its upstream link (the gateway may answer this
        # one itself while the link is being opened)
        await charger.call("Heartbeat")
        session = await csms.wait_session(cid)
        assert session.subprotocol == "ocpp1.6"  # upstream it is an OCPP 1.6J charger
        await until(lambda: gw.hub.sessions[cid].upstream_state.value == "online")
        boot = await charger.call("BootNotification", chargePointVendor="ACME", chargePointModel="S-1",
                                  firmwareVersion="1.0")
        assert boot["status"] == "Accepted"
        assert boot["interval" if version == "1.6" else "heartbeatInterval"] == CSMS_INTERVAL

        assert (await charger.call("Heartbeat")).year == 2030  # zeep unwraps a one-field response
        await charger.call("StatusNotification", connectorId=1, status="Occupied" if version == "1.5" else "Charging",
                           errorCode="Mode3Error" if version == "1.5" else "EVCommunicationError", timestamp=NOW)
        auth = await charger.call("Authorize", idTag=CSMS_GOOD_TAG)
        assert auth["status"] == "Accepted"  # (idTagInfo, unwrapped)
        start = await charger.call("StartTransaction", connectorId=1, idTag=CSMS_GOOD_TAG, timestamp=NOW,
                                   meterStart=1000)
        assert start["transactionId"] == CSMS_TX_ID
        await charger.call("MeterValues", connectorId=1, transactionId=CSMS_TX_ID, **meter_values(version))
        stop: dict[str, Any] = {"transactionId": CSMS_TX_ID, "idTag": CSMS_GOOD_TAG, "timestamp": NOW,
                                "meterStop": 2500}
        if version == "1.6":
            stop |= {"reason": "Local", "transactionData": meter_values("1.6")["meterValue"]}
        else:
            stop |= {"transactionData": [{"values": meter_values("1.5")["values"]}]}
        assert (await charger.call("StopTransaction", **stop))["status"] == "Accepted"
        dt = await charger.call("DataTransfer", vendorId="ACME", messageId="m1", data="ping")
        assert dt == {"status": "Accepted", "data": CSMS_DT_DATA_16}
        await charger.call("FirmwareStatusNotification", status="Installed")
        await charger.call("DiagnosticsStatusNotification", status="Uploaded")

        # what the CSMS received: valid OCPP 1.6J (the `ocpp` package validated each request)
        got = {action: payload for action, payload in session.log.requests_in() if action != "Heartbeat"}
        assert got["BootNotification"] == {"chargePointVendor": "ACME", "chargePointModel": "S-1",
                                           "firmwareVersion": "1.0"}
        assert got["StatusNotification"]["status"] == "Charging"
        assert got["StatusNotification"]["errorCode"] == "EVCommunicationError"
        assert got["StartTransaction"] == {"connectorId": 1, "idTag": CSMS_GOOD_TAG, "timestamp": NOW,
                                           "meterStart": 1000}
        samples = got["MeterValues"]["meterValue"][0]["sampledValue"]
        assert samples[0] == {"value": "1500", "context": "Sample.Periodic",
                              "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        assert samples[1]["unit"] == "A" and samples[1]["value"] == "16.1"
        assert got["StopTransaction"]["transactionData"][0]["sampledValue"][0]["value"] == "1500"
        assert ("reason" in got["StopTransaction"]) == (version == "1.6")
        assert set(got) == {"BootNotification", "StatusNotification", "Authorize", "StartTransaction", "MeterValues",
                            "StopTransaction", "DataTransfer", "FirmwareStatusNotification",
                            "DiagnosticsStatusNotification"}

        # every Charge Point operation, sent by the CSMS, reaches the SOAP charger and its answer comes back
        for op, payload, a16, _, expected15 in COMMANDS:
            expected = a16 if version == "1.6" else expected15  # 1.6 answers pass unchanged
            result = await session.cp.raw_call(op, payload)
            assert result == expected, (op, cp.received[-1])
            assert cp.received[-1].op == op
            assert cp.received[-1].identity == cid
        assert cp.received[0].headers["ReplyTo"].endswith("/anonymous")
        assert cp.received[0].headers["To"] == cp.url
        by_op = {r.op: r.payload for r in cp.received}
        assert by_op["RemoteStartTransaction"] == {"idTag": "TAG1", "connectorId": 1} | (
            {"chargingProfile": None} if version == "1.6" else {})
        if version == "1.5":
            assert by_op["SendLocalList"]["localAuthorisationList"][0]["idTag"] == "TAG1"
        for op, payload, expected in ONLY_16:
            if version == "1.6":
                assert await session.cp.raw_call(op, payload) == expected, op
                assert cp.received[-1].op == op
            else:
                with pytest.raises(RpcError) as info:
                    await session.cp.raw_call(op, payload)
                assert info.value.code == "NotSupported", op

        # a SOAP Fault from the charger is a CALLERROR for the CSMS
        cp.faults["Reset"] = ("Receiver", "NotSupported")
        with pytest.raises(RpcError) as info:
            await session.cp.raw_call("Reset", {"type": "Hard"})
        assert info.value.code == "NotSupported"
        # an action OCPP-S does not have at all
        with pytest.raises(RpcError) as info:
            await session.cp.raw_call("CertificateSigned", {"certificateChain": "x"})
        assert info.value.code == "NotSupported"
