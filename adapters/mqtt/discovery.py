"""Home Assistant MQTT discovery as pure functions: which entities a charger (and the gateway) get
and their configuration documents (docs/mqtt-and-influxdb.md "Home Assistant"). No I/O: the encoder
(adapters/mqtt/topics.py) publishes what these return, retained, under
`{ha_prefix}/{component}/{node_id}/{object_id}/config`.

Follows the current discovery schema: `unique_id` and `default_entity_id` (`{component}.{id}`; the
deprecated `object_id` is not sent), `device` (one per charger, `via_device` the gateway's) and
`origin`; availability is the gateway's state and the charger's own (`availability_mode: all`: an
entity is available only while both say online), except for the charger's connectivity sensor,
which follows the gateway alone (so a charger that left reads "disconnected", not "unavailable").
Entity names are short and readable; Home Assistant puts the device name in front of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway import __version__
from gateway.telemetry.records import ChargerInfo, EnvironmentReading, MeterSample

_HA_ID = re.compile(r"[^A-Za-z0-9_-]")
ONLINE, OFFLINE = "online", "offline"
SITE_MAX_A = 1000  # the site limit number's maximum (A per phase)

# measurand -> (HA device_class, state_class, canonical unit, HA unit, name)
METER = {
    "Power.Active.Import": ("power", "measurement", "W", "W", "power"),
    "Power.Active.Export": ("power", "measurement", "W", "W", "power exported"),
    "Power.Offered": ("power", "measurement", "W", "W", "power offered"),
    "Energy.Active.Import.Register": ("energy", "total_increasing", "Wh", "Wh", "energy"),
    "Energy.Active.Export.Register": ("energy", "total_increasing", "Wh", "Wh", "energy exported"),
    "Current.Import": ("current", "measurement", "A", "A", "current"),
    "Current.Export": ("current", "measurement", "A", "A", "current exported"),
    "Current.Offered": ("current", "measurement", "A", "A", "current offered"),
    "Voltage": ("voltage", "measurement", "V", "V", "voltage"),
    "Frequency": ("frequency", "measurement", "Hz", "Hz", "frequency"),
    "SoC": ("battery", "measurement", "Percent", "%", "state of charge"),
    "Temperature": ("temperature", "measurement", "Celsius", "°C", "temperature"),
}
ENVIRONMENT = {"Celsius": ("temperature", "°C"), "RH": ("humidity", "%")}
# a template that reads `value` of a JSON reading, and says "unknown" for an empty (cleared) payload
VALUE = "{{ value_json.value if value_json is defined else 'None' }}"


@dataclass(frozen=True, slots=True)
class Entity:
    """One Home Assistant entity: its component (sensor, switch, ...), a key unique within its
    device, its options without device, origin and availability, and whether it follows the
    charger's availability (False: the gateway's only)."""

    component: str
    key: str
    options: dict[str, Any] = field(default_factory=dict)
    follows_charger: bool = True


def node_id(site_id: str, charger_level: str) -> str:
    """The discovery node id of a charger (its topic level, made an id)."""
    return _HA_ID.sub("_", f"ocppgw_{site_id}_{charger_level}")


def gateway_node(site_id: str) -> str:
    return _HA_ID.sub("_", f"ocppgw_{site_id}")


def object_id(key: str) -> str:
    return _HA_ID.sub("_", key).strip("_").lower()


def origin() -> dict[str, Any]:
    return {"name": "ocpp-site-gateway", "sw_version": __version__}


def config(prefix: str, node: str, entity: Entity) -> tuple[str, dict[str, Any]]:
    """(discovery topic, configuration without device and availability)."""
    oid = object_id(entity.key)
    unique = f"{node}_{oid}"
    body = {**entity.options, "unique_id": unique, "default_entity_id": f"{entity.component}.{unique.lower()}"}
    return f"{prefix}/{entity.component}/{node}/{oid}/config", body


def availability(*topics: str) -> dict[str, Any]:
    return {"availability": [{"topic": t, "payload_available": ONLINE, "payload_not_available": OFFLINE}
                             for t in topics],
            "availability_mode": "all"}


def complete(body: dict[str, Any], device: dict[str, Any], availability_topics: tuple[str, ...],
             qos: int) -> dict[str, Any]:
    """The configuration as published: with device, origin, availability (when it has topics) and QoS."""
    return {**body, "device": device, "origin": origin(), **(availability(*availability_topics)
                                                             if availability_topics else {}), "qos": qos}


def charger_device(node: str, charger_id: str, info: dict[str, Any], site_id: str) -> dict[str, Any]:
    return {"identifiers": [node], "name": f"Charger {charger_id}", **info, "via_device": gateway_node(site_id)}


def gateway_device(site_id: str) -> dict[str, Any]:
    return {"identifiers": [gateway_node(site_id)], "name": f"OCPP gateway {site_id}", "manufacturer": "ocpp-site-gateway",
            "model": "OCPP site gateway", "sw_version": __version__}


def device_info(info: ChargerInfo) -> dict[str, Any]:
    return {k: v for k, v in {"manufacturer": info.vendor, "model": info.model, "sw_version": info.firmware,
                              "serial_number": info.serial}.items() if v}


def _evse_name(evse: int, what: str) -> str:
    return f"{what[0].upper()}{what[1:]}" if evse == 0 else f"EVSE {evse} {what}"


# -- sensors ---------------------------------------------------------------------------------------


def connected(topic: str) -> Entity:
    return Entity("binary_sensor", "connected", {
        "name": "Connected", "state_topic": topic, "device_class": "connectivity", "entity_category": "diagnostic",
        "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}"}, follows_charger=False)


def evse_status(evse: int, topic: str) -> Entity:
    return Entity("sensor", f"evse{evse}_status", {
        "name": "Status" if evse == 0 else f"EVSE {evse} status", "state_topic": topic,
        "value_template": "{{ value_json.status }}", "icon": "mdi:ev-station"})


def meter_sensor(evse: int, s: MeterSample, topic: str) -> Entity | None:
    spec = METER.get(s.measurand)
    if spec is None or s.unit != spec[2]:
        return None
    location = s.location if s.location not in (None, "Outlet") else None
    key = "_".join(x for x in (f"evse{evse}", s.measurand, s.phase, location) if x)
    name = _evse_name(evse, spec[4]) + (f" {s.phase}" if s.phase else "") + (f" ({location.lower()})" if location else "")
    options: dict[str, Any] = {
        "name": name, "state_topic": topic, "value_template": VALUE, "device_class": spec[0],
        "state_class": spec[1], "unit_of_measurement": spec[3]}
    if s.measurand in ("Temperature", "Frequency"):
        options["entity_category"] = "diagnostic"
    return Entity("sensor", key, options)


def environment_sensor(record: EnvironmentReading, topic: str) -> Entity | None:
    spec = ENVIRONMENT.get(record.unit)
    if spec is None:
        return None
    return Entity("sensor", f"env_{record.name}", {
        "name": record.name.replace("_", " ").capitalize(), "state_topic": topic, "value_template": VALUE,
        "device_class": spec[0], "state_class": "measurement", "unit_of_measurement": spec[1],
        "entity_category": "diagnostic"})


# -- controls (each command goes through the gateway's command channel, adapters/mqtt/commands.py) --


def pause_switch(evse: int, root: str) -> Entity:
    """On: the EVSE (0: the whole charger) is paused by the operator; state: what local control applies."""
    return Entity("switch", f"evse{evse}_pause", {
        "name": "Charging paused" if evse == 0 else f"EVSE {evse} paused", "icon": "mdi:pause-circle-outline",
        "command_topic": f"{root}/evse/{evse}/pause/set", "payload_on": "ON", "payload_off": "OFF",
        "state_topic": f"{root}/evse/{evse}/control",
        "value_template": "{{ 'ON' if value_json.state == 'paused' else 'OFF' }}"})


def limit_number(evse: int, root: str, max_a: float) -> Entity:
    """The operator's current limit of an EVSE (0: every EVSE); state: the limit local control
    applies (the maximum when none)."""
    return Entity("number", f"evse{evse}_limit", {
        "name": "Current limit" if evse == 0 else f"EVSE {evse} current limit",
        "command_topic": f"{root}/evse/{evse}/limit/set", "state_topic": f"{root}/evse/{evse}/control",
        "value_template": f"{{{{ value_json.limit_a if value_json.limit_a is not none else {max_a:g} }}}}",
        "min": 0, "max": max_a, "step": 1, "mode": "box", "unit_of_measurement": "A", "device_class": "current"})


def reset_button(root: str, protocol: str) -> Entity:
    kind = "Soft" if protocol == "ocpp1.6" else "OnIdle"
    return Entity("button", "reset", {
        "name": "Restart", "device_class": "restart", "entity_category": "config",
        "command_topic": f"{root}/cmd/Reset", "payload_press": f'{{"type": "{kind}"}}'})


def unlock_button(evse: int, connector: int | None, root: str, protocol: str) -> Entity:
    if protocol == "ocpp1.6":
        press = f'{{"connectorId": {connector or evse}}}'
    else:
        press = f'{{"evseId": {evse}, "connectorId": {connector or 1}}}'
    return Entity("button", f"evse{evse}_unlock", {
        "name": f"EVSE {evse} unlock", "icon": "mdi:lock-open-variant-outline",
        "command_topic": f"{root}/cmd/UnlockConnector", "payload_press": press})


def availability_select(root: str, protocol: str) -> Entity:
    options: dict[str, Any] = {
        "name": "Availability", "entity_category": "config", "icon": "mdi:power-plug-off-outline",
        "options": ["Operative", "Inoperative"], "command_topic": f"{root}/cmd/ChangeAvailability"}
    if protocol == "ocpp1.6":
        options["command_template"] = '{"connectorId": 0, "type": "{{ value }}"}'
        # a 1.6 charger reports the whole charger's state on connector 0
        options["state_topic"] = f"{root}/evse/0/status"
        options["value_template"] = "{{ 'Inoperative' if value_json.status == 'Unavailable' else 'Operative' }}"
    else:  # 2.x reports no charger-wide status: Home Assistant keeps what was last chosen
        options["command_template"] = '{"operationalStatus": "{{ value }}"}'
    return Entity("select", "availability", options)


def site_limit_number(base: str) -> Entity:
    return Entity("number", "site_limit", {
        "name": "Site current limit", "command_topic": f"{base}/site/limit/set", "state_topic": f"{base}/site/limit",
        "value_template": f"{{{{ value_json.limit_a if value_json.limit_a is not none else {SITE_MAX_A} }}}}",
        "min": 0, "max": SITE_MAX_A, "step": 1, "mode": "box", "unit_of_measurement": "A",
        "device_class": "current"}, follows_charger=False)


def gateway_online(gateway_state: str) -> Entity:
    return Entity("binary_sensor", "online", {
        "name": "Online", "state_topic": gateway_state, "payload_on": ONLINE, "payload_off": OFFLINE,
        "device_class": "connectivity", "entity_category": "diagnostic"}, follows_charger=False)
