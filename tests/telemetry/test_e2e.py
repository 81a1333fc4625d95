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
    cid = "CP+16"  # "+" is a legal charger id character and an MQTT wildcard
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
                                                           "unit": "W", "phase": None, "location": "Outlet",
                                                           "context": "Sample.Periodic"}
            assert by_measurand["Temperature"]["value"] == 25.0 and by_measurand["Temperature"]["unit"] == "Celsius"
            # the reading, then (the transaction ended) 0 at the time it ended
            powers = wait_for(lambda: len(sub.json(f"{base}/evse/1/meter/Power.Active.Import")) >= 2
                              and sub.json(f"{base}/evse/1/meter/Power.Active.Import"), 10, "power, then 0")
            assert [(p["value"], p["ts"]) for p in powers] == [(7200.0, "2025-03-01T10:01:00.000Z"),
                                                               (0.0, "2025-03-01T10:02:00.000Z")]
            assert sub.json(f"{base}/evse/1/meter/Current.Import/L1")[0]["value"] == 16.1
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

        # the charger hung up: its retained state and availability say so; its power and current
        # topics are cleared (the energy register keeps its last value)
        wait_for(lambda: sub.json(f"{base}/state")[-1]["connected"] is False, 10, "disconnected state")
        wait_for(lambda: sub.on(f"{base}/availability")[-1].payload == b"offline", 10, "availability offline")
        for flow in ("Power.Active.Import", "Current.Import/L1"):
            last = sub.on(f"{base}/evse/1/meter/{flow}")[-1]
            assert last.payload == b"" and last.retain is False  # (retained at the broker; live to this subscriber)
        assert sub.json(f"{base}/evse/1/meter/Energy.Active.Import.Register")[-1]["value"] == 1500.0
        fresh = Subscriber(mosquitto.port, [f"{base}/evse/1/meter/#"])
        try:
            await asyncio.sleep(1.0)
            assert sorted(m.topic for m in fresh.messages if m.payload) == [
                f"{base}/evse/1/meter/Energy.Active.Import.Register", f"{base}/evse/1/meter/Temperature/Body"]
        finally:
            fresh.close()

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


async def test_ocpp201_session_reaches_mqtt_and_influx_v2(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto, influx: Influx) -> None:
    """2.0.1: status, transactions, NotifyReport and NotifyEvent temperature/humidity; InfluxDB through
    influxdb-client's v2 write API (token, org, bucket, gzip) into a test endpoint that forwards to
    the real InfluxDB, where the points are read back."""
    bucket = db_name()
    influx.create_db(bucket)
    v2 = V2WriteEndpoint(influx, token="s3cret-token", org="site-org", bucket=bucket).start()
    cid = "CS201"
    base = f"ocpp/testsite/chargers/{cid}"
    sub = Subscriber(mosquitto.port, [f"{base}/#"])
    try:
        gw = gateway_factory(telemetry_config(mosquitto, {"url": v2.url, "api": "v2", "org": "site-org",
                                                          "bucket": bucket, "token": "s3cret-token"}))
        async with charger(gw.url(cid), "2.0.1", cid) as cp:
            await cp.raw_call("BootNotification", {"reason": "PowerUp",
                                                   "chargingStation": {"model": "DC-50", "vendorName": "Volt"}})
            await cp.raw_call("StatusNotification", {"timestamp": T0, "connectorStatus": "Occupied", "evseId": 1,
                                                     "connectorId": 1})
            await cp.raw_call("NotifyReport", {"requestId": 1, "generatedAt": T0, "seqNo": 0, "reportData": [
                {"component": {"name": "TemperatureSensor"}, "variable": {"name": "Temperature"},
                 "variableAttribute": [{"type": "Actual", "value": "77"}],
                 "variableCharacteristics": {"unit": "Fahrenheit", "dataType": "decimal", "supportsMonitoring": True}},
                {"component": {"name": "HumiditySensor"}, "variable": {"name": "Humidity"},
                 "variableAttribute": [{"value": "40.5"}],
                 "variableCharacteristics": {"unit": "RH", "dataType": "decimal", "supportsMonitoring": True}}]})
            await cp.raw_call("NotifyEvent", {"generatedAt": T1, "seqNo": 0, "eventData": [
                {"eventId": 1, "timestamp": T1, "trigger": "Periodic", "actualValue": "86",
                 "eventNotificationType": "PreconfiguredMonitor", "component": {"name": "TemperatureSensor"},
                 "variable": {"name": "Temperature"}},
                {"eventId": 2, "timestamp": T1, "trigger": "Periodic", "actualValue": "45",
                 "eventNotificationType": "PreconfiguredMonitor", "component": {"name": "HumiditySensor"},
                 "variable": {"name": "Humidity"}}]})
            await cp.raw_call("TransactionEvent", {
                "eventType": "Started", "timestamp": T0, "triggerReason": "Authorized", "seqNo": 0,
                "transactionInfo": {"transactionId": "TX-1"}, "evse": {"id": 1, "connectorId": 1},
                "meterValue": [{"timestamp": T0, "sampledValue": [
                    {"value": 2.0, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh"},
                     "context": "Transaction.Begin"}]}]})
            await cp.raw_call("TransactionEvent", {
                "eventType": "Updated", "timestamp": T1, "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                "transactionInfo": {"transactionId": "TX-1"},
                "meterValue": [{"timestamp": T1, "sampledValue": [
                    {"value": 11, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}},
                    {"value": 3000, "measurand": "Energy.Active.Import.Register"}]}]})
            await cp.raw_call("TransactionEvent", {
                "eventType": "Ended", "timestamp": T2, "triggerReason": "EVCommunicationLost", "seqNo": 2,
                "transactionInfo": {"transactionId": "TX-1", "stoppedReason": "EVDisconnected"},
                "meterValue": [{"timestamp": T2, "sampledValue": [
                    {"value": 4500, "measurand": "Energy.Active.Import.Register", "context": "Transaction.End"}]}]})

            assert sub.last(f"{base}/state")["protocol"] == "ocpp2.0.1"
            assert sub.last(f"{base}/evse/1/status") == {"status": "Occupied", "error_code": None, "connector": 1,
                                                         "ts": "2025-03-01T10:00:00.000Z"}
            wait_for(lambda: len(sub.json(f"{base}/environment/temperature")) >= 2, 10, "two temperatures")
            assert [m["value"] for m in sub.json(f"{base}/environment/temperature")] == [25.0, 30.0]
            assert sub.json(f"{base}/environment/temperature")[-1] == {
                "value": 30.0, "unit": "Celsius", "ts": "2025-03-01T10:01:00.000Z", "source": "NotifyEvent"}
            wait_for(lambda: len(sub.json(f"{base}/environment/humidity")) >= 2, 10, "two humidities")
            assert sub.json(f"{base}/environment/humidity")[-1]["unit"] == "RH"
            events = wait_for(lambda: len(sub.json(f"{base}/transactions")) >= 3 and sub.json(f"{base}/transactions"))
            assert [(e["event"], e["evse"]) for e in events] == [("started", 1), ("updated", 1), ("ended", 1)]
            assert (events[2]["meter_start"], events[2]["meter_stop"], events[2]["energy_wh"],
                    events[2]["reason"]) == (2000.0, 4500.0, 2500.0, "EVDisconnected")
            assert sub.json(f"{base}/evse/1/meter/Power.Active.Import")[0]["value"] == 11000.0
            # the transaction ended: power 0 from then on
            wait_for(lambda: sub.json(f"{base}/evse/1/meter/Power.Active.Import")[-1]["value"] == 0.0, 10, "power 0")

        env = wait_for(lambda: len(influx.rows(bucket, "SELECT * FROM environment")) >= 4
                       and influx.rows(bucket, "SELECT * FROM environment"), 10, "environment points via v2")
        assert sorted((r["name"], r["value"], r["source"], r["time"]) for r in env) == [
            ("humidity", 40.5, "NotifyReport", T0_NS), ("humidity", 45.0, "NotifyEvent", T1_NS),
            ("temperature", 25.0, "NotifyReport", T0_NS), ("temperature", 30.0, "NotifyEvent", T1_NS)]
        txs = wait_for(lambda: len(influx.rows(bucket, 'SELECT * FROM "transaction"')) >= 3
                       and influx.rows(bucket, 'SELECT * FROM "transaction"'), 10, "transactions via v2")
        assert [(r["event"], r["transaction_id"], r["evse"]) for r in txs] == [
            ("started", "TX-1", "1"), ("updated", "TX-1", "1"), ("ended", "TX-1", "1")]
        assert txs[2]["energy_wh"] == 2500.0
        meters = influx.rows(bucket, "SELECT * FROM meter_value WHERE measurand = 'Power.Active.Import'")
        assert [(r["value"], r["unit"], r["time"]) for r in meters] == [(11000.0, "W", T1_NS)]
        # what the v2 client sent: token, org, bucket, ns precision, gzip
        assert v2.requests and all(r["auth"] == "Token s3cret-token" and r["gzip"] for r in v2.requests)
        assert {(r["query"]["org"], r["query"]["bucket"], r["query"]["precision"]) for r in v2.requests} == {
            ("site-org", bucket, "ns")}
    finally:
        sub.close()
        v2.stop()


async def test_commands_round_trip_over_mqtt(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    base = "ocpp/testsite/chargers"
    sub = Subscriber(mosquitto.port, [f"{base}/+/cmd/#", "replies/#", "ocpp/testsite/gateway/state"], v5=True)
    # a retained command waiting at the broker is never executed (it would run again at every reconnect)
    sub.client.publish(f"{base}/CMD16/cmd/UnlockConnector", json.dumps({"connectorId": 1}), qos=1,
                       retain=True).wait_for_publish(5)
    gw = gateway_factory(telemetry_config(mosquitto))
    try:
        async with charger(gw.url("CMD16"), "1.6", "CMD16") as cp16, \
                charger(gw.url("CMD201"), "2.0.1", "CMD201") as cp201:
            await cp16.raw_call("BootNotification", {"chargePointVendor": "A", "chargePointModel": "B"})
            await cp201.raw_call("BootNotification", {"reason": "PowerUp",
                                                      "chargingStation": {"model": "M", "vendorName": "V"}})
            # the gateway subscribes before it says online
            await asyncio.to_thread(wait_for, lambda: [m for m in sub.on("ocpp/testsite/gateway/state")
                                                       if m.payload == b"online"], 10, "gateway online")
            pub = sub.client
            # plain: the result on .../cmd/{Action}/result
            pub.publish(f"{base}/CMD16/cmd/Reset", json.dumps({"type": "Soft"}), qos=1)
            result = await asyncio.to_thread(sub.last, f"{base}/CMD16/cmd/Reset/result")
            assert result == {"status": "ok", "response": {"status": "Accepted"}}
            assert [c[3] for c in cp16.log.calls_in("Reset")] == [{"type": "Soft"}]
            # MQTT 5: response topic and correlation data honoured
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "replies/me"
            props.CorrelationData = b"corr-42"
            pub.publish(f"{base}/CMD201/cmd/Reset", json.dumps({"type": "OnIdle"}), qos=1, properties=props)
            msg = (await asyncio.to_thread(wait_for, lambda: sub.on("replies/me"), 10, "reply"))[-1]
            assert json.loads(msg.payload) == {"status": "ok", "response": {"status": "Scheduled"}}
            assert msg.properties.CorrelationData == b"corr-42"
            # malformed payloads, wrong actions, schema violations, unknown chargers: error results
            cases = [
                ("CMD16", "Reset", b"{not json", "FormatViolation"),
                ("CMD16", "Reset", b"[1, 2]", "FormatViolation"),
                ("CMD16", "Reset", json.dumps({"type": "Sideways"}).encode(), "PropertyConstraintViolation"),
                ("CMD16", "BootNotification", b"{}", "NotSupported"),
                ("CMD16", "NoSuchAction", b"{}", "NotSupported"),
                ("NOBODY", "Reset", json.dumps({"type": "Soft"}).encode(), "NotConnected"),
                # not in [mqtt].command_actions by default: it can change the charger's AuthorizationKey
                ("CMD16", "ChangeConfiguration", json.dumps({"key": "AuthorizationKey", "value": "00"}).encode(),
                 "SecurityError"),
            ]
            for cid, action, payload, code in cases:
                with sub._lock:
                    sub.messages.clear()
                pub.publish(f"{base}/{cid}/cmd/{action}", payload, qos=1)
                got = await asyncio.to_thread(wait_for, lambda topic=f"{base}/{cid}/cmd/{action}/result": sub.json(topic), 10,
                                              f"{cid} {action} result")
                last = got[-1]
                assert last["status"] == "error" and last["error"]["code"] == code, (payload, last)
            assert cp16.log.calls_in("UnlockConnector") == []
            assert cp16.log.calls_in("ChangeConfiguration") == []
            assert "ignoring a retained command" in gw.logs()
    finally:
        sub.client.publish(f"{base}/CMD16/cmd/UnlockConnector", b"", qos=1, retain=True).wait_for_publish(5)
        sub.close()


async def test_broker_restart_loses_nothing(
        gateway_factory: Callable[..., GatewayProcess], own_mosquitto: Mosquitto) -> None:
    """QoS 1: the broker stops mid-session, telemetry keeps coming, the broker returns on the same
    port; a persistent subscriber counts every meter message, in order."""
    cid = "RESTART"
    topic = f"ocpp/testsite/chargers/{cid}/evse/1/meter"
    sub = Subscriber(own_mosquitto.port, [topic], client_id="counting-sub", persistent=True)
    n = 0

    async def send(cp: Any, count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            await cp.raw_call("MeterValues", {"connectorId": 1, "meterValue": [{
                "timestamp": T0, "sampledValue": [{"value": str(n), "measurand": "Energy.Active.Import.Register"}]}]})

    try:
        gw = gateway_factory(telemetry_config(own_mosquitto))
        async with charger(gw.url(cid), "1.6", cid) as cp:
            await send(cp, 20)
            await asyncio.to_thread(wait_for, lambda: len(sub.on(topic)) >= 20, 10, "first 20")
            own_mosquitto.stop()
            await asyncio.sleep(0.5)
            await send(cp, 30)  # the broker is away: spooled by the gateway
            own_mosquitto.start()
            await send(cp, 20)
            await asyncio.to_thread(wait_for, lambda: len({m.payload for m in sub.on(topic)}) >= 70, 20,
                                    "all 70 meter messages")
        values = [json.loads(m.payload)["samples"][0]["value"] for m in sub.on(topic)]
        unique = list(dict.fromkeys(values))  # QoS 1 is at-least-once: a resent duplicate may appear
        assert unique == [float(i) for i in range(1, 71)], values
        assert "spooling" in gw.logs()
    finally:
        sub.close()


async def test_a_stop_right_after_meter_values_loses_nothing(
        gateway_factory: Callable[..., GatewayProcess], own_mosquitto: Mosquitto) -> None:
    """The observer gathers exchanges for 50 ms before the sinks see them: a gateway stopped
    (SIGTERM) right after its last MeterValues still publishes every one of them on its way down."""
    cid = "QUICKSTOP"
    topic = f"ocpp/testsite/chargers/{cid}/evse/1/meter"
    sub = Subscriber(own_mosquitto.port, [topic], client_id="quickstop-sub", persistent=True)
    try:
        gw = gateway_factory(telemetry_config(own_mosquitto))
        async with charger(gw.url(cid), "1.6", cid) as cp:
            for n in range(1, 11):
                await cp.raw_call("MeterValues", {"connectorId": 1, "meterValue": [{
                    "timestamp": T0, "sampledValue": [{"value": str(n), "measurand": "Energy.Active.Import.Register"}]}]})
            assert await asyncio.to_thread(gw.stop) == 0  # at once: the last calls are still being gathered
        await asyncio.to_thread(wait_for, lambda: len({m.payload for m in sub.on(topic)}) >= 10, 10, "all 10")
        values = list(dict.fromkeys(json.loads(m.payload)["samples"][0]["value"] for m in sub.on(topic)))
        assert values == [float(i) for i in range(1, 11)]
    finally:
        sub.close()


async def test_influx_outage_loses_nothing(
        gateway_factory: Callable[..., GatewayProcess], own_influx: Influx) -> None:
    db = db_name()
    own_influx.create_db(db)
    cid = "OUTAGE"
    gw = gateway_factory(telemetry_config(None, {"url": own_influx.url, "api": "v1", "database": db}))

    async def send(cp: Any, first: int, count: int) -> None:
        for i in range(first, first + count):
            await cp.raw_call("MeterValues", {"connectorId": 1, "meterValue": [{
                "timestamp": f"2025-03-01T10:00:{i:02d}.000Z",
                "sampledValue": [{"value": str(i), "measurand": "Energy.Active.Import.Register"}]}]})

    def count() -> int:
        rows = own_influx.rows(db, "SELECT count(value) FROM meter_value")
        return int(rows[0]["count"]) if rows else 0

    async with charger(gw.url(cid), "1.6", cid) as cp:
        await send(cp, 0, 10)
        await asyncio.to_thread(wait_for, lambda: count() == 10, 10, "first 10 points")
        own_influx.stop()
        await send(cp, 10, 25)  # InfluxDB is away: batches fail, get spooled
        await asyncio.sleep(1.0)
        own_influx.start()
        await send(cp, 35, 15)
        await asyncio.to_thread(wait_for, lambda: count() == 50, 20, "all 50 points")
    rows = own_influx.rows(db, "SELECT value FROM meter_value")
    assert [r["value"] for r in rows] == [float(i) for i in range(50)]
    assert "InfluxDB write failed" in gw.logs()


async def test_ocpp21_send_frames_and_command_timeout(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto) -> None:
    """2.1 NotifyPeriodicEventStream arrives as a SEND frame (type 6, never answered): its values
    become environment readings via the monitor and stream the charger declared. A charger that
    does not answer a command gives a `timeout` result."""
    from websockets.asyncio.client import connect

    cid = "CS21"
    base = f"ocpp/testsite/chargers/{cid}"
    sub = Subscriber(mosquitto.port, [f"{base}/#", "ocpp/testsite/gateway/state"])
    try:
        gw = gateway_factory({**telemetry_config(mosquitto), "websocket": {"call_timeout": 1.0}})
        async with connect(gw.url(cid), subprotocols=["ocpp2.1"]) as ws:  # type: ignore[list-item]
            async def call(msg_id: str, action: str, payload: dict[str, Any]) -> Any:
                await ws.send(json.dumps([2, msg_id, action, payload]))
                return json.loads(await asyncio.wait_for(ws.recv(), 5))

            assert (await call("1", "BootNotification", {"reason": "PowerUp", "chargingStation": {
                "model": "M", "vendorName": "V"}}))[0] == 3
            assert (await call("2", "NotifyMonitoringReport", {"requestId": 1, "seqNo": 0, "generatedAt": T0, "monitor": [
                {"component": {"name": "HumiditySensor"}, "variable": {"name": "Humidity"},
                 "variableMonitoring": [{"id": 5, "transaction": False, "value": 10, "type": "Periodic",
                                         "severity": 8, "eventNotificationType": "PreconfiguredMonitor"}]}]}))[0] == 3
            assert (await call("3", "OpenPeriodicEventStream", {"constantStreamData": {
                "id": 2, "variableMonitoringId": 5, "params": {"interval": 10, "values": 2}}}))[0] == 3
            await ws.send(json.dumps([6, "4", "NotifyPeriodicEventStream", {
                "id": 2, "pending": 0, "basetime": T1, "data": [{"t": 0, "v": "41.5"}, {"t": 10, "v": "42"}]}]))
            await asyncio.to_thread(wait_for, lambda: len(sub.json(f"{base}/environment/humidity")) >= 2, 10,
                                    "two humidity readings")
            readings = sub.json(f"{base}/environment/humidity")
            assert [(r["value"], r["ts"], r["source"]) for r in readings] == [
                (41.5, "2025-03-01T10:01:00.000Z", "NotifyPeriodicEventStream"),
                (42.0, "2025-03-01T10:01:10.000Z", "NotifyPeriodicEventStream")]
            # a command the charger never answers
            await asyncio.to_thread(wait_for, lambda: [m for m in sub.on("ocpp/testsite/gateway/state")
                                                       if m.payload == b"online"], 10, "gateway online")
            sub.client.publish(f"{base}/cmd/Reset", json.dumps({"type": "Immediate"}), qos=1)
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))  # the CALL reaches the charger...
            assert frame[0] == 2 and frame[2] == "Reset"
            result = await asyncio.to_thread(sub.last, f"{base}/cmd/Reset/result")  # ...which stays silent
            assert result["status"] == "timeout"
    finally:
        sub.close()


async def test_sinks_away_never_slow_the_relay(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """Broker and InfluxDB unreachable from the start: every charger call is still answered at
    once, and the telemetry is on disk, in the spools, when the gateway stops."""
    import sqlite3
    import time

    from tests.harness import free_port

    gw = gateway_factory({"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
                          "influx": {"url": f"http://127.0.0.1:{free_port()}", "api": "v1", "database": "x",
                                     "flush_interval": 0.05}})
    n = 200
    async with charger(gw.url("AWAY"), "1.6", "AWAY") as cp:
        started = time.monotonic()
        for i in range(n):
            await cp.raw_call("MeterValues", {"connectorId": 1, "meterValue": [{
                "timestamp": T0, "sampledValue": [{"value": str(i)}]}]})
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"{n} relayed calls took {elapsed:.1f} s with both sinks away"
    gw.stop()
    data = gw.dir / "data"

    def count(name: str) -> int:
        db = sqlite3.connect(data / f"telemetry-spool-{name}.sqlite3")
        try:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        finally:
            db.close()

    assert count("mqtt") >= 2 * n  # .../meter and the retained .../meter/Energy.Active.Import.Register, each call
    assert count("influx") >= n  # one meter_value point per call
    assert "MQTT: cannot connect" in gw.logs() and "InfluxDB write failed" in gw.logs()


async def test_forgetting_a_charger_removes_its_discovery_and_retained_state(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto) -> None:

    cid = "FORGET1"
    base = f"ocpp/testsite/chargers/{cid}"
    node = f"ocppgw_testsite_{cid}"
    discovery = f"homeassistant/binary_sensor/{node}/connected/config"
    sub = Subscriber(mosquitto.port, ["ocpp/testsite/#", "homeassistant/#"])
    try:
        gw = gateway_factory(telemetry_config(mosquitto, ha_discovery=True))
        async with charger(gw.url(cid), "1.6", cid) as cp:
            await cp.raw_call("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "Wall-1"})
            await cp.raw_call("StatusNotification", {"connectorId": 1, "status": "Available", "errorCode": "NoError"})
            wait_for(lambda: [m for m in sub.on(discovery) if m.payload], 10, "discovery published")
            wait_for(lambda: sub.on(f"{base}/evse/1/status"), 10, "status published")
            assert (await asyncio.to_thread(gw.api, "DELETE", f"/api/v1/chargers/{cid}"))[0] == 200
            # every retained topic of the charger is cleared (an empty retained payload), discovery included
            wait_for(lambda: sub.on(discovery)[-1].payload == b"", 10, "discovery removed")
            wait_for(lambda: sub.on(f"{base}/evse/1/status")[-1].payload == b"", 10, "status removed")
        # a fresh subscriber sees nothing retained for it any more
        fresh = Subscriber(mosquitto.port, [f"{base}/#", f"homeassistant/+/{node}/#"])
        try:
            await asyncio.sleep(1.0)
            assert [m.topic for m in fresh.messages if m.payload] == []
        finally:
            fresh.close()
    finally:
        sub.close()
