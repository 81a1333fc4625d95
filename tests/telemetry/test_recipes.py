"""The recipes in docs/recipes/ (a Node-RED flow and a Telegraf configuration) checked against what
the gateway really publishes: the topic list and payloads come from encoding one record of each kind
with the gateway's own MQTT encoder (the single source of the topic layout), the way test_stack
checks the Grafana queries against the InfluxDB encoder. Every subscription must match a published
topic, every payload key a recipe reads must be in that topic's payload, commands must match the
command filter, and the Node-RED function nodes are run (with Node.js) on the published messages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from datetime import datetime, timezone
from typing import Any

import pytest

from adapters.mqtt.sweep import matches
from gateway.config import Settings
from adapters.mqtt.topics import Encoder
from gateway.telemetry.records import (
    ChargerInfo, ChargerState, ConnectorStatus, ControlChange, EnvironmentReading, MeterReading, MeterSample,
    TransactionEvent,
)
from tests.harness import REPO

RECIPES = REPO / "docs" / "recipes"
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
NODE = shutil.which("node") or shutil.which("nodejs")


def _control_change() -> ControlChange:
    return ControlChange(charger_id="CP 1", evse=1, transaction_id="7", state="limited", limit_a=10.0,
                         reason="temperature", mechanism="profile", status="Accepted", ts=NOW, temperature=52.0)


def records() -> list[Any]:
    cid = "CP 1"  # a space: ids are percent-encoded in topics, the recipes decode them
    return [
        ChargerInfo(charger_id=cid, vendor="ACME", model="Wall", firmware="1", serial="S", ts=NOW),
        ChargerState(charger_id=cid, connected=True, upstream="standalone", protocol="ocpp1.6", ts=NOW),
        ConnectorStatus(charger_id=cid, evse=1, connector=1, status="Faulted", error_code="HighTemperature", ts=NOW),
        MeterReading(charger_id=cid, evse=1, connector=1, ts=NOW, transaction_id="7", source="MeterValues", samples=(
            MeterSample("Power.Active.Import", 7400.0, "W", None, "Outlet", "Sample.Periodic"),
            MeterSample("Current.Import", 16.0, "A", "L1", "Outlet", "Sample.Periodic"),
            MeterSample("Temperature", 41.0, "Celsius", None, "Body", "Sample.Periodic"))),
        EnvironmentReading(charger_id=cid, name="temperature_evse1", value=41.0, unit="Celsius", ts=NOW,
                           source="MeterValues", evse=1),
        TransactionEvent(charger_id=cid, event="ended", transaction_id="7", evse=1, connector=1, ts=NOW,
                         meter_start=0.0, meter_stop=1.0, energy_wh=1.0),
        _control_change(),
    ]


def published() -> tuple[list[tuple[str, Any, bool]], str]:
    """(topic, JSON payload or None, retained) of one record of each kind, and the command filter."""
    settings = Settings(mqtt={"url": "mqtt://127.0.0.1:1", "ha_discovery": False})
    encoder = Encoder(settings.mqtt, settings.site_id)  # the topic layout, as the gateway publishes it
    command_filter = encoder.command_filter
    encode = encoder.encode
    out = []
    for record in records():
        for topic, payload, retain in encode(record):
            out.append((topic, json.loads(payload) if payload[:1] in (b"{", b"[") else payload.decode(), bool(retain)))
    # what the gateway answers on for a command without an MQTT 5 response topic
    out.append((f"{command_filter}/result".replace("+", "CP%201", 1).replace("+", "Pause"),
                {"status": "ok", "response": {}}, False))
    return out, command_filter




def test_topic_matching() -> None:
    assert matches("ocpp/+/chargers/+/state", "ocpp/s/chargers/c/state")
    assert not matches("ocpp/+/chargers/+/state", "ocpp/s/chargers/c/evse/1/state")
    assert matches("ocpp/#", "ocpp/s/x") and not matches("ocpp/+", "ocpp/s/x")


# -- Node-RED ------------------------------------------------------------------------------------

RUNNER = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const node = { warn() {}, error(e) { throw new Error(String(e)); }, log() {}, status() {}, send() {} };
const fn = new Function("msg", "node", "context", "flow", "global", "env", input.code);
const result = fn(input.msg, node, {}, {}, {}, { get() { return undefined; } });
const undefinedAt = [];
(function walk(v, path) {
  if (v === undefined) { undefinedAt.push(path); return; }
  if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) walk(x, path + "." + k);
})(result, "result");
process.stdout.write(JSON.stringify({ result: result === undefined ? "__undefined__" : result, undefinedAt }));
"""


def run_function(code: str, msg: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    proc = subprocess.run([NODE, "-e", RUNNER], input=json.dumps({"code": code, "msg": msg}), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_node_red_flow_consumes_published_topics() -> None:
    nodes = json.loads((RECIPES / "node-red-flow.json").read_text())
    by_id = {n["id"]: n for n in nodes}
    assert len(by_id) == len(nodes), "node ids are unique"
    brokers = [n for n in nodes if n["type"] == "mqtt-broker"]
    assert len(brokers) == 1
    messages, command_filter = published()
    ins = [n for n in nodes if n["type"] == "mqtt in"]
    assert {n["name"] for n in ins} >= {"meter samples", "charger state", "charger availability", "EVSE status",
                                        "environment", "limits and pauses", "command results"}
    for node in nodes:
        for outputs in node.get("wires", []):
            for target in outputs:
                assert target in by_id, (node["id"], target)
        if node["type"] in ("mqtt in", "mqtt out"):
            assert node["broker"] == brokers[0]["id"]
    for node in ins:
        hits = [(t, p) for t, p, _ in messages if matches(node["topic"], t)]
        assert hits, f"{node['name']}: {node['topic']} matches nothing the gateway publishes"
        # JSON where the gateway publishes JSON, text where it publishes text (availability)
        assert node["datatype"] == ("json" if all(isinstance(p, (dict, list)) for _, p in hits) else "utf8"), node
        if node["datatype"] == "utf8":
            assert all(isinstance(p, str) for _, p in hits)
        # the function behind it, run on what the gateway publishes there
        for target in node["wires"][0]:
            fn = by_id[target]
            if fn["type"] != "function":
                continue
            if NODE is None:
                pytest.skip("needs Node.js to run the flow's function nodes")
            for topic, payload in hits:
                out = run_function(fn["func"], {"topic": topic, "payload": payload, "_msgid": "x"})
                assert out["result"] not in (None, "__undefined__"), (fn["name"], topic)
                assert not out["undefinedAt"], (fn["name"], topic, out["undefinedAt"])
                text = json.dumps(out["result"])
                assert "CP 1" in text, (fn["name"], "the charger id is decoded from its topic level", text)
                if fn["id"] == "ocppgw.fn.samples":
                    (readings,) = out["result"]
                    assert [(r["measurand"], r["location"], r["payload"], r["unit"]) for r in readings] == [
                        ("Power.Active.Import", "Outlet", 7400.0, "W"), ("Current.Import", "Outlet", 16.0, "A"),
                        ("Temperature", "Body", 41.0, "Celsius")]
                if fn["id"] == "ocppgw.fn.control":
                    assert out["result"]["payload"] == ("CP 1 1: limited to 10 A (temperature), charger said "
                                                        "Accepted")
    # commands: never retained, on the command filter, JSON objects
    (out_node,) = [n for n in nodes if n["type"] == "mqtt out"]
    assert out_node["retain"] == "false"
    injects = [n for n in nodes if n["type"] == "inject"]
    assert {n["topic"].rsplit("/", 1)[1] for n in injects} == {"Pause", "Resume"}
    for inject in injects:
        assert matches(command_filter, inject["topic"]), inject["topic"]
        assert inject["payloadType"] == "json" and isinstance(json.loads(inject["payload"]), dict)
        assert out_node["id"] in inject["wires"][0]


# -- Telegraf ------------------------------------------------------------------------------------

GO_LAYOUT = {"2006-01-02T15:04:05.000Z07:00": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")}


def test_telegraf_config_consumes_published_topics() -> None:
    config = tomllib.loads((RECIPES / "telegraf.conf").read_text())
    consumers = config["inputs"]["mqtt_consumer"]
    assert len(consumers) == 5 and config["outputs"]
    messages, _ = published()
    names = set()
    for c in consumers:
        names.add(c["name_override"])
        assert c["data_format"] == "json_v2" and c["qos"] in (0, 1, 2)
        assert len({cc["client_id"] for cc in consumers}) == len(consumers)
        (topic,) = c["topics"]
        hits = [(t, p) for t, p, _ in messages if matches(topic, t) and isinstance(p, dict)]
        assert hits, f"{topic} matches nothing the gateway publishes"
        (parsing,) = c["topic_parsing"]
        assert parsing["topic"] == topic
        assert len(parsing["tags"].split("/")) == len(topic.split("/"))
        for level, name in zip(topic.split("/"), parsing["tags"].split("/")):
            assert name == "_" or level == "+", (topic, name, "a tag is taken from a wildcard level")
        (parser,) = c["json_v2"]
        for _, payload in hits:
            assert GO_LAYOUT[parser["timestamp_format"]].match(payload[parser["timestamp_path"]]), payload
            for kind in ("tag", "field"):
                for item in parser.get(kind, []):
                    if not item.get("optional"):
                        assert payload.get(item["path"]) is not None, (topic, item["path"])
                    assert item["path"] in payload, (topic, item["path"])
            for obj in parser.get("object", []):
                rows = payload[obj["path"]]
                assert isinstance(rows, list) and rows
                for row in rows:
                    assert set(obj["tags"]) | set(obj["fields"]) <= set(row), (topic, row)
                    for key, kind in obj["fields"].items():
                        assert kind != "float" or isinstance(row[key], float)
    assert names == {"ocpp_meter", "ocpp_status", "ocpp_environment", "ocpp_control", "ocpp_charger"}
