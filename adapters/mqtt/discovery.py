"""Home Assistant MQTT discovery as pure functions: which entities a charger gets and their
configuration documents (README "Home Assistant"). No I/O: the encoder (adapters/mqtt/topics.py)
publishes what these return, retained, under `{ha_prefix}/{component}/{node_id}/{object_id}/config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.telemetry.records import ChargerInfo, EnvironmentReading, MeterSample

_HA_ID = re.compile(r"[^A-Za-z0-9_-]")

# measurand -> (HA device_class, state_class, unit, name) for the per-measurand topics HA gets a sensor for
METER = {
    "Power.Active.Import": ("power", "measurement", "W", "Power"),
    "Energy.Active.Import.Register": ("energy", "total_increasing", "Wh", "Energy"),
    "Current.Import": ("current", "measurement", "A", "Current"),
    "Voltage": ("voltage", "measurement", "V", "Voltage"),
    "SoC": ("battery", "measurement", "%", "State of charge"),
}
ENVIRONMENT = {"Celsius": ("temperature", "°C"), "RH": ("humidity", "%")}


@dataclass(frozen=True, slots=True)
class Entity:
    """One Home Assistant entity of a charger: its component (sensor, switch, ...), a key unique
    within the charger, and its configuration without the device and availability."""

    component: str
    key: str
    options: dict[str, Any]


def node_id(site_id: str, charger_level: str) -> str:
    return _HA_ID.sub("_", f"ocppgw_{site_id}_{charger_level}")


def object_id(key: str) -> str:
    return _HA_ID.sub("_", key).strip("_").lower()


def config(prefix: str, node: str, entity: Entity) -> tuple[str, dict[str, Any]]:
    """(discovery topic, configuration without device and availability)."""
    oid = object_id(entity.key)
    unique = f"{node}_{oid}"
    body = {**entity.options, "unique_id": unique, "default_entity_id": f"{entity.component}.{unique.lower()}"}
    return f"{prefix}/{entity.component}/{node}/{oid}/config", body


def complete(body: dict[str, Any], node: str, charger_id: str, device: dict[str, Any],
             gateway_state: str) -> dict[str, Any]:
    """The configuration as published: with the device and availability."""
    return {**body, "device": {"identifiers": [node], "name": charger_id, **device},
            "availability": [{"topic": gateway_state, "payload_available": "online",
                              "payload_not_available": "offline"}]}


def device_info(info: ChargerInfo) -> dict[str, Any]:
    return {k: v for k, v in {"manufacturer": info.vendor, "model": info.model, "sw_version": info.firmware,
                              "serial_number": info.serial}.items() if v}


def evse_status(evse: int, topic: str) -> Entity:
    name = "Status" if evse == 0 else f"EVSE {evse} status"
    return Entity("sensor", f"evse{evse}_status", {"name": name, "state_topic": topic,
                                                   "value_template": "{{ value_json.status }}",
                                                   "icon": "mdi:ev-station"})


def connected(topic: str) -> Entity:
    return Entity("binary_sensor", "connected", {
        "name": "Connected", "state_topic": topic, "device_class": "connectivity",
        "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}"})


def meter_sensor(evse: int, s: MeterSample, topic: str) -> Entity | None:
    spec = METER.get(s.measurand)
    if spec is None or s.unit not in (spec[2], "Percent" if spec[2] == "%" else spec[2]):
        return None
    suffix = f" {s.phase}" if s.phase else ""
    return Entity("sensor", f"evse{evse}_{s.measurand}_{s.phase or ''}", {
        "name": f"EVSE {evse} {spec[3]}{suffix}", "state_topic": topic, "value_template": "{{ value_json.value }}",
        "device_class": spec[0], "state_class": spec[1], "unit_of_measurement": spec[2]})


def environment_sensor(record: EnvironmentReading, topic: str) -> Entity | None:
    spec = ENVIRONMENT.get(record.unit)
    if spec is None:
        return None
    return Entity("sensor", f"env_{record.name}", {
        "name": record.name.replace("_", " ").capitalize(), "state_topic": topic,
        "value_template": "{{ value_json.value }}", "device_class": spec[0], "state_class": "measurement",
        "unit_of_measurement": spec[1]})
