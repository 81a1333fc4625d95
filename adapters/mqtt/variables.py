"""The variables mirror on MQTT, as pure functions (the encoder, adapters/mqtt/topics.py, publishes
what these return; the set command runs in gateway.operator like every other command):

- a retained topic per value: `{prefix}/chargers/{id}/variables/{name}`, the name as one topic
  level (percent-encoded: a 2.x name's `/`, `[`, `@`, `#` cannot add a level or a wildcard), JSON
  `{"name", "value", "secret", "mutability", "unit", "source", "read_at", "changed_at"}`;
- a set command: `{prefix}/chargers/{id}/cmd/Variables` with `{"values": {NAME: VALUE, ...}}`
  (or `{"name": ..., "value": ...}`), result on `.../cmd/Variables/result` (or the MQTT 5 response
  topic): `{"status": "ok", "response": {"results": [{"name", "status", "reason"?}]}}`;
  `{"refresh": true}` reads the charger's variables again;
- Home Assistant entities for the chosen variables (`[variables].home_assistant`): a diagnostic
  sensor, or where the mutability and `[variables].set_allowed` allow it a number, select or text
  entity whose commands go to `.../cmd/Variables`.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.mqtt.discovery import Entity

COMMAND = "Variables"


def payload(value: dict[str, Any]) -> dict[str, Any]:
    chars = value.get("characteristics") or {}
    return {"name": value["name"], "value": None if value.get("secret") else value.get("value"),
            "secret": bool(value.get("secret")), "mutability": value.get("mutability"), "unit": chars.get("unit"),
            "source": value.get("source"), "read_at": value.get("read_at"), "changed_at": value.get("changed_at")}


def entity(kind: dict[str, Any], value: dict[str, Any], state_topic: str, command_topic: str) -> Entity:
    """The Home Assistant entity of one variable (`kind`: the mirror's ha_entity descriptor)."""
    component, config = _discovery(kind, value, state_topic, command_topic)
    return Entity(component, f"var_{value['name']}", config)


def _discovery(entity: dict[str, Any], value: dict[str, Any], state_topic: str, command_topic: str
               ) -> tuple[str, dict[str, Any]]:
    name = value["name"]
    config: dict[str, Any] = {"name": name.replace("/", " "), "state_topic": state_topic,
                              "value_template": "{{ value_json.value }}"}
    kind = entity["kind"]
    if kind == "sensor":
        config["entity_category"] = "diagnostic"
        if entity.get("unit"):
            config["unit_of_measurement"] = _unit(entity["unit"])
        return "sensor", config
    config["entity_category"] = "config"
    config["command_topic"] = command_topic
    # the command's JSON: the name is put in by orjson, the value by Home Assistant (as a string)
    config["command_template"] = orjson.dumps({"values": {name: "VALUE"}}).decode().replace(
        '"VALUE"', "{{ value | string | tojson }}")
    if kind == "number":
        config["mode"] = "box"
        config["step"] = entity.get("step", 1)
        # Home Assistant's own range is 1-100: without the charger's limits, a wide one (an int32 for integers)
        whole = config["step"] == 1
        config["min"] = entity.get("min", 0 if whole else -1_000_000)
        config["max"] = entity.get("max", 2_147_483_647 if whole else 1_000_000)
        if entity.get("unit"):
            config["unit_of_measurement"] = _unit(entity["unit"])
        return "number", config
    if kind == "select":
        config["options"] = entity["options"]
        return "select", config
    return "text", config


def _unit(unit: str) -> str:
    return {"Celsius": "°C", "RH": "%", "Percent": "%"}.get(unit, unit)
