"""The shipped Grafana provisioning and compose stack (docker cannot run here: they are parsed and
cross-checked). Every dashboard query may only name measurements, tags and fields that the gateway
really writes: the allowed names come from encoding one record of each kind with the real encoder."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import yaml

from adapters.influx import encode
from gateway.telemetry.records import (
    ChargerState, ConnectorStatus, ControlChange, EnvironmentReading, MeterReading, MeterSample, Record,
    TransactionEvent,
)
from tests.harness import REPO

GRAFANA = REPO / "config" / "grafana"
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
FLUX_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


def written_schema() -> dict[str, dict[str, set[str]]]:
    """measurement -> {"tags": ..., "fields": ...} from the gateway's own line-protocol encoder."""
    records: list[Record] = [
        MeterReading(charger_id="c", evse=1, connector=1, ts=NOW, transaction_id="t", source="MeterValues",
                     samples=(MeterSample("Voltage", 1.0, "V", "L1", "Outlet", "Sample.Periodic"),)),
        ConnectorStatus(charger_id="c", evse=1, connector=1, status="Available", error_code="NoError", ts=NOW),
        TransactionEvent(charger_id="c", event="ended", transaction_id="t", evse=1, connector=1, ts=NOW,
                         meter_start=1.0, meter_stop=2.0, energy_wh=1.0, offline=True),
        EnvironmentReading(charger_id="c", name="temperature", value=1.0, unit="Celsius", ts=NOW, source="x",
                           component="TemperatureSensor"),
        ControlChange(charger_id="c", evse=1, transaction_id="t", state="paused", limit_a=0.0, reason="operator",
                      mechanism="profile", status="Accepted", ts=NOW, temperature=50.0),
        ChargerState(charger_id="c", connected=True, upstream="online", protocol="ocpp1.6", ts=NOW),
    ]
    schema: dict[str, dict[str, set[str]]] = {}
    for record in records:
        for text in encode(record, "site"):
            head, fields, _ = text.split(" ")
            name, *tags = head.split(",")
            entry = schema.setdefault(name, {"tags": set(), "fields": set()})
            entry["tags"] |= {t.split("=")[0] for t in tags}
            entry["fields"] |= {f.split("=")[0] for f in fields.split(",")}
    return schema


def test_the_written_schema_is_the_product_contract() -> None:
    schema = written_schema()
    assert schema["meter_value"] == {"tags": {"site", "charger", "evse", "connector", "measurand", "phase", "location",
                                              "unit", "context"}, "fields": {"value"}}
    assert schema["connector_status"] == {"tags": {"site", "charger", "evse", "connector"},
                                          "fields": {"status", "error_code"}}
    assert schema["transaction"] == {"tags": {"site", "charger", "evse", "event"},
                                     "fields": {"transaction_id", "energy_wh", "meter_start", "meter_stop", "offline"}}
    assert schema["environment"] == {"tags": {"site", "charger", "name", "unit", "source", "component"},
                                     "fields": {"value"}}
    assert schema["control"] == {"tags": {"site", "charger", "evse", "state", "reason", "mechanism"},
                                 "fields": {"limit_a", "status", "transaction_id", "temperature"}}


def queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for var in dash["templating"]["list"]:
            out.append((path.name, f"variable {var['name']}", var["query"]))
        for panel in dash["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["query"]))
    return out


def test_dashboards_query_only_what_the_gateway_writes() -> None:
    schema = written_schema()
    all_tags = set().union(*(m["tags"] for m in schema.values()))
    found = queries()
    assert len(found) >= 16
    for name, title, flux in found:
        where = f"{name} / {title}"
        measurements = set(re.findall(r'r\._measurement == "([^"]+)"', flux))
        fields = set(re.findall(r'r\._field == "([^"]+)"', flux))
        columns = set(re.findall(r'\br\.([A-Za-z_]+)', flux)) | set(re.findall(r'r\["([^"]+)"\]', flux))
        for group in re.findall(r'columns: \[([^\]]*)\]', flux) + re.findall(r'(?:rowKey|columnKey): \[([^\]]*)\]', flux):
            columns |= set(re.findall(r'"([^"]+)"', group))
        columns |= set(re.findall(r'tag: "([^"]+)"', flux))
        if "schema.tagValues" in flux:
            assert columns - FLUX_COLUMNS <= all_tags, where
            continue
        assert measurements and measurements <= set(schema), (where, measurements)
        allowed_fields = set().union(*(schema[m]["fields"] for m in measurements))
        allowed_tags = set().union(*(schema[m]["tags"] for m in measurements))
        assert fields <= allowed_fields, (where, fields - allowed_fields)
        unknown = columns - FLUX_COLUMNS - allowed_tags - allowed_fields
        assert not unknown, (where, unknown)
        # the unit names the dashboards filter on are the canonical ones
        for unit in re.findall(r'r\.unit == "([^"]+)"', flux):
            assert unit in {"Wh", "W", "A", "V", "Celsius", "RH", "Percent"}, (where, unit)
        assert 'r.site == "${site}"' in flux, f"{where}: every query is scoped to the site"


def test_dashboards_use_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["version"] == "Flux"
    assert source["secureJsonData"]["token"] == "${INFLUX_TOKEN}"  # never a literal secret
    uids = set()
    for path in (GRAFANA / "dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], (path.name, panel["title"])
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == source["uid"]
    assert uids == {"ocppgw-site", "ocppgw-charger"}
    titles = {p["title"] for p in json.loads((GRAFANA / "dashboards" / "site-overview.json").read_text())["panels"]}
    assert {"Chargers online", "Power per charger", "Energy today per charger", "Connector status", "Temperature",
            "Humidity", "Limits and pauses"} <= titles
    detail = {p["title"] for p in json.loads((GRAFANA / "dashboards" / "charger-detail.json").read_text())["panels"]}
    assert {"Limits and pauses", "Current limit"} <= detail
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ocpp-gateway.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/ocpp-gateway"


def test_compose_stack_wires_gateway_mosquitto_influxdb_grafana() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "mosquitto", "influxdb", "grafana"}
    gw = services["gateway"]
    assert gw["build"]["dockerfile"] == "docker/Dockerfile" and (REPO / "docker" / "Dockerfile").is_file()
    env = gw["environment"]
    assert env["OCPPGW_MQTT__URL"] == "mqtt://mosquitto:1883"
    assert env["OCPPGW_INFLUX__URL"] == "http://influxdb:8086" and env["OCPPGW_INFLUX__API"] == "v2"
    influx_env = services["influxdb"]["environment"]
    assert services["influxdb"]["image"].startswith("influxdb:2")
    assert env["OCPPGW_INFLUX__BUCKET"] == influx_env["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert env["OCPPGW_INFLUX__TOKEN"] == influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    graf = services["grafana"]
    assert graf["environment"]["INFLUX_TOKEN"] == env["OCPPGW_INFLUX__TOKEN"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith("..")}
    assert mounts["/etc/grafana/provisioning"] == "../config/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards/ocpp-gateway"] == "../config/grafana/dashboards"
    for source in mounts.values():
        assert (REPO / "docker" / source).resolve().is_dir()
    assert (REPO / "docker" / "mosquitto.conf").is_file()
    # every OCPPGW_ variable names a real setting
    from gateway.config import Settings

    for key in env:
        section, _, field = key[len("OCPPGW_"):].lower().partition("__")
        if field:
            assert field in Settings.model_fields[section].annotation.model_fields, key
        else:
            assert section in Settings.model_fields, key
