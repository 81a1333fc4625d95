"""Issue 18's operator check, end to end against the real gateway process, a real Mosquitto and a real
InfluxDB 1.x: a 1.6 charger that reports current, voltage and power without units and temperatures
at two locations is recorded with the right unit for each and keeps both temperatures (InfluxDB and
the REST API); after a restart (SIGTERM, and SIGKILL) it is still listed, as disconnected, by the API
and `ocpp-gateway status`, its MQTT state says it is not connected, and it can be forgotten for good."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from tests.api.test_cli import cli
from tests.e2e.peers import charger
from tests.harness import GatewayProcess
from tests.telemetry.services import Influx, Mosquitto, Subscriber
from tests.telemetry.test_e2e import db_name, telemetry_config

pytestmark = pytest.mark.timeout(120)

T1 = "2025-03-01T10:01:00.000Z"
CID = "KNOWN-16"
TOKEN = "known-token"


def api(gw: GatewayProcess, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{gw.config['api']['listen']}{path}", method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.05)


async def retained_of(mosquitto: Mosquitto, settle: float = 1.0,
                      enough: Callable[[dict[str, bytes]], bool] | None = None) -> dict[str, bytes]:
    """The retained messages about the charger a fresh subscriber gets (topic -> payload) within
    `settle` s; with `enough`, as soon as they satisfy it (then `settle` bounds the wait)."""
    fresh = Subscriber(mosquitto.port, [f"ocpp/known/chargers/{CID}/#", "homeassistant/#"])

    def got() -> dict[str, bytes]:
        with fresh._lock:
            messages = list(fresh.messages)
        return {m.topic: bytes(m.payload) for m in messages if m.retain and m.payload
                and (m.topic.startswith("ocpp/") or "known_KNOWN" in m.topic)}

    try:
        deadline = asyncio.get_running_loop().time() + settle
        while asyncio.get_running_loop().time() < deadline:
            if enough is not None and enough(got()):
                break
            await asyncio.sleep(0.05)
        return got()
    finally:
        fresh.close()


async def test_units_two_temperatures_and_a_charger_remembered_across_restarts(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto, influx: Influx) -> None:
    db = db_name()
    influx.create_db(db)
    sub = Subscriber(mosquitto.port, ["ocpp/known/#"])
    try:
        gw = gateway_factory({"site_id": "known", "api": {"token": TOKEN},
                              **telemetry_config(mosquitto, {"url": influx.url, "api": "v1", "database": db},
                                                 ha_discovery=True)})
        async with charger(gw.url(CID), "1.6", CID) as cp:
            await cp.raw_call("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "Wall-1"})
            await cp.raw_call("StatusNotification", {"connectorId": 1, "status": "Charging", "errorCode": "NoError"})
            start = await cp.raw_call("StartTransaction", {"connectorId": 1, "idTag": "ANY", "meterStart": 0,
                                                           "timestamp": T1})
            await cp.raw_call("MeterValues", {"connectorId": 1, "transactionId": start["transactionId"],
                                              "meterValue": [{"timestamp": T1, "sampledValue": [
                                                  {"value": "16.0", "measurand": "Current.Import"},
                                                  {"value": "230.5", "measurand": "Voltage"},
                                                  {"value": "3688", "measurand": "Power.Active.Import"},
                                                  {"value": "1200", "measurand": "Energy.Active.Import.Register"},
                                                  {"value": "41.5", "measurand": "Temperature", "location": "Body"},
                                                  {"value": "23.0", "measurand": "Temperature", "location": "Outlet"},
                                              ]}]})
            # the REST API: the unit of each, and both temperatures
            status, view = api(gw, "GET", f"/api/v1/chargers/{CID}")
            assert status == 200 and view["connected"] is True
            readings = {(r["measurand"], r["location"]): (r["value"], r["unit"]) for r in view["readings"]}
            assert readings == {("Current.Import", "Outlet"): (16.0, "A"), ("Voltage", "Outlet"): (230.5, "V"),
                                ("Power.Active.Import", "Outlet"): (3688.0, "W"),
                                ("Energy.Active.Import.Register", "Outlet"): (1200.0, "Wh"),
                                ("Temperature", "Body"): (41.5, "Celsius"), ("Temperature", "Outlet"): (23.0, "Celsius")}
            assert {(e["name"], e["value"]) for e in view["environment"]} == {
                ("temperature_evse1", 41.5), ("temperature_outlet_evse1", 23.0)}
            assert view["connectors"][0]["power_w"] == 3688.0

        # InfluxDB: one series per unit and per location
        def meter_rows() -> list[dict[str, Any]]:
            return influx.rows(db, "SELECT * FROM meter_value")

        rows = await until(lambda: len(meter_rows()) >= 6 and meter_rows(), what="six meter_value points")
        assert {(r["measurand"], r["location"], r["unit"], r["value"]) for r in rows} == {
            ("Current.Import", "Outlet", "A", 16.0), ("Voltage", "Outlet", "V", 230.5),
            ("Power.Active.Import", "Outlet", "W", 3688.0), ("Energy.Active.Import.Register", "Outlet", "Wh", 1200.0),
            ("Temperature", "Body", "Celsius", 41.5), ("Temperature", "Outlet", "Celsius", 23.0)}
        env = await until(lambda: len(influx.rows(db, "SELECT * FROM environment")) >= 2
                          and influx.rows(db, "SELECT * FROM environment"), what="two environment points")
        assert {(r["name"], r["value"]) for r in env} == {("temperature_evse1", 41.5), ("temperature_outlet_evse1", 23.0)}

        # gone: the API no longer claims it draws power
        await until(lambda: api(gw, "GET", f"/api/v1/chargers/{CID}")[1]["connected"] is False, what="disconnected")
        status, view = api(gw, "GET", f"/api/v1/chargers/{CID}")
        assert view["connectors"][0]["power_w"] is None
        assert not [r for r in view["readings"] if r["measurand"].startswith(("Power.", "Current."))]

        # restarted (SIGTERM): still listed, as disconnected, with what it last said
        assert gw.stop() == 0
        gw.start()
        status, body = api(gw, "GET", "/api/v1/chargers")
        assert status == 200 and [c["id"] for c in body["chargers"]] == [CID]
        known = body["chargers"][0]
        assert (known["connected"], known["protocol"], known["transport"]) == (False, "ocpp1.6", "websocket")
        assert known["boot"]["vendor"] == "ACME" and known["last_seen"]
        assert known["connectors"][0]["status"] == "Charging" and known["connectors"][0]["power_w"] is None
        assert known["upstream"]["state"] == "disconnected"
        code, out, err = await cli("status", "-c", str(gw.config_path))
        assert code == 0, err
        assert out.splitlines()[0] == "0 of 1 chargers connected"
        row = next(line for line in out.splitlines() if line.startswith(CID))
        assert row.split()[:5] == [CID, "no", "ocpp1.6", "websocket", "disconnected"] and "Charging" not in row
        code, out, err = await cli("status", "-c", str(gw.config_path), CID)
        assert code == 0, err
        assert "no (last: websocket, ocpp1.6)" in out and "not connected; the statuses it last reported:" in out
        # MQTT: its retained state, published again by this run, says it is not connected
        state = await until(lambda: [json.loads(m.payload) for m in sub.on(f"ocpp/known/chargers/{CID}/state")
                                     if m.payload and json.loads(m.payload).get("upstream") == "disconnected"],
                            what="the known charger's state published after the restart")
        assert state[-1]["connected"] is False and state[-1]["protocol"] == "ocpp1.6"
        fresh = Subscriber(mosquitto.port, [f"ocpp/known/chargers/{CID}/availability"])  # what is retained
        try:
            await until(lambda: fresh.on(f"ocpp/known/chargers/{CID}/availability"), what="retained availability")
            assert fresh.on(f"ocpp/known/chargers/{CID}/availability")[-1].payload == b"offline"
        finally:
            fresh.close()

        # after a SIGKILL too
        gw.kill()
        gw.start()
        assert [c["id"] for c in api(gw, "GET", "/api/v1/chargers")[1]["chargers"]] == [CID]

        # what the first run published for it is still retained on the broker (this run never saw it)
        kept = {f"ocpp/known/chargers/{CID}/evse/1/status", f"ocpp/known/chargers/{CID}/environment/temperature_evse1",
                f"ocpp/known/chargers/{CID}/evse/1/meter/Temperature/Body"}
        before = await retained_of(mosquitto, settle=10.0, enough=lambda got: kept <= set(got) and any(
            t.startswith("homeassistant/") for t in got))
        assert kept <= set(before)
        assert [t for t in before if t.startswith("homeassistant/")], "its Home Assistant configs"

        # forgotten: gone from the list, and stays gone after the next restart
        status, body = api(gw, "DELETE", f"/api/v1/chargers/{CID}")
        assert (status, body) == (200, {"forgotten": CID})
        assert api(gw, "GET", "/api/v1/chargers")[1]["chargers"] == []
        assert api(gw, "GET", f"/api/v1/chargers/{CID}")[0] == 404
        # its retained state is cleared through the same forget path as a connected charger's
        await until(lambda: sub.on(f"ocpp/known/chargers/{CID}/state")[-1].payload == b"",
                    what="the state topic cleared")
        # and every retained topic and discovery config of the earlier run too (adapters/mqtt/sweep.py)
        left: list[str] = []
        for _ in range(40):
            left = sorted(await retained_of(mosquitto))
            if not left:
                break
            await asyncio.sleep(0.25)
        assert left == [], left
        assert gw.stop() == 0
        gw.start()
        assert api(gw, "GET", "/api/v1/chargers")[1]["chargers"] == []
        assert api(gw, "DELETE", f"/api/v1/chargers/{CID}")[0] == 404
    finally:
        sub.close()
