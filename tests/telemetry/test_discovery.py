"""Home Assistant discovery and the topic layout as pure functions (no broker): every discovery
payload against the option names and types of Home Assistant's current MQTT discovery schema for
its component; the readings that end; reading identities kept apart in retained topics.

The schema table below is written from Home Assistant's MQTT integration documentation (the
"Configuration Variables" of MQTT Sensor, Binary sensor, Switch, Number, Button and Select, and the
discovery page's device and origin maps), as of Home Assistant 2025.10+, where `default_entity_id`
replaced the deprecated `object_id` (no longer honoured from 2026.4)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from adapters.mqtt.topics import Encoder
from gateway.config import MqttSettings
from gateway.telemetry.records import (
    ChargerForgotten, ChargerInfo, ChargerState, ConnectorStatus, EnvironmentReading, MeterReading, MeterSample,
    SiteLimit, TransactionEvent,
)

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
T1 = datetime(2026, 3, 1, 10, 5, tzinfo=timezone.utc)

STR, BOOL, INT, FLOAT, LIST, MAP = (str,), (bool,), (int,), (int, float), (list,), (dict,)
TEMPLATE = STR

# options every MQTT entity takes (the entity-common and availability parts of each component's page)
COMMON: dict[str, tuple[type, ...]] = {
    "availability": LIST, "availability_mode": STR, "availability_template": TEMPLATE, "availability_topic": STR,
    "payload_available": STR, "payload_not_available": STR,
    "default_entity_id": STR, "device": MAP, "enabled_by_default": BOOL, "encoding": STR, "entity_category": STR,
    "entity_picture": STR, "icon": STR, "json_attributes_template": TEMPLATE, "json_attributes_topic": STR,
    "name": STR, "origin": MAP, "platform": STR, "qos": INT, "unique_id": STR,
}
COMPONENTS: dict[str, dict[str, tuple[type, ...]]] = {
    "sensor": {"device_class": STR, "expire_after": INT, "force_update": BOOL, "last_reset_value_template": TEMPLATE,
               "options": LIST, "state_class": STR, "state_topic": STR, "suggested_display_precision": INT,
               "unit_of_measurement": STR, "value_template": TEMPLATE},
    "binary_sensor": {"device_class": STR, "expire_after": INT, "force_update": BOOL, "off_delay": INT,
                      "payload_off": STR, "payload_on": STR, "state_topic": STR, "value_template": TEMPLATE},
    "switch": {"command_template": TEMPLATE, "command_topic": STR, "device_class": STR, "optimistic": BOOL,
               "payload_off": STR, "payload_on": STR, "retain": BOOL, "state_off": STR, "state_on": STR,
               "state_topic": STR, "value_template": TEMPLATE},
    "number": {"command_template": TEMPLATE, "command_topic": STR, "device_class": STR, "max": FLOAT, "min": FLOAT,
               "mode": STR, "optimistic": BOOL, "payload_reset": STR, "retain": BOOL, "state_topic": STR,
               "step": FLOAT, "unit_of_measurement": STR, "value_template": TEMPLATE},
    "button": {"command_template": TEMPLATE, "command_topic": STR, "device_class": STR, "payload_press": STR,
               "retain": BOOL},
    "select": {"command_template": TEMPLATE, "command_topic": STR, "optimistic": BOOL, "options": LIST,
               "retain": BOOL, "state_topic": STR, "value_template": TEMPLATE},
}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "switch": {"command_topic"},
            "number": {"command_topic"}, "button": {"command_topic"}, "select": {"command_topic", "options"}}
DEVICE = {"configuration_url": STR, "connections": LIST, "hw_version": STR, "identifiers": LIST, "manufacturer": STR,
          "model": STR, "model_id": STR, "name": STR, "serial_number": STR, "suggested_area": STR, "sw_version": STR,
          "via_device": STR}
ORIGIN = {"name": STR, "sw_version": STR, "support_url": STR}
AVAILABILITY = {"payload_available": STR, "payload_not_available": STR, "topic": STR, "value_template": TEMPLATE}
CHOICES = {"availability_mode": {"all", "any", "latest"}, "entity_category": {"config", "diagnostic"},
           "mode": {"auto", "box", "slider"},
           "state_class": {"measurement", "measurement_angle", "total", "total_increasing"}}
DEVICE_CLASSES = {  # the device classes used here, by component
    "sensor": {"power", "energy", "current", "voltage", "frequency", "battery", "temperature", "humidity"},
    "binary_sensor": {"connectivity"}, "number": {"current"}, "button": {"identify", "restart", "update"},
    "switch": {"outlet", "switch"},
}


def check_typed(options: dict[str, Any], table: dict[str, tuple[type, ...]], where: str) -> None:
    unknown = sorted(set(options) - set(table))
    assert unknown == [], f"{where}: options not in the schema: {unknown}"
    for key, value in options.items():
        assert isinstance(value, table[key]) and not (table[key] != BOOL and isinstance(value, bool)), (
            f"{where}: {key}={value!r} is not {table[key]}")


def check_config(topic: str, config: dict[str, Any]) -> None:
    prefix, component, node, oid, last = topic.split("/")
    assert (prefix, last) == ("homeassistant", "config") and component in COMPONENTS, topic
    check_typed(config, {**COMMON, **COMPONENTS[component]}, topic)
    assert REQUIRED[component] <= set(config), topic
    assert "object_id" not in config  # deprecated (2025.10), ignored from 2026.4
    assert config["unique_id"] == f"{node}_{oid}"
    assert config["default_entity_id"] == f"{component}.{node.lower()}_{oid}"  # {domain}.{object id}
    for key, allowed in CHOICES.items():
        if key in config:
            assert config[key] in allowed, (topic, key, config[key])
    if "device_class" in config:
        assert config["device_class"] in DEVICE_CLASSES[component], (topic, config["device_class"])
    check_typed(config["device"], DEVICE, f"{topic} device")
    assert config["device"]["identifiers"] and config["device"]["name"]
    check_typed(config["origin"], ORIGIN, f"{topic} origin")
    assert config["origin"]["name"]
    if "availability" in config:
        assert config["availability_mode"] == "all"
        for item in config["availability"]:
            check_typed(item, AVAILABILITY, f"{topic} availability")
            assert "topic" in item
    if component == "number":
        assert config["min"] <= config["max"] and config["step"] > 0
    if component == "select":
        assert config["options"] and all(isinstance(o, str) for o in config["options"])
    assert not [k for k in config if k.endswith("_topic") and ("+" in config[k] or "#" in config[k])]


def sample(measurand: str, value: float, unit: str, phase: str | None = None, location: str | None = "Outlet",
           ) -> MeterSample:
    return MeterSample(measurand, value, unit, phase, location, "Sample.Periodic")


def reading(cid: str, evse: int, *samples: MeterSample, tx: str | None = "7", ts: datetime = T0) -> MeterReading:
    return MeterReading(charger_id=cid, evse=evse, connector=evse, ts=ts, transaction_id=tx, samples=samples,
                        source="MeterValues")


def session(cid: str, protocol: str) -> list[Any]:
    """What a charger's session becomes: state, boot, statuses, readings, environment, a transaction."""
    return [
        ChargerState(charger_id=cid, connected=True, upstream="standalone", protocol=protocol, ts=T0),
        ChargerInfo(charger_id=cid, vendor="ACME", model="Wall-1", firmware="1.2", serial="S-1", ts=T0),
        ConnectorStatus(charger_id=cid, evse=0, connector=None, status="Available", error_code="NoError", ts=T0),
        ConnectorStatus(charger_id=cid, evse=1, connector=1, status="Charging", error_code="NoError", ts=T0),
        ConnectorStatus(charger_id=cid, evse=2, connector=1, status="Available", error_code="NoError", ts=T0),
        TransactionEvent(charger_id=cid, event="started", transaction_id="7", evse=1, connector=1, ts=T0),
        reading(cid, 1, sample("Power.Active.Import", 7400.0, "W"), sample("Energy.Active.Import.Register", 1e4, "Wh"),
                sample("Current.Import", 16.0, "A", "L1"), sample("Current.Import", 15.5, "A", "L2"),
                sample("Voltage", 230.0, "V", "L1-N"), sample("SoC", 40.0, "Percent", location="EV"),
                sample("Temperature", 35.0, "Celsius", location="Body"), sample("Temperature", 31.0, "Celsius"),
                sample("Power.Factor", 0.98, "Percent")),
        EnvironmentReading(charger_id=cid, name="humidity", value=40.0, unit="RH", ts=T0, source="NotifyEvent"),
        SiteLimit(limit_a=None, source="config", ts=T0),
    ]


def encode_all(encoder: Encoder, records: list[Any]) -> list[tuple[str, bytes, bool]]:
    return [m for r in records for m in encoder.encode(r)]


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_every_discovery_payload_follows_the_current_schema(protocol: str) -> None:
    encoder = Encoder(MqttSettings(ha_discovery=True, qos=1), "site1")
    out = encode_all(encoder, session("CP 1", protocol))
    configs = {t: json.loads(p) for t, p, retain in out if t.startswith("homeassistant/") and retain}
    assert len(configs) >= 20
    for topic, config in configs.items():
        check_config(topic, config)
    node, gw = "ocppgw_site1_CP_201", "ocppgw_site1"
    by_key = {t.split("/")[3]: c for t, c in configs.items() if f"/{node}/" in t}
    # the entities of a charger (docs/mqtt-and-influxdb.md lists them)
    assert {t.split("/", 2)[1] + ":" + t.split("/")[3] for t in configs if f"/{node}/" in t} == {
        "binary_sensor:connected", "button:reset", "select:availability",
        "sensor:evse0_status", "switch:evse0_pause", "number:evse0_limit",
        *(f"{kind}:evse{n}_{what}" for n in (1, 2) for kind, what in (
            ("sensor", "status"), ("switch", "pause"), ("number", "limit"), ("button", "unlock"))),
        "sensor:evse1_power_active_import", "sensor:evse1_energy_active_import_register",
        "sensor:evse1_current_import_l1", "sensor:evse1_current_import_l2", "sensor:evse1_voltage_l1-n",
        "sensor:evse1_soc_ev", "sensor:evse1_temperature_body", "sensor:evse1_temperature",
        "sensor:env_humidity"}
    assert {t.split("/", 2)[1] + ":" + t.split("/")[3] for t in configs if f"/{gw}/" in t} == {
        "number:site_limit", "binary_sensor:online"}
    # readable names (Home Assistant puts the device name, "Charger CP 1", in front)
    assert by_key["evse1_current_import_l1"]["name"] == "EVSE 1 current L1"
    assert by_key["evse1_temperature_body"]["name"] == "EVSE 1 temperature (body)"
    assert by_key["evse1_temperature"]["name"] == "EVSE 1 temperature"
    assert by_key["evse0_pause"]["name"] == "Charging paused" and by_key["evse2_limit"]["name"] == "EVSE 2 current limit"
    # device, origin, the gateway as the charger's parent
    device = by_key["evse1_power_active_import"]["device"]
    assert device == {"identifiers": [node], "name": "Charger CP 1", "manufacturer": "ACME", "model": "Wall-1",
                      "sw_version": "1.2", "serial_number": "S-1", "via_device": gw}
    # availability: the gateway's and the charger's, both needed; connectivity follows the gateway only
    assert [a["topic"] for a in by_key["evse1_power_active_import"]["availability"]] == [
        "ocpp/site1/gateway/state", "ocpp/site1/chargers/CP%201/availability"]
    assert [a["topic"] for a in by_key["connected"]["availability"]] == ["ocpp/site1/gateway/state"]
    assert by_key["connected"]["entity_category"] == "diagnostic"
    assert by_key["reset"]["entity_category"] == "config" and by_key["availability"]["entity_category"] == "config"
    # units and classes
    assert (by_key["evse1_current_import_l1"]["device_class"], by_key["evse1_current_import_l1"]["unit_of_measurement"]) \
        == ("current", "A")
    assert by_key["evse1_soc_ev"]["unit_of_measurement"] == "%"
    assert by_key["evse1_temperature_body"]["unit_of_measurement"] == "°C"
    assert not [k for k in by_key if "power_factor" in k]  # no Home Assistant class for it
    # commands for the charger's version
    reset = json.loads(by_key["reset"]["payload_press"])
    unlock = json.loads(by_key["evse2_unlock"]["payload_press"])
    select = by_key["availability"]
    if protocol == "ocpp1.6":
        assert reset == {"type": "Soft"} and unlock == {"connectorId": 1}
        assert json.loads(select["command_template"].replace("{{ value }}", "Inoperative")) == {
            "connectorId": 0, "type": "Inoperative"}
        assert select["state_topic"].endswith("/evse/0/status")
    else:
        assert reset == {"type": "OnIdle"} and unlock == {"evseId": 2, "connectorId": 1}
        assert json.loads(select["command_template"].replace("{{ value }}", "Inoperative")) == {
            "operationalStatus": "Inoperative"}


def test_a_charger_without_an_evse_0_status_still_gets_its_whole_charger_controls() -> None:
    encoder = Encoder(MqttSettings(ha_discovery=True), "s")
    out = encoder.encode(ChargerState(charger_id="X", connected=True, upstream="online", protocol="ocpp2.0.1", ts=T0))
    keys = {t.split("/")[3] for t, _, _ in out if t.startswith("homeassistant/")}
    assert {"evse0_pause", "evse0_limit"} <= keys and "evse0_unlock" not in keys


def test_discovery_is_published_once_and_again_with_new_device_details() -> None:
    encoder = Encoder(MqttSettings(ha_discovery=True), "s")
    first = [t for t, _, _ in encode_all(encoder, session("A", "ocpp1.6")) if t.startswith("homeassistant/")]
    again = [t for t, _, _ in encode_all(encoder, session("A", "ocpp1.6")[1:]) if t.startswith("homeassistant/")]
    charger = [t for t in first if "/ocppgw_s_A/" in t]
    # a second session publishes nothing new, except every config once again for the BootNotification's details
    assert sorted(again) == sorted(set(charger))
    without = Encoder(MqttSettings(ha_discovery=False), "s")
    assert not [t for t, _, _ in encode_all(without, session("A", "ocpp1.6")) if t.startswith("homeassistant/")]


def test_readings_that_end() -> None:
    """Transaction end: power and current 0 on that EVSE at the time it ended; energy, voltage,
    temperatures and SoC keep their value. Disconnect: the flows of every EVSE cleared, the
    charger's availability offline. A new reading publishes again."""
    encoder = Encoder(MqttSettings(), "s")
    root = "ocpp/s/chargers/CP"
    encode_all(encoder, session("CP", "ocpp1.6"))
    encoder.encode(reading("CP", 2, sample("Power.Active.Import", 3000.0, "W"), tx="8"))
    ended = encoder.encode(TransactionEvent(charger_id="CP", event="ended", transaction_id="7", evse=1, connector=1,
                                            ts=T1))
    zeroed = {t: json.loads(p) for t, p, retain in ended if retain}
    assert set(zeroed) == {f"{root}/evse/1/meter/Power.Active.Import", f"{root}/evse/1/meter/Current.Import/L1",
                           f"{root}/evse/1/meter/Current.Import/L2"}
    assert all(z["value"] == 0.0 and z["ts"] == "2026-03-01T10:05:00.000Z" and z["transaction_id"] == "7"
               for z in zeroed.values())
    assert zeroed[f"{root}/evse/1/meter/Current.Import/L1"]["phase"] == "L1"
    # a 1.6 StopTransaction may name no EVSE: every EVSE's flows
    unnamed = encoder.encode(TransactionEvent(charger_id="CP", event="ended", transaction_id="8", evse=None,
                                              connector=None, ts=T1))
    assert f"{root}/evse/2/meter/Power.Active.Import" in {t for t, _, r in unnamed if r}
    gone = encoder.encode(ChargerState(charger_id="CP", connected=False, upstream="standalone", protocol="ocpp1.6",
                                       ts=T1))
    retained = {t: p for t, p, r in gone if r}
    assert retained[f"{root}/availability"] == b"offline"
    assert {t for t, p in retained.items() if p == b""} == {
        f"{root}/evse/1/meter/Power.Active.Import", f"{root}/evse/1/meter/Current.Import/L1",
        f"{root}/evse/1/meter/Current.Import/L2", f"{root}/evse/2/meter/Power.Active.Import"}
    back = encoder.encode(ChargerState(charger_id="CP", connected=True, upstream="standalone", protocol="ocpp1.6",
                                       ts=T1))
    assert (f"{root}/availability", b"online", True) in back
    again = encoder.encode(reading("CP", 1, sample("Power.Active.Import", 1000.0, "W"), ts=T1))
    assert json.loads(dict((t, p) for t, p, _ in again)[f"{root}/evse/1/meter/Power.Active.Import"])["value"] == 1000.0


def test_readings_with_different_identities_keep_their_own_retained_topics() -> None:
    encoder = Encoder(MqttSettings(), "s")
    out = encoder.encode(reading("CP", 1, sample("Temperature", 35.0, "Celsius", location="Body"),
                                 sample("Temperature", 31.0, "Celsius", location="Outlet"),
                                 sample("Temperature", 29.0, "Celsius", location=None),
                                 sample("Current.Import", 16.0, "A", "L1"),
                                 sample("Current.Import", 2.0, "A", "L1", location="Inlet"),
                                 sample("Voltage", 231.0, "V", "L1-N", location="Upstream")))
    retained = {t.removeprefix("ocpp/s/chargers/CP/evse/1/meter/"): json.loads(p)["value"] for t, p, r in out if r}
    # the spec's default location (Outlet) and no location are one reading: the later value wins
    assert retained == {"Temperature/Body": 35.0, "Temperature": 29.0, "Current.Import/L1": 16.0,
                        "Current.Import/L1/Inlet": 2.0, "Voltage/L1-N/Upstream": 231.0}


def test_forgetting_clears_every_retained_topic_and_config_of_the_charger_only() -> None:
    encoder = Encoder(MqttSettings(ha_discovery=True), "s")
    out = encode_all(encoder, session("A", "ocpp2.0.1") + session("B", "ocpp1.6"))
    retained_a = {t for t, p, r in out if r and ("/chargers/A/" in t or "/ocppgw_s_A/" in t)}
    gone = encoder.encode(ChargerForgotten(charger_id="A", ts=T1))
    assert {t for t, _, _ in gone} == retained_a and all(p == b"" and r for _, p, r in gone)
    assert "ocpp/s/chargers/A/availability" in retained_a
    assert encoder.encode(ChargerForgotten(charger_id="A", ts=T1)) == []
    assert "B" in encoder.chargers


def test_the_site_limit_is_retained_with_its_source() -> None:
    encoder = Encoder(MqttSettings(), "s")
    (msg,) = encoder.encode(SiteLimit(limit_a=63.0, source="operator", ts=T0))
    assert msg[0] == "ocpp/s/site/limit" and msg[2] is True
    assert json.loads(msg[1]) == {"limit_a": 63.0, "source": "operator", "ts": "2026-03-01T10:00:00.000Z"}
