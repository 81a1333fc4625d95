"""Pause and resume through the REST API (answers checked against the served OpenAPI document)
and MQTT commands; every control change published on MQTT and encoded for InfluxDB."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapters.influx import encode
from gateway.telemetry.records import ControlChange
from tests.api.helpers import api_client, inproc
from tests.control.peers import STEP, Connected, until
from tests.telemetry.services import Mosquitto, Subscriber, wait_for

BASE = 900_000_000
pytestmark = pytest.mark.timeout(60)


async def test_pause_and_resume_through_the_rest_api(tmp_path: Path) -> None:
    async with inproc(tmp_path, auth={"unknown_id_tags": "accept"}) as gw, api_client(gw.api_url) as api, \
            Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
        tx = await cp.start_tx(1)
        await until(lambda: gw.control.view("CP1")["transactions"], STEP, "transaction learnt")
        status, body, _ = await api.post("/api/v1/chargers/CP1/pause", {"transaction_id": tx})
        assert status == 200 and body["state"] == "paused" and body["transaction_id"] == str(tx)
        assert cp.limits()[-1] == ("TxProfile", 1, 0.0)
        status, body, _ = await api.post("/api/v1/chargers/CP1/resume", {"evse": 1})
        assert status == 200 and body["state"] == "released"
        assert cp.of("ClearChargingProfile") == [{"id": BASE + 10}]
        status, view, _ = await api.get("/api/v1/chargers/CP1/control")
        assert status == 200 and view["transactions"] == [{"transaction_id": str(tx), "evse": 1}]
        assert view["evses"] == [] and view["derating"] == "normal"
        await api.post("/api/v1/chargers/CP1/pause", {"evse": 2})
        view = (await api.get("/api/v1/chargers/CP1/control"))[1]
        assert view["paused_evses"] == [2] and view["evses"][0]["limit_a"] == 0.0
        await api.post("/api/v1/chargers/CP1/resume", {"evse": 2})
        # {} (and an empty body) is the whole charger: EVSE 0, which pauses every EVSE
        status, body, _ = await api.post("/api/v1/chargers/CP1/pause", {})
        assert status == 200 and body["evse"] == 0 and body["state"] == "paused"
        assert ("TxDefaultProfile", 0, 0.0) in cp.limits() and gw.control.want("CP1", 1).limit == 0.0
        status, body, _ = await api.post("/api/v1/chargers/CP1/resume", None)
        assert status == 200 and body["evse"] == 0 and body["state"] == "released"
        assert gw.control.want("CP1", 1).limit is None and gw.control.view("CP1")["paused_evses"] == []
        # an operator limit, and the site limit at run time (the same operator code as MQTT's)
        status, body, _ = await api.post("/api/v1/chargers/CP1/limit", {"evse": 1, "limit_a": 10})
        assert status == 200 and body["state"] == "limited" and body["limit_a"] == 10.0
        assert cp.limits()[-1] == ("TxProfile", 1, 10.0)
        status, body, _ = await api.post("/api/v1/chargers/CP1/limit", {"evse": 1, "limit_a": None})
        assert status == 200 and body["state"] == "released"
        assert (await api.post("/api/v1/chargers/CP1/limit", {"evse": 1, "limit_a": "x"}))[0] == 400
        assert (await api.post("/api/v1/chargers/CP1/limit", {"evse": 1}))[0] == 400
        assert (await api.post("/api/v1/chargers/NOPE/limit", {"limit_a": 6}))[0] == 404
        status, body, _ = await api.post("/api/v1/site/limit", {"limit_a": 8})
        assert status == 200 and body == {"limit_a": 8.0, "source": "operator"}
        await until(lambda: cp.limits()[-1] == ("TxProfile", 1, 8.0), STEP, "the site limit applied")
        status, body, _ = await api.post("/api/v1/site/limit", {"limit_a": None})
        assert status == 200 and body["limit_a"] is None and gw.control.site_limit() is None
        assert (await api.post("/api/v1/site/limit", [8]))[0] == 400
        assert (await api.post("/api/v1/chargers/CP1/pause", {"evse": "x"}))[0] == 400
        assert (await api.post("/api/v1/chargers/CP1/pause", [1]))[0] == 400
        assert (await api.post("/api/v1/chargers/CP1/pause", {"transaction_id": 5}))[0] == 404
        assert (await api.post("/api/v1/chargers/NOPE/resume", {"evse": 1}))[0] == 404
    async with inproc(tmp_path / "off", control={"pause_enabled": False}) as gw, api_client(gw.api_url) as api, \
            Connected(gw.url("CP1"), "ocpp1.6", "CP1"):
        status, body, _ = await api.post("/api/v1/chargers/CP1/pause", {"evse": 1})
        assert status == 409 and body["error"] == "disabled"
        assert (await api.post("/api/v1/site/limit", {"limit_a": 8}))[0] == 409
        assert (await api.post("/api/v1/chargers/CP1/limit", {"limit_a": 8}))[0] == 409


def _sinks(gw: Any) -> list[Any]:
    return [sink for o in gw.hub.observers for sink in getattr(o, "sinks", ())]


class _Commander:
    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_pause_and_resume_through_mqtt_and_changes_published(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = {"mqtt": {"url": mosquitto.url, "topic_prefix": "ctl"}, "site_id": "s1",
              "auth": {"unknown_id_tags": "accept"}}
    root = "ctl/s1/chargers/CP2"
    sub = Subscriber(mosquitto.port, [f"{root}/#"])
    commander = _Commander(mosquitto.port)
    try:
        async with inproc(tmp_path, **config) as gw:
            await until(lambda: any(getattr(s, "connected", False) for s in _sinks(gw)), STEP, "MQTT connected")
            async with Connected(gw.url("CP2"), "ocpp2.0.1", "CP2") as cp:
                await cp.start_tx(1, "m-1")
                await until(lambda: gw.control.view("CP2")["transactions"], STEP, "transaction learnt")
                await asyncio.to_thread(commander.send, f"{root}/cmd/Pause", {"evse": 1})
                result = await asyncio.to_thread(sub.last, f"{root}/cmd/Pause/result", STEP)
                assert result["status"] == "ok" and result["response"]["state"] == "paused"
                assert cp.limits()[-1] == ("TxProfile", 1, 0.0)
                await asyncio.to_thread(commander.send, f"{root}/cmd/Resume", {"transaction_id": "m-1"})
                result = await asyncio.to_thread(sub.last, f"{root}/cmd/Resume/result", STEP)
                assert result["status"] == "ok" and result["response"]["state"] == "released"
                assert cp.of("ClearChargingProfile") == [{"charging_profile_id": BASE + 10}]
                await asyncio.to_thread(commander.send, f"{root}/cmd/Pause", {"transaction_id": "nope"})
                await until(lambda: len(sub.json(f"{root}/cmd/Pause/result")) == 2, STEP, "error result")
                assert sub.json(f"{root}/cmd/Pause/result")[-1]["error"]["code"] == "unknown_transaction"
                # {} pauses and resumes the whole charger (EVSE 0)
                await asyncio.to_thread(commander.send, f"{root}/cmd/Pause", {})
                await until(lambda: len(sub.json(f"{root}/cmd/Pause/result")) == 3, STEP, "whole-charger pause")
                whole = sub.json(f"{root}/cmd/Pause/result")[-1]
                assert whole["status"] == "ok" and whole["response"]["evse"] == 0
                assert whole["response"]["state"] == "paused" and gw.control.want("CP2", 1).limit == 0.0
                await asyncio.to_thread(commander.send, f"{root}/cmd/Resume", {})
                await until(lambda: len(sub.json(f"{root}/cmd/Resume/result")) == 2, STEP, "whole-charger resume")
                assert sub.json(f"{root}/cmd/Resume/result")[-1]["response"]["state"] == "released"
                assert gw.control.want("CP2", 1).limit is None
                await until(lambda: len(sub.json(f"{root}/control")) >= 2, STEP, "control changes published")
                changes = sub.json(f"{root}/control")
                assert [(c["state"], c["reason"], c["limit_a"]) for c in changes[:2]] == [
                    ("paused", "operator", 0.0), ("released", None, None)]
                assert all(c["evse"] == 1 and c["transaction_id"] == "m-1" for c in changes[:2])
                # the retained latest per EVSE follows each change's message on the same connection
                await until(lambda: len(sub.on(f"{root}/evse/1/control")) >= 2, STEP, "retained control published")
                await until(lambda: json.loads(sub.on(f"{root}/evse/1/control")[-1].payload)["state"] == "released",
                            STEP, "the latest retained control is the release")
                assert all(m.retain is False for m in sub.on(f"{root}/evse/1/control"))  # live: not from the store
    finally:
        commander.close()
        sub.close()


def test_changes_are_encoded_for_influxdb() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    paused = ControlChange(charger_id="CP 1", evse=1, transaction_id="42", state="paused", limit_a=0.0,
                           reason="temperature", mechanism="profile", status="Accepted", ts=ts, temperature=61.5)
    released = ControlChange(charger_id="CP 1", evse=1, transaction_id="42", state="released", limit_a=None,
                             reason="", mechanism="profile", status="Accepted", ts=ts)
    (line,) = encode(paused, "site")
    assert line.startswith("control,") and r"charger=CP\ 1" in line and "reason=temperature" in line
    assert "limit_a=0.0" in line and "temperature=61.5" in line and 'status="Accepted"' in line
    (line,) = encode(released, "site")
    assert "limit_a" not in line and "state=released" in line and "reason=none" in line


async def test_derating_changes_reach_influxdb(tmp_path: Path, influx: Any) -> None:
    db = "control_test"
    influx.create_db(db)
    config = {"influx": {"url": influx.url, "api": "v1", "database": db, "flush_interval": 0.1,
                         "retry_min": 0.2, "retry_max": 0.5},
              "site_id": "s1", "auth": {"unknown_id_tags": "accept"},
              "derating": {"enabled": True, "reduce_above": 50.0, "pause_above": 60.0, "hysteresis": 5.0,
                           "reduced_current_a": 10.0}}
    def evse1() -> list[dict[str, Any]]:
        rows = [r for r in influx.rows(db, "SELECT * FROM control") if r.get("evse") == "1"]
        return rows if len(rows) >= 3 else []

    async with inproc(tmp_path, **config) as gw, Connected(gw.url("HOT"), "ocpp1.6", "HOT") as cp:
        tx = await cp.start_tx(1)
        for t in (51.0, 61.0, 40.0):
            await cp.temperature(t)
            await gw.control.settled(STEP)
        rows = await asyncio.to_thread(wait_for, evse1, STEP, "three control points for EVSE 1")
    states = [(r["state"], r["reason"], r.get("limit_a")) for r in sorted(rows, key=lambda r: r["time"])]
    assert states == [("limited", "temperature", 10.0), ("paused", "temperature", 0.0), ("released", "none", None)]
    assert {r["transaction_id"] for r in rows} == {str(tx)} and rows[0]["charger"] == "HOT"
