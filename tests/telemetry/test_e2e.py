"""End to end: `ocpp` package chargers -> the real gateway process -> a real Mosquitto and a real
InfluxDB 1.x (v1 /write for real; v2 through a test-side /api/v2/write endpoint that forwards into
the same InfluxDB). Every message is checked at the far end: a paho subscriber, InfluxDB's /query.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Callable

import pytest

from tests.e2e.peers import charger
from tests.harness import GatewayProcess
from tests.telemetry.services import Influx, Mosquitto, Subscriber, V2WriteEndpoint, wait_for

pytestmark = pytest.mark.timeout(60)

T0 = "2025-03-01T10:00:00.000Z"
T1 = "2025-03-01T10:01:00.000Z"
T2 = "2025-03-01T10:02:00.000Z"
T0_NS = 1740823200_000_000_000
T1_NS = T0_NS + 60_000_000_000
T2_NS = T0_NS + 120_000_000_000


def telemetry_config(broker: Mosquitto | None = None, influx: dict[str, Any] | None = None,
                     **mqtt: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if broker is not None:
        config["mqtt"] = {"url": broker.url, "reconnect_min": 1.0, "reconnect_max": 1.0, **mqtt}
    if influx is not None:
        config["influx"] = {"flush_interval": 0.1, "retry_min": 0.2, "retry_max": 0.5, **influx}
    return config


def db_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


async def test_ocpp16_session_reaches_mqtt_and_influx_v1(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto, influx: Influx) -> None:
    db = db_name()
    influx.create_db(db)
    cid = "CP+16/x"[:5]  # "CP+16": '+' is a legal charger id character and an MQTT wildcard
    level = "CP%2B16"
    base = f"ocpp/testsite/chargers/{level}"
    sub = Subscriber(mosquitto.port, ["ocpp/testsite/#", "homeassistant/#"])
    try:
        gw = gateway_factory(telemetry_config(mosquitto, {"url": influx.url, "api": "v1", "database": db},
                                              ha_discovery=True))
        wait_for(lambda: sub.on("ocpp/testsite/gateway/state"), 10, "gateway/state")
        assert sub.on("ocpp/testsite/gateway/state")[-1].payload == b"online"
        async with charger(gw.url("CP%2B16"), "1.6", cid) as cp:
            await cp.raw_call("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "Wall-1",
                                                   "firmwareVersion": "1.2.3"})
            await cp.raw_call("StatusNotification", {"connectorId": 1, "status": "Preparing",
                                                     "errorCode": "NoError", "timestamp": T0})
            start = await cp.raw_call("StartTransaction", {"connectorId": 1, "idTag": "ANY", "meterStart": 1000,
                                                           "timestamp": T0})
            tx = start["transactionId"]
            await cp.raw_call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
                "timestamp": T1, "sampledValue": [
                    {"value": "1.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                    {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                    {"value": "16.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                    {"value": "77", "measurand": "Temperature", "unit": "Fahrenheit", "location": "Body"},
                ]}]})
            await cp.raw_call("MeterValues", {"connectorId": 0, "meterValue": [{
                "timestamp": T1, "sampledValue": [
                    {"value": "298.15", "measurand": "Temperature", "unit": "K", "location": "Inlet"}]}]})
            await cp.raw_call("StopTransaction", {"transactionId": tx, "meterStop": 2500, "timestamp": T2,
                                                  "reason": "EVDisconnected"})

            state = sub.last(f"{base}/state")
            assert state["connected"] is True and state["protocol"] == "ocpp1.6"
            assert state["upstream"] == "standalone" and state["ts"].endswith("Z")
            status = sub.last(f"{base}/evse/1/status")
            assert status == {"status": "Preparing", "error_code": "NoError", "connector": 1,
                              "ts": "2025-03-01T10:00:00.000Z"}
            meter = sub.last(f"{base}/evse/1/meter")
            assert meter["ts"] == "2025-03-01T10:01:00.000Z" and meter["transaction_id"] == str(tx)
            by_measurand = {s["measurand"]: s for s in meter["samples"]}
            assert by_measurand["Energy.Active.Import.Register"]["value"] == 1500.0
            assert by_measurand["Energy.Active.Import.Register"]["unit"] == "Wh"
            assert by_measurand["Power.Active.Import"] == {"measurand": "Power.Active.Import", "value": 7200.0,
                                                           "unit": "W", "phase": None, "location": None,
                                                           "context": "Sample.Periodic"}
            assert by_measurand["Temperature"]["value"] == 25.0 and by_measurand["Temperature"]["unit"] == "Celsius"
            power = sub.last(f"{base}/evse/1/meter/Power.Active.Import")
            assert power["value"] == 7200.0 and power["ts"] == "2025-03-01T10:01:00.000Z"
            assert sub.last(f"{base}/evse/1/meter/Current.Import/L1")["value"] == 16.1
            assert [m.retain for m in sub.on(f"{base}/evse/1/meter")] == [False]
            temp = sub.last(f"{base}/environment/temperature_evse1")
            assert temp == {"value": 25.0, "unit": "Celsius", "ts": "2025-03-01T10:01:00.000Z",
                            "source": "MeterValues"}
            assert sub.last(f"{base}/environment/temperature_inlet")["value"] == 25.0
            events = wait_for(lambda: len(sub.json(f"{base}/transactions")) >= 2 and sub.json(f"{base}/transactions"))
            assert [e["event"] for e in events] == ["started", "ended"]
            assert events[0]["transaction_id"] == str(tx) and events[0]["meter_start"] == 1000.0
            assert events[1] == {"event": "ended", "transaction_id": str(tx), "evse": 1, "meter_start": 1000.0,
                                 "meter_stop": 2500.0, "energy_wh": 1500.0, "reason": "EVDisconnected",
                                 "offline": False, "ts": "2025-03-01T10:02:00.000Z"}
            # Home Assistant discovery: a device per charger, proper classes and units, availability
            node = "ocppgw_testsite_CP_2B16"
            power_cfg = json.loads(wait_for(lambda: sub.on(
                f"homeassistant/sensor/{node}/evse1_power_active_import/config"))[-1].payload)
            assert power_cfg["device_class"] == "power" and power_cfg["unit_of_measurement"] == "W"
            assert power_cfg["state_topic"] == f"{base}/evse/1/meter/Power.Active.Import"
            assert power_cfg["device"]["identifiers"] == [node] and power_cfg["device"]["model"] == "Wall-1"
            assert power_cfg["availability"][0]["topic"] == "ocpp/testsite/gateway/state"
            energy_cfg = json.loads(sub.on(
                f"homeassistant/sensor/{node}/evse1_energy_active_import_register/config")[-1].payload)
            assert energy_cfg["state_class"] == "total_increasing" and energy_cfg["unit_of_measurement"] == "Wh"
            conn = json.loads(sub.on(f"homeassistant/binary_sensor/{node}/connected/config")[-1].payload)
            assert conn["device_class"] == "connectivity"
            temp_cfg = json.loads(sub.on(f"homeassistant/sensor/{node}/env_temperature_evse1/config")[-1].payload)
            assert temp_cfg["device_class"] == "temperature" and temp_cfg["unit_of_measurement"] == "°C"
            # nothing left its topic level: every charger topic is under the encoded id
            assert not [t for t in sub.topics_seen() if "/chargers/CP+" in t or "/chargers/CP/" in t]

        # InfluxDB (v1 /write): tags, float fields, the charger's timestamps
        rows = wait_for(lambda: len(influx.rows(db, "SELECT * FROM meter_value")) >= 5
                        and influx.rows(db, "SELECT * FROM meter_value"), 10, "meter_value points")
        energy = [r for r in rows if r["measurand"] == "Energy.Active.Import.Register"][0]
        assert energy["time"] == T1_NS and energy["value"] == 1500.0
        assert (energy["site"], energy["charger"], energy["evse"], energy["connector"], energy["unit"]) == (
            "testsite", cid, "1", "1", "Wh")
        assert energy["context"] == "Sample.Periodic"
        current = [r for r in rows if r["measurand"] == "Current.Import"][0]
        assert current["phase"] == "L1" and current["value"] == 16.1
        env = wait_for(lambda: influx.rows(db, "SELECT * FROM environment"), 10, "environment points")
        assert {(r["name"], r["value"], r["unit"], r["source"], r["time"]) for r in env} == {
            ("temperature_evse1", 25.0, "Celsius", "MeterValues", T1_NS),
            ("temperature_inlet", 25.0, "Celsius", "MeterValues", T1_NS)}
        st = influx.rows(db, "SELECT * FROM connector_status")
        assert [(r["status"], r["error_code"], r["evse"], r["time"]) for r in st] == [("Preparing", "NoError", "1", T0_NS)]
        txs = wait_for(lambda: len(influx.rows(db, "SELECT * FROM \"transaction\"")) >= 2
                       and influx.rows(db, "SELECT * FROM \"transaction\""), 10, "transaction points")
        assert [(r["event"], r["transaction_id"], r["time"]) for r in txs] == [("started", str(tx), T0_NS),
                                                                               ("ended", str(tx), T2_NS)]
        assert txs[1]["energy_wh"] == 1500.0 and txs[1]["offline"] is False
        types = influx.q("SHOW FIELD KEYS", db)["results"][0]["series"]
        field_types = {(s["name"], k, t) for s in types for k, t in s["values"]}
        assert {("meter_value", "value", "float"), ("transaction", "energy_wh", "float"),
                ("transaction", "transaction_id", "string"), ("transaction", "offline", "boolean"),
                ("environment", "value", "float"), ("connector_status", "status", "string")} <= field_types
        state_rows = influx.rows(db, "SELECT * FROM charger_state")
        assert state_rows and state_rows[0]["connected"] is True
    finally:
        sub.close()
