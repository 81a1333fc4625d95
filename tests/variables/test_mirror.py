"""The variables mirror end to end: chargers on the `ocpp` package -> the gateway as a process ->
a CSMS on the `ocpp` package; the REST API checked against the OpenAPI document it serves.

- 1.6 with 55 configuration keys, 2.0.1 with a device model of 411 variables in 11 NotifyReport
  parts sent out of order: the mirror is complete after boot and the CSMS saw none of it;
- sets through REST reach the charger and the mirror, with the charger's per-item status;
- a change the CSMS makes passing through updates the mirror;
- secrets never appear in the API, the logs or the store file;
- local control sends W to a charger that reports W only;
- a report cut short ends as partial with its missing parts named; the mirror survives a restart;
- `[environment].ensure` makes a 1.6 and a 2.0.1 charger start reporting temperature.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any, Callable
from urllib.parse import quote

import pytest
from ocpp import v16, v201

from tests.api.helpers import Api, api_client
from tests.e2e.peers import CsmsServer
from tests.harness import REPO, GatewayProcess
from tests.variables.peers import SECRETS, connected

pytestmark = pytest.mark.timeout(90)

FAST = {"read_delay": 0.3, "report_timeout": 5.0, "call_timeout": 10.0}  # bounds with room for a loaded machine


async def start(factory: Callable[..., GatewayProcess], config: dict[str, Any]) -> GatewayProcess:
    return await asyncio.wait_for(asyncio.to_thread(factory, config), 30)


def base(gw: GatewayProcess) -> str:
    return f"http://{gw.config['api']['listen']}"


def token(gw: GatewayProcess) -> str:
    """The API token the gateway generated into its data_dir ([api].token unset)."""
    return (gw.dir / "data" / "api-token").read_text().strip()


async def until(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.1)


async def read_done(api: Api, cid: str) -> dict[str, Any]:
    async def probe() -> Any:
        status, body, _ = await api.get(f"/api/v1/chargers/{cid}/variables")
        assert status == 200, body
        return body if body["read"]["state"] not in ("never", "reading") else None

    body: dict[str, Any] = await until(probe, f"the first read of {cid}")
    return body


async def value(api: Api, cid: str, name: str) -> dict[str, Any]:
    status, body, _ = await api.get(f"/api/v1/chargers/{cid}/variables/{quote(name, safe='')}")
    assert status == 200, body
    return body


def assert_no_secret(gw: GatewayProcess, *texts: str) -> None:
    files = [gw.logs().encode()] + [p.read_bytes() for p in (gw.dir / "data").glob("gateway.sqlite3*")]
    for secret in SECRETS:
        for blob in files:
            assert secret.encode() not in blob, f"{secret!r} leaked into the logs or the store"
        for text in texts:
            assert secret not in text, f"{secret!r} leaked into an answer"


async def test_16_mirror_sets_csms_change_secrets_and_w(gateway_factory: Callable[..., GatewayProcess]) -> None:
    async with CsmsServer() as csms:
        gw = await start(gateway_factory, {"upstream": {"url": csms.url}, "variables": FAST})
        async with api_client(base(gw), token(gw)) as api, connected(gw.url("M16"), "ocpp1.6", "M16") as cp:
            up = await csms.wait_session("M16")
            body = await read_done(api, "M16")
            assert body["read"]["state"] == "complete" and body["read"]["variables"] == 55
            by = {v["name"]: v for v in body["variables"]}
            assert len(by) == 55
            assert by["HeartbeatInterval"]["value"] == "300" and by["HeartbeatInterval"]["source"] == "GetConfiguration"
            assert by["NumberOfConnectors"]["readonly"] is True
            assert by["AuthorizationKey"] == {**by["AuthorizationKey"], "secret": True, "value": None}
            assert by["VendorWifiPassword"]["secret"] is True and by["VendorWifiPassword"]["value"] is None
            assert body["capabilities"]["rate_units"] == ["W"] and body["capabilities"]["max_stack_level"] == 10
            # read with the gateway's own call, never seen by the CSMS
            assert [c for c, _ in cp.commands] == ["GetConfiguration"]
            assert [a for a, _ in up.log.requests_in()] == ["BootNotification"]
            assert all(f[0] == 2 for f in up.log.received), "the CSMS got a reply to a call it never made"

            # one value set through REST reaches the charger and the mirror
            status, result, _ = await api.request("PUT", "/api/v1/chargers/M16/variables/HeartbeatInterval",
                                                  {"value": 120})
            assert status == 200 and result["results"] == [{"name": "HeartbeatInterval", "status": "Accepted"}]
            assert cp.config["HeartbeatInterval"][0] == "120"
            hb = await value(api, "M16", "HeartbeatInterval")
            assert hb["value"] == "120" and hb["source"] == "ChangeConfiguration"
            # several at once: the charger's status per item, the gateway's refusals named
            status, result, _ = await api.post("/api/v1/chargers/M16/variables", {"values": {
                "VendorParam01": "x", "NumberOfConnectors": "3", "NoSuchKey": "1", "AuthorizationKey": "00ff00ff"}})
            assert status == 200
            got = {r["name"]: r for r in result["results"]}
            assert got["VendorParam01"]["status"] == "RebootRequired"
            assert got["NumberOfConnectors"]["status"] == "Refused" and "read-only" in got["NumberOfConnectors"]["reason"]
            assert got["NoSuchKey"]["status"] == "NotSupported"
            assert got["AuthorizationKey"]["status"] == "Refused" and "allow_credentials" in got["AuthorizationKey"]["reason"]
            assert ("ChangeConfiguration", {"key": "AuthorizationKey", "value": "00ff00ff"}) not in cp.commands
            assert (await value(api, "M16", "VendorParam01"))["value"] == "x"
            nosuch = await value(api, "M16", "NoSuchKey")  # the charger does not know it: recorded as unknown
            assert nosuch["known"] is False and nosuch["value"] is None and nosuch["source"] == "ChangeConfiguration"
            # bad input
            status, _, _ = await api.post("/api/v1/chargers/M16/variables", {"values": 5})
            assert status == 400
            status, _, _ = await api.get("/api/v1/chargers/M16/variables?changed_since=yesterday")
            assert status == 400
            status, _, _ = await api.get("/api/v1/chargers/M16/variables/NoSuchName")
            assert status == 404
            status, _, _ = await api.post("/api/v1/chargers/GONE/variables", {"values": {"A": "1"}})
            assert status == 404

            # a change the CSMS makes passes through and updates the mirror
            mark = hb["changed_at"]
            await up.cp.call(v16.call.ChangeConfiguration(key="MeterValueSampleInterval", value="15"))

            async def changed() -> Any:
                return (await value(api, "M16", "MeterValueSampleInterval"))["value"] == "15"

            await until(changed, "the CSMS's change in the mirror")
            status, body, _ = await api.get(f"/api/v1/chargers/M16/variables?changed_since={quote(mark)}")
            assert {v["name"] for v in body["variables"]} == {"HeartbeatInterval", "VendorParam01", "NoSuchKey",
                                                             "MeterValueSampleInterval"}
            status, body, _ = await api.get("/api/v1/chargers/M16/variables?key=vendorparam0")
            assert len(body["variables"]) == 10

            # the command line: a table, one value, a set (exit 0), a refused set (exit 1)
            cli = [sys.executable, "-m", "gateway", "variables", "--api", base(gw), "--token", token(gw), "M16"]
            out = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, timeout=30, cwd=REPO)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[0].startswith("M16: 56 variables, last read complete")
            assert any(line.split()[:2] == ["AuthorizationKey", "(secret)"] for line in out.stdout.splitlines())
            out = await asyncio.to_thread(subprocess.run, cli + ["ClockAlignedDataInterval", "--set", "300"],
                                          capture_output=True, text=True, timeout=30, cwd=REPO)
            assert (out.returncode, out.stdout.strip()) == (0, "ClockAlignedDataInterval: Accepted"), out.stderr
            assert cp.config["ClockAlignedDataInterval"][0] == "300"
            out = await asyncio.to_thread(subprocess.run, cli + ["NumberOfConnectors", "--set", "3"],
                                          capture_output=True, text=True, timeout=30, cwd=REPO)
            assert out.returncode == 1 and "Refused" in out.stdout
            out = await asyncio.to_thread(subprocess.run, cli + ["ClockAlignedDataInterval", "--json"],
                                          capture_output=True, text=True, timeout=30, cwd=REPO)
            assert out.returncode == 0 and json.loads(out.stdout)["value"] == "300"

            # a reboot: read again
            await cp.boot()

            async def read_twice() -> Any:
                return [c for c, _ in cp.commands].count("GetConfiguration") == 2

            await until(read_twice, "a second read after the reboot")

            # local control reads the rate unit: this charger takes W only
            status, result, _ = await api.post("/api/v1/chargers/M16/pause", {"evse": 1})
            assert status == 200, result
            prof = cp.commands[-1][1]["cs_charging_profiles"]
            assert prof["charging_schedule"]["charging_rate_unit"] == "W"
            assert_no_secret(gw, str(await api.get("/api/v1/chargers/M16/variables")))

        # kept across a restart, before the charger is back
        gw.stop()
        gw.start()
        async with api_client(base(gw), token(gw)) as api:
            status, body, _ = await api.get("/api/v1/chargers/M16/variables")
            assert len(body["variables"]) == 55 and body["read"]["state"] == "complete"  # NoSuchKey gone: a full read
            assert {v["name"]: v["value"] for v in body["variables"]}["HeartbeatInterval"] == "120"
        assert_no_secret(gw)


async def test_201_report_in_parts_sets_csms_change_cut_short(gateway_factory: Callable[..., GatewayProcess]) -> None:
    async with CsmsServer() as csms:
        gw = await start(gateway_factory, {"upstream": {"url": csms.url}, "variables": FAST})
        async with api_client(base(gw), token(gw)) as api, connected(gw.url("M201"), "ocpp2.0.1", "M201") as cp:
            up = await csms.wait_session("M201")
            body = await read_done(api, "M201")
            read = body["read"]
            assert read["state"] == "complete" and read["parts"] == 11 and read["variables"] == 411, read
            by = {v["name"]: v for v in body["variables"]}
            assert len(by) == 411
            rate = by["SmartChargingCtrlr/RateUnit"]
            assert rate["value"] == "W" and rate["mutability"] == "ReadOnly" and rate["source"] == "NotifyReport"
            assert rate["characteristics"]["values_list"] == "W"
            assert by["EVSE@1/Power#MaxSet"]["component"] == {"name": "EVSE", "instance": None, "evse": 1,
                                                               "connector": None}
            assert by["SecurityCtrlr/BasicAuthPassword"]["secret"] is True
            assert by["SecurityCtrlr/BasicAuthPassword"]["value"] is None
            assert body["capabilities"] == {"rate_units": ["W"], "max_stack_level": 8, "phases": 3,
                                            "connector_types": {"1.1": "cType2"}}
            # the report was the gateway's: not one frame of it reached the CSMS
            assert cp.reports and all(r >= 2_000_000_000 for r in cp.reports)
            assert [a for a, _ in up.log.requests_in()] == ["BootNotification"]
            assert all(f[0] == 2 for f in up.log.received)
            status, body, _ = await api.get("/api/v1/chargers/M201/variables?component=vendorctrlr&variable=Param007")
            assert [v["name"] for v in body["variables"]] == ["VendorCtrlr[block0]/Param007"]

            # set through REST: one (the name percent-encoded) and several
            status, result, _ = await api.request(
                "PUT", f"/api/v1/chargers/M201/variables/{quote('OCPPCommCtrlr/HeartbeatInterval', safe='')}",
                {"value": "60"})
            assert status == 200 and result["results"] == [{"name": "OCPPCommCtrlr/HeartbeatInterval",
                                                             "status": "Accepted"}]
            assert (await value(api, "M201", "OCPPCommCtrlr/HeartbeatInterval"))["value"] == "60"
            status, result, _ = await api.post("/api/v1/chargers/M201/variables", {"values": [
                {"name": "EVSE@1/Power#MaxSet", "value": 11000}, {"name": "SecurityCtrlr/SecurityProfile", "value": "2"},
                {"name": "Nope/Nothing", "value": "1"}, {"name": "SecurityCtrlr/BasicAuthPassword", "value": "x" * 20}]})
            got = {r["name"]: r for r in result["results"]}
            assert got["EVSE@1/Power#MaxSet"]["status"] == "Accepted"
            assert got["SecurityCtrlr/SecurityProfile"]["status"] == "Refused"
            assert got["Nope/Nothing"]["status"] == "UnknownVariable"
            assert got["SecurityCtrlr/BasicAuthPassword"]["status"] == "Refused"
            sent = cp.commands[-1][1]["set_variable_data"]
            assert [d["variable"]["name"] for d in sent] == ["Power", "Nothing"]
            assert (await value(api, "M201", "EVSE@1/Power#MaxSet"))["value"] == "11000"

            # a change the CSMS makes passes through and updates the mirror
            await up.cp.call(v201.call.SetVariables(set_variable_data=[{
                "attributeValue": "90", "component": {"name": "SampledDataCtrlr"},
                "variable": {"name": "TxUpdatedInterval"}}]))

            async def changed() -> Any:
                v = await value(api, "M201", "SampledDataCtrlr/TxUpdatedInterval")
                return v["value"] == "90" and v["source"] == "SetVariables"

            await until(changed, "the CSMS's SetVariables in the mirror")
            # a value changed on the charger itself, seen when the CSMS reads it (GetVariables passing through)
            param = next(it for it in cp.model if it["variable"]["name"] == "Param001")
            param["variableAttribute"][0]["value"] = "changed-locally"
            got = await up.cp.call(v201.call.GetVariables(get_variable_data=[
                {"component": {"name": "VendorCtrlr", "instance": "block0"}, "variable": {"name": "Param001"}}]))
            assert got.get_variable_result[0]["attribute_value"] == "changed-locally"

            async def read_by_csms() -> Any:
                v = await value(api, "M201", "VendorCtrlr[block0]/Param001")
                return v["value"] == "changed-locally" and v["source"] == "GetVariables"

            await until(read_by_csms, "the value the CSMS read, in the mirror")

            # local control: W for a charger that reports W only
            status, result, _ = await api.post("/api/v1/chargers/M201/pause", {"evse": 1})
            assert status == 200, result
            prof = cp.commands[-1][1]["charging_profile"]
            assert prof["charging_schedule"][0]["charging_rate_unit"] == "W"

            # a report cut short: what came is kept, the missing parts are named
            cp.stop_after, cp.late = 3, 7.0  # the rest after the read gave up (report_timeout 5 s)
            status, read, _ = await api.post("/api/v1/chargers/M201/variables/refresh?wait=15")
            assert status == 200 and read["state"] == "partial", read
            assert read["parts"] == 3 and read["missing_parts"] == [1, 3, 4, 5, 6, 7, 8, 9]

            # ... and its parts that come after the read ended are still the gateway's: never relayed
            async def late_parts_answered() -> Any:
                return cp.late_sent == 8

            await until(late_parts_answered, "the late parts answered")
            status, body, _ = await api.get("/api/v1/chargers/M201/variables")
            assert len(body["variables"]) == 411  # nothing dropped for a partial report
            assert [a for a, _ in up.log.requests_in()] == ["BootNotification"]
            status, _, _ = await api.post("/api/v1/chargers/M201/variables/refresh?wait=lots")
            assert status == 400
            status, _, _ = await api.post("/api/v1/chargers/GONE/variables/refresh")
            assert status == 404
            assert_no_secret(gw, str(body))
        assert_no_secret(gw)


async def test_environment_ensure_makes_chargers_report_temperature(
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    async with CsmsServer() as csms:
        gw = await start(gateway_factory, {"upstream": {"url": csms.url}, "variables": FAST,
                                           "environment": {"ensure": True, "periodic": 60, "delta_temperature": 0.5},
                                           "chargers": {"E16": {"rate_unit": "A"}}})
        async with api_client(base(gw), token(gw)) as api, connected(gw.url("E16"), "ocpp1.6", "E16") as c16, \
                connected(gw.url("E201"), "ocpp2.0.1", "E201") as c201:
            up16 = await csms.wait_session("E16")
            up201 = await csms.wait_session("E201")

            async def asked(cid: str, n: int) -> Any:
                status, body, _ = await api.get(f"/api/v1/chargers/{cid}/environment")
                assert status == 200
                return body if len(body["requests"]) >= n else None

            # 1.6: Temperature added to the sampled and the clock-aligned measurands
            env = await until(lambda: asked("E16", 2), "the 1.6 environment requests")
            assert env["ensure"] is True
            assert {(r["target"], r["request"]["value"], r["status"]) for r in env["requests"]} == {
                ("MeterValuesSampledData", "Energy.Active.Import.Register,Temperature", "Accepted"),
                ("MeterValuesAlignedData", "Energy.Active.Import.Register,Temperature", "Accepted")}
            assert c16.config["MeterValuesSampledData"][0].endswith(",Temperature")

            # ... and the charger reports it (relayed to the CSMS as ever)
            async def temperature_at_csms() -> Any:
                return [p for _, p in up16.log.requests_in("MeterValues")
                        if any(s.get("measurand") == "Temperature" for m in p["meterValue"] for s in m["sampledValue"])]

            await until(temperature_at_csms, "a 1.6 temperature at the CSMS")

            # [chargers.ID].rate_unit overrides what the charger reports, and the mismatch is logged
            status, result, _ = await api.post("/api/v1/chargers/E16/pause", {"evse": 1})
            assert status == 200, result
            prof = [p for c, p in c16.commands if c == "SetChargingProfile"][-1]["cs_charging_profiles"]
            assert prof["charging_schedule"]["charging_rate_unit"] == "A"
            assert "E16: [chargers.ID].rate_unit = 'A' but the charger reports W only" in gw.logs()

            # 2.0.1: periodic and delta monitors on the temperature and humidity the device model lists
            env = await until(lambda: asked("E201", 4), "the 2.0.1 environment requests")
            got = {r["target"]: r["status"] for r in env["requests"]}
            assert got == {"TemperatureSensor[Body]/Temperature#Periodic": "Accepted",
                           "TemperatureSensor[Body]/Temperature#Delta": "Accepted",
                           "HumiditySensor/Humidity#Periodic": "Rejected", "HumiditySensor/Humidity#Delta": "Rejected"}
            (_, asked_for), = [c for c in c201.commands if c[0] == "SetVariableMonitoring"]
            assert {(d["type"], d["value"]) for d in asked_for["set_monitoring_data"]
                    if d["variable"]["name"] == "Temperature"} == {("Periodic", 60), ("Delta", 0.5)}

            async def reported() -> Any:
                v = await value(api, "E201", "TemperatureSensor[Body]/Temperature")
                return v if v["value"] == "41.5" and v["source"] == "NotifyEvent" else None

            v = await until(reported, "the 2.0.1 temperature reported")
            assert {m["type"] for m in v["monitors"]} == {"Periodic", "Delta"}
            assert up201.log.requests_in("NotifyEvent"), "the charger's NotifyEvent is relayed"
            assert not up201.log.requests_in("NotifyReport")
