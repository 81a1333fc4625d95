"""A schema-valid timestamp that is outside years 1-9999 once in UTC (issue 16): the stop is answered
and reaches the transaction log (REST API), MQTT and InfluxDB, clamped and flagged; nothing raises.
The real gateway in this test's loop, a real Mosquitto and a real InfluxDB 1.x."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.api.helpers import inproc, until
from tests.e2e.peers import charger
from tests.telemetry.services import Influx, Mosquitto, Subscriber
from tests.telemetry.test_e2e import db_name, telemetry_config

pytestmark = pytest.mark.timeout(60)

INFLUX_MIN, INFLUX_MAX = -9_223_372_036_854_775_806, 9_223_372_036_854_775_806


@pytest.mark.parametrize("stamp,logged,year", [
    ("0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00+00:00", 1),
    ("9999-12-31T23:30:00-01:00", "9999-12-31T23:59:59.999999+00:00", 9999),
])
async def test_a_stop_at_an_out_of_range_time_reaches_the_log_and_telemetry(
        tmp_path: Path, mosquitto: Mosquitto, influx: Influx, stamp: str, logged: str, year: int) -> None:
    db = db_name()
    influx.create_db(db)
    sub = Subscriber(mosquitto.port, ["ocpp/clamp/#"])
    try:
        config = telemetry_config(mosquitto, {"url": influx.url, "api": "v1", "database": db})
        async with inproc(tmp_path, site_id="clamp", **config) as gw:
            await until(lambda: sub.on("ocpp/clamp/gateway/state"), 10, "subscribed, gateway online")
            async with charger(gw.url("CLAMP"), "1.6", "CLAMP") as cp:
                start = await cp.raw_call("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1000,
                                                               "timestamp": "2025-03-01T10:00:00Z"})
                tx = start["transactionId"]
                answer = await cp.raw_call("StopTransaction", {
                    "transactionId": tx, "meterStop": 2500, "timestamp": stamp, "reason": "Local",
                    "transactionData": [{"timestamp": stamp, "sampledValue": [{"value": "2500"}]}]})
                assert answer["idTagInfo"]["status"] == "Accepted" if "idTagInfo" in answer else answer == {}
            await until(lambda: gw.txlog.events >= 2, what="start and stop observed")
            await gw.txlog.flush()
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.api_token}"}) as http:
                async with http.get(f"{gw.api_url}/api/v1/transactions?charger=CLAMP") as resp:
                    assert resp.status == 200
                    rows = (await resp.json())["transactions"]
            assert len(rows) == 1 and rows[0]["transaction_id"] == str(tx)
            assert rows[0]["ended_at"] == logged and rows[0]["energy_wh"] == 1500.0 and rows[0]["ts_clamped"] is True
            assert gw.hub.store is not None
            # MQTT: the ended event, at the clamped time
            topic = "ocpp/clamp/chargers/CLAMP/transactions"
            await until(lambda: len(sub.json(topic)) >= 2, 10, "transaction events")
            events = sub.json(topic)
            assert events[-1]["event"] == "ended" and events[-1]["ts"].startswith(f"{year:04d}-")
            # InfluxDB: the ended event, flagged, at InfluxDB's own bound
            def ended() -> list[dict]:
                return [r for r in influx.rows(db, 'SELECT * FROM "transaction"') if r["event"] == "ended"]

            await until(ended, 10, "ended point")
            points = ended()
            assert points[0]["ts_clamped"] is True and points[0]["energy_wh"] == 1500.0
            assert points[0]["time"] == (INFLUX_MIN if year == 1 else INFLUX_MAX)
            await until(lambda: influx.rows(db, "SELECT * FROM meter_value"), 10, "transactionData point")
            meter = influx.rows(db, "SELECT * FROM meter_value")
            assert meter[0]["value"] == 2500.0 and meter[0]["time"] == points[0]["time"]
            assert gw.hub.observers and not [o for o in gw.hub.observers if getattr(o, "failures", 0)]
    finally:
        sub.close()
