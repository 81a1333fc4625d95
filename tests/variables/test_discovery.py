"""The variables' Home Assistant entities against Home Assistant's MQTT discovery schema (the table
of tests/telemetry/test_discovery.py, with MQTT Text added from its documentation), and their
retained topics as one level each. Pure: the encoder, no broker."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from adapters.mqtt.topics import Encoder
from gateway.config import MqttSettings
from gateway.telemetry.records import ChargerInfo, ChargerState
from gateway.variables.model import VariablesChanged
from tests.telemetry import test_discovery as schema

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
TEXT: dict[str, tuple[type, ...]] = {"command_template": schema.TEMPLATE, "command_topic": schema.STR, "max": schema.INT, "min": schema.INT,
        "mode": schema.STR, "pattern": schema.STR, "retain": schema.BOOL, "state_topic": schema.STR,
        "value_template": schema.TEMPLATE}


def value(name: str, v: str | None, mutability: str = "ReadWrite", **chars: Any) -> dict[str, Any]:
    return {"name": name, "value": v, "secret": False, "mutability": mutability, "characteristics": chars or None,
            "source": "NotifyReport", "read_at": "2026-03-01T10:00:00.000Z", "changed_at": "2026-03-01T10:00:00.000Z"}


def test_variable_entities_follow_the_discovery_schema(monkeypatch: Any) -> None:
    monkeypatch.setitem(schema.COMPONENTS, "text", TEXT)
    monkeypatch.setitem(schema.REQUIRED, "text", {"command_topic"})
    encoder = Encoder(MqttSettings(ha_discovery=True), "site")
    values = (value("OCPPCommCtrlr/HeartbeatInterval", "300", data_type="integer", unit="s"),
              value("EVSE@1/Power#MaxSet", "22000", data_type="decimal", unit="W", min_limit=0, max_limit=22000),
              value("AuthCtrlr/Enabled", "true", data_type="boolean"),
              value("Vendor/Mode", "Fast", data_type="OptionList", values_list="Slow,Fast"),
              value("Vendor/Greeting", "hello", data_type="string"),
              value("TemperatureSensor[Body]/Temperature", "24.5", "ReadOnly", data_type="decimal", unit="Celsius"))
    ha: dict[str, dict[str, Any]] = {"OCPPCommCtrlr/HeartbeatInterval": {"kind": "number", "step": 1, "unit": "s"},
          "EVSE@1/Power#MaxSet": {"kind": "number", "step": 0.1, "min": 0, "max": 22000, "unit": "W"},
          "AuthCtrlr/Enabled": {"kind": "select", "options": ["true", "false"]},
          "Vendor/Mode": {"kind": "select", "options": ["Slow", "Fast"]},
          "Vendor/Greeting": {"kind": "text"},
          "TemperatureSensor[Body]/Temperature": {"kind": "sensor", "unit": "Celsius"}}
    messages = [m for r in (ChargerState(charger_id="CP/1", connected=True, upstream="standalone",
                                         protocol="ocpp2.0.1", ts=T0),
                            ChargerInfo(charger_id="CP/1", vendor="ACME", model="W", firmware="1", serial="S", ts=T0),
                            VariablesChanged("CP/1", values, ha))
                for m in encoder.encode(r)]
    configs = {t: json.loads(p) for t, p, _ in messages if t.startswith("homeassistant/") and "/var_" in t}
    assert {t.split("/")[1] for t in configs} == {"number", "select", "text", "sensor"}
    for topic, config in configs.items():
        schema.check_config(topic, config)
    hb = next(c for t, c in configs.items() if t.startswith("homeassistant/number/") and "heartbeat" in t)
    assert (hb["min"], hb["max"]) == (0, 2_147_483_647)  # not Home Assistant's 1-100 for a value of 300
    temp = next(c for t, c in configs.items() if t.startswith("homeassistant/sensor/"))
    assert temp["entity_category"] == "diagnostic" and temp["unit_of_measurement"] == "°C"
    retained = [t for t, _, r in messages if "/variables/" in t and r]
    assert len(retained) == 6
    assert all(t.count("/") == "ocpp/site/chargers/CP%2F1/variables/x".count("/") for t in retained), retained
