"""`ocpp-gateway simulate` against the real gateway, relayed to a CSMS built on the `ocpp` package.

The simulator runs as a child process of the command line (as an operator starts it); the test plays
the CSMS: it sends the chargers commands and charging profiles through the gateway and checks at the
CSMS what arrived, message for message, against the simulator's own summary.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.e2e.peers import CSMS_GOOD_TAG, CSMS_INTERVAL, CSMS_TX_ID, CsmsServer, CsmsSession
from tests.harness import REPO, GatewayProcess

pytestmark = pytest.mark.timeout(150)

# The run ends by Ctrl-C (SIGINT) once the commands below are through (~9 s with this seed: every
# charger's first idle spell before a transaction is under 5 s); the duration is only a bound.
DURATION = 60
SEED = 72


async def _until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _calls(csms: CsmsServer, charger: str, action: str) -> list[Any]:
    """Payloads of every CALL of `action` the CSMS got for `charger`, over all its connections."""
    return [f[3] for s in csms.sessions.get(charger, []) for f in s.log.calls_in(action)]


def _latest(csms: CsmsServer, charger: str) -> CsmsSession:
    return csms.sessions[charger][-1]


def _measurands(meter_values: list[dict[str, Any]]) -> set[str]:
    return {s.get("measurand", "Energy.Active.Import.Register") for mv in meter_values for s in mv["sampledValue"]}


async def test_simulated_chargers_through_the_gateway_to_a_csms(tmp_path: Path) -> None:
    async with CsmsServer() as csms:
        gw = GatewayProcess(tmp_path, {"upstream": {"url": csms.url}, "logging": {"level": "INFO"}}).start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "simulate", "--url", f"ws://127.0.0.1:{gw.ws_port}/ocpp",
                "--chargers", "4", "--versions", "1.6,2.0.1", "--duration", str(DURATION), "--rate", "2",
                "--session", "40", "--seed", str(SEED), "--id-tag", CSMS_GOOD_TAG, "--json",
                cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out_task = asyncio.ensure_future(proc.communicate())
            try:
                await _drive(csms)
                proc.send_signal(signal.SIGINT)  # as an operator's Ctrl-C: the chargers finish what is under way
                out, err = await asyncio.wait_for(out_task, 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        finally:
            gw.stop()
        assert proc.returncode == 0, err.decode()
        summary = json.loads(out)
        _check_summary(csms, summary, err.decode())


async def _drive(csms: CsmsServer) -> None:
    # every charger boots and starts a transaction, relayed to the CSMS under its own id
    for cid in ("SIM0001", "SIM0002", "SIM0003", "SIM0004"):
        await _until(f"{cid} to boot at the CSMS", lambda c=cid: _calls(csms, c, "BootNotification"))  # type: ignore[misc]
    await _until("SIM0001 (1.6) to start a transaction", lambda: _calls(csms, "SIM0001", "StartTransaction"))
    started = await _until("SIM0002 (2.0.1) to start a transaction", lambda: [
        p for p in _calls(csms, "SIM0002", "TransactionEvent") if p["eventType"] == "Started"])
    assert _latest(csms, "SIM0001").subprotocol == "ocpp1.6"
    assert _latest(csms, "SIM0002").subprotocol == "ocpp2.0.1"

    # -- 1.6: configuration, a trigger, a charging profile the power follows, a remote stop -----------
    cp16 = _latest(csms, "SIM0001").cp
    conf = await cp16.raw_call("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
    assert [k["key"] for k in conf["configurationKey"]] == ["HeartbeatInterval"] and conf["unknownKey"] == ["NoSuchKey"]
    assert (await cp16.raw_call("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1}))["status"] \
        == "Accepted"
    await _until("the triggered MeterValues", lambda: [
        p for p in _calls(csms, "SIM0001", "MeterValues") if p["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"])
    profile16 = {"chargingProfileId": 5, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
                 "chargingProfileKind": "Relative", "transactionId": CSMS_TX_ID,
                 "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}
    assert (await cp16.raw_call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile16}))["status"] \
        == "Accepted"
    await _until("1.6 meter values at the profile's 10 A (2300 W on one phase)", lambda: [
        p for p in _calls(csms, "SIM0001", "MeterValues") for s in p["meterValue"][0]["sampledValue"]
        if s.get("measurand") == "Power.Active.Import" and s["value"] == "2300.0"])
    assert (await cp16.raw_call("RemoteStopTransaction", {"transactionId": CSMS_TX_ID}))["status"] == "Accepted"
    stop = await _until("the remote stop", lambda: _calls(csms, "SIM0001", "StopTransaction"))
    assert stop[0]["reason"] == "Remote" and stop[0]["transactionId"] == CSMS_TX_ID

    # -- 2.0.1: a variable, a trigger, a profile of 0 A (suspended), a remote stop ----------------------
    cp201 = _latest(csms, "SIM0002").cp
    tx = started[0]["transactionInfo"]["transactionId"]
    got = await cp201.raw_call("GetVariables", {"getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]})
    assert got["getVariableResult"][0]["attributeStatus"] == "Accepted"
    assert got["getVariableResult"][0]["attributeValue"] == str(CSMS_INTERVAL)  # the interval the CSMS gave at boot
    before = len(_calls(csms, "SIM0002", "StatusNotification"))
    assert (await cp201.raw_call("TriggerMessage", {"requestedMessage": "StatusNotification"}))["status"] == "Accepted"
    await _until("the triggered StatusNotification", lambda: len(_calls(csms, "SIM0002", "StatusNotification")) > before)
    profile201 = {"id": 7, "stackLevel": 1, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
                  "transactionId": tx, "chargingSchedule": [
                      {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0.0}]}]}
    assert (await cp201.raw_call("SetChargingProfile", {"evseId": 1, "chargingProfile": profile201}))["status"] \
        == "Accepted"
    await _until("2.0.1 charging suspended by the 0 A profile", lambda: [
        p for p in _calls(csms, "SIM0002", "TransactionEvent")
        if p["eventType"] == "Updated" and p["transactionInfo"].get("chargingState") == "SuspendedEVSE"])
    assert (await cp201.raw_call("RequestStopTransaction", {"transactionId": tx}))["status"] == "Accepted"
    ended = await _until("the 2.0.1 remote stop", lambda: [
        p for p in _calls(csms, "SIM0002", "TransactionEvent") if p["eventType"] == "Ended"])
    assert ended[0]["transactionInfo"]["transactionId"] == tx and ended[0]["transactionInfo"]["stoppedReason"] == "Remote"

    # -- Reset: the charger drops its link and boots again -----------------------------------------------
    assert (await _latest(csms, "SIM0003").cp.raw_call("Reset", {"type": "Soft"}))["status"] == "Accepted"
    await _until("SIM0003 to boot again after the reset", lambda: len(_calls(csms, "SIM0003", "BootNotification")) >= 2)


def _check_summary(csms: CsmsServer, summary: dict[str, Any], err: str) -> None:
    assert summary["chargers"] == 4 and summary["booted"] == 4, summary
    assert summary["resets"] == 1 and summary["transactions_started"] >= 4, summary
    # Ctrl-C ends every transaction as the end of the run does: none is left open at the CSMS
    assert summary["transactions_ended"] == summary["transactions_started"], summary
    ends = sum(1 for s in csms.sessions.values() for ss in s for f in ss.log.calls_in("StopTransaction")) + sum(
        1 for s in csms.sessions.values() for ss in s for f in ss.log.calls_in("TransactionEvent")
        if f[3]["eventType"] == "Ended")
    assert ends == summary["transactions_ended"], (ends, summary)
    # nothing failed, in either direction
    assert summary["error_codes"] == {}, (summary["error_codes"], err)
    assert all(row["errors"] == 0 and row["answered"] == row["sent"] for row in summary["sent"].values()), summary["sent"]
    assert all(row["errors"] == 0 and row["answered"] == row["received"] for row in summary["received"].values()), \
        summary["received"]
    received = {a: row["received"] for a, row in summary["received"].items()}
    ours = {"GetConfiguration": 1, "TriggerMessage": 2, "SetChargingProfile": 2, "RemoteStopTransaction": 1,
            "GetVariables": 1, "RequestStopTransaction": 1, "Reset": 1}
    assert all(received.get(a, 0) >= n for a, n in ours.items()), received  # ours, and the gateway's own reads
    # what the chargers say they sent is what reached the CSMS, action by action; except the
    # NotifyReports answering the gateway's own GetBaseReport (it reads each 2.x charger's
    # variables and answers those itself: gateway/mirror.py)
    at_csms: Counter[str] = Counter()
    for sessions in csms.sessions.values():
        for s in sessions:
            at_csms.update(f[2] for f in s.log.calls_in())
    sent = Counter({a: row["sent"] for a, row in summary["sent"].items()})
    sent["NotifyReport"] -= received.get("GetBaseReport", 0)
    assert +at_csms == +sent, (at_csms, sent)
    # meter values with temperature (1.6 measurand), humidity (1.6 DataTransfer, 2.x NotifyEvent)
    mv16 = [mv for p in _calls(csms, "SIM0001", "MeterValues") for mv in p["meterValue"]]
    assert {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage", "SoC",
            "Temperature"} <= _measurands(mv16)
    env = [json.loads(p["data"]) for p in _calls(csms, "SIM0001", "DataTransfer") if p["vendorId"] == "gateway.environment"]
    assert env and {r["name"] for r in env[0]["readings"]} == {"temperature", "humidity"}
    mv2 = [mv for p in _calls(csms, "SIM0004", "TransactionEvent") for mv in p.get("meterValue", [])]
    assert {"Energy.Active.Import.Register", "Power.Active.Import", "SoC"} <= _measurands(mv2)
    events = [(e["component"]["name"], e["variable"]["name"]) for p in _calls(csms, "SIM0004", "NotifyEvent")
              for e in p["eventData"]]
    assert ("TemperatureSensor", "Temperature") in events and ("HumiditySensor", "Humidity") in events


@pytest.mark.parametrize(("args", "message"), [
    (["--versions", "1.5"], "--versions: 1.5 not one of 1.6, 2.0.1, 2.1"),
    (["--chargers", "0"], "--chargers: at least 1"),
    (["--rate", "0"], "--rate: must be above 0"),
    (["--url", "http://x"], "--url: a ws:// or wss:// URL"),
])
def test_bad_arguments_get_one_line_and_status_2(args: list[str], message: str) -> None:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "gateway", "simulate", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"ocpp-gateway simulate: {message}", done.stderr
