"""The sinks in-process against real services: TLS and passwords, the spool across a gateway restart,
bounds, deadband, Home Assistant removal, and InfluxDB refusing a batch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.influx import InfluxSink
from adapters.mqtt import MqttSink
from adapters.spool import Spool
from gateway.config import InfluxSettings, MqttSettings
from gateway.telemetry.records import (
    ChargerForgotten, ChargerState, ConnectorStatus, EnvironmentReading, MeterReading, MeterSample,
)
from tests.harness import free_port
from tests.telemetry.services import (
    _RUN_AS, INFLUXD, MOSQUITTO, Influx, Mosquitto, Subscriber, need, shipped_broker_settings, wait_for,
)

pytestmark = pytest.mark.timeout(60)
NOW = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)


def state(cid: str, connected: bool = True) -> ChargerState:
    return ChargerState(charger_id=cid, connected=connected, upstream="standalone", protocol="ocpp1.6", ts=NOW)


def meter(cid: str, value: float, measurand: str = "Energy.Active.Import.Register", unit: str = "Wh",
          ts: datetime = NOW) -> MeterReading:
    return MeterReading(charger_id=cid, evse=1, connector=1, ts=ts, transaction_id=None, source="MeterValues",
                        samples=(MeterSample(measurand, value, unit),))


async def until(condition: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    return await asyncio.to_thread(wait_for, condition, timeout, what)


# -- TLS and username/password --------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """Mosquitto with a TLS listener (certificate from a CA made here) and a plain one, both
    requiring a password."""
    need(MOSQUITTO, "mosquitto")
    need("mosquitto_passwd", "mosquitto")
    need("openssl", "openssl")
    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "gw-user", "pa:ss@word"], check=True, capture_output=True, timeout=10)
    plain, tls = free_port(), free_port()
    conf = d / "tls.conf"
    conf.write_text("\n".join([
        "per_listener_settings false", "allow_anonymous false", f"password_file {d / 'passwd'}",
        f"listener {plain} 127.0.0.1",
        f"listener {tls} 127.0.0.1", f"cafile {d / 'ca.pem'}", f"certfile {d / 'server.pem'}",
        f"keyfile {d / 'server.key'}", *_RUN_AS, ""]))
    broker = Mosquitto(d / "broker")
    broker.conf, broker.port = conf, plain
    broker.start()
    yield broker, tls, d / "ca.pem"
    broker.stop()


async def test_mqtts_with_username_and_password(tls_broker: Any, tmp_path: Path) -> None:
    broker, tls_port, ca = tls_broker
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    import threading

    # the independent subscriber logs in on the plain listener with the same credentials
    got: list[Any] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.username_pw_set("gw-user", "pa:ss@word")
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe("ocpp/tls/#", qos=1), ready.set())
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.retain))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert ready.wait(5)
        url = f"mqtts://gw-user:pa%3Ass%40word@127.0.0.1:{tls_port}"
        cfg = MqttSettings(url=url, ca_file=str(ca), topic_prefix="ocpp")
        async with MqttSink(cfg, str(tmp_path / "data"), "tls") as sink:
            sink.offer(state("CP1"))
            await until(lambda: any(t == "ocpp/tls/chargers/CP1/state" for t, _, _ in got), 10, "state over TLS")
            assert ("ocpp/tls/gateway/state", b"online") in [(t, p) for t, p, _ in got]
        # a clean stop: gateway offline, and the chargers it had are no longer connected through it
        await until(lambda: ("ocpp/tls/gateway/state", b"offline") in [(t, p) for t, p, _ in got], 5, "offline")
        states = [json.loads(p) for t, p, _ in got if t == "ocpp/tls/chargers/CP1/state"]
        assert [s["connected"] for s in states] == [True, False]
        # a wrong password is refused: nothing is delivered, everything is spooled
        bad = MqttSettings(url=f"mqtts://gw-user:wrong@127.0.0.1:{tls_port}", ca_file=str(ca), topic_prefix="ocpp")
        async with MqttSink(bad, str(tmp_path / "data2"), "tls") as sink:
            sink.offer(state("CP2"))
            await until(lambda: sink.spool.count == 2, 5, "spooled while refused")  # its state and availability
            assert not sink.connected
    finally:
        client.disconnect()
        client.loop_stop()


async def test_shipped_broker_config_gives_the_sink_a_large_window(tmp_path: Path) -> None:
    """docker/mosquitto.conf (its listener and storage swapped for a test port and directory) runs
    in a real Mosquitto, which then announces a Receive Maximum that lets the sink keep a whole
    batch of QoS 1 messages in flight (a stock Mosquitto: 20, of which the sink uses 16)."""
    need(MOSQUITTO, "mosquitto")
    settings = shipped_broker_settings()
    assert "max_inflight_messages 1000" in settings
    for extra, window in ((settings, 500), ((), 16)):
        broker = Mosquitto(tmp_path / f"m{window}", extra=extra).start()
        try:
            cfg = MqttSettings(url=broker.url, topic_prefix="ocpp")
            async with MqttSink(cfg, str(tmp_path / f"data{window}"), "w") as sink:
                await until(lambda: sink.connected, 10, "connected")
                assert sink.lane is not None and sink.lane.limit == window
                for i in range(2000):  # a burst: all of it arrives, at QoS 1
                    sink.offer(meter("CP1", float(i)))
                await until(lambda: sink.delivered >= 2 * 2000 and not sink.lane.window, 20, "burst acknowledged")
                assert sink.dropped == 0 and sink.refused == 0
        finally:
            broker.stop()


# -- spool ----------------------------------------------------------------------------------------


async def test_spool_keeps_order_and_its_bound(tmp_path: Path) -> None:
    spool = await Spool(tmp_path / "s.sqlite3", max_items=5).open()
    await spool.append([b"1", b"2", b"3"])
    await spool.append([b"4", b"5", b"6", b"7", b"8"])
    assert spool.count == 5 and spool.dropped == 3  # the oldest went
    rows = await spool.peek(10)
    assert [b for _, b in rows] == [b"4", b"5", b"6", b"7", b"8"]
    await spool.remove_through(rows[1][0])
    assert [b for _, b in await spool.peek(10)] == [b"6", b"7", b"8"]
    await spool.close()
    again = await Spool(tmp_path / "s.sqlite3", max_items=5).open()  # it survives a restart
    assert again.count == 3
    await again.close()


async def test_offer_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    cfg = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", queue_size=10)
    sink = MqttSink(cfg, str(tmp_path), "s")  # not started: nothing drains the queue
    started = time.perf_counter()
    for i in range(1000):
        sink.offer(meter("CP", float(i)))
    assert time.perf_counter() - started < 0.5
    assert sink.queue.qsize() == 10 and sink.dropped == 990


async def test_queue_bound_counts_records_not_hand_offs(tmp_path: Path) -> None:
    """The observer hands over many records at once; queue_size still bounds records."""
    cfg = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", queue_size=10)
    sink = MqttSink(cfg, str(tmp_path), "s")  # not started
    sink.offer_all([meter("CP", float(i)) for i in range(4)])
    sink.offer_all([meter("CP", float(i)) for i in range(4)])
    assert sink.queue.qsize() == 8 and sink.dropped == 0
    sink.offer_all([meter("CP", float(i)) for i in range(4)])  # room left: taken whole (12 queued)
    sink.offer_all([meter("CP", float(i)) for i in range(3)])  # at the bound: dropped, counted per record
    assert sink.queue.qsize() == 12 and sink.dropped == 3
    taken = sink._take_nowait(1)  # one entry: the first hand-off's messages, whole
    assert len(taken) == len(sink.encode(meter("CP", 0.0))) * 4 and sink.queue.qsize() == 8


async def test_mqtt_spool_survives_a_gateway_restart(tmp_path: Path) -> None:
    """Broker away: the sink spools to disk; the gateway stops; it starts again with the broker
    back, and the spooled messages arrive first, in order."""
    need(MOSQUITTO, "mosquitto")
    broker = Mosquitto(tmp_path / "broker")  # configured, not started yet
    data = str(tmp_path / "data")
    cfg = MqttSettings(url=broker.url, reconnect_min=1.0, reconnect_max=1.0)
    async with MqttSink(cfg, data, "r") as sink:
        for i in range(25):
            sink.offer(meter("CP", float(i)))
        await until(lambda: sink.spool.count >= 25 * 2, 5, "spooled")  # .../meter and the retained per-measurand
    broker.start()
    sub = Subscriber(broker.port, ["ocpp/r/chargers/CP/evse/1/meter"])
    try:
        async with MqttSink(cfg, data, "r") as sink:
            sink.offer(meter("CP", 25.0))
            await until(lambda: len(sub.on("ocpp/r/chargers/CP/evse/1/meter")) >= 26, 10, "26 messages")
            assert sink.spool.count == 0
        values = [json.loads(m.payload)["samples"][0]["value"] for m in sub.on("ocpp/r/chargers/CP/evse/1/meter")]
        assert values == [float(i) for i in range(26)]
    finally:
        sub.close()
        broker.stop()


# -- retained topics: deadband, minimum interval; Home Assistant removal --------------------------------


async def test_deadband_and_minimum_interval_thin_only_the_retained_topics(tmp_path: Path) -> None:
    cfg = MqttSettings(url="mqtt://127.0.0.1:1", retained_deadband=10.0, retained_min_interval=0.0)
    sink = MqttSink(cfg, str(tmp_path), "s")
    topic = "ocpp/s/chargers/CP/evse/1/meter/Power.Active.Import"
    published = []
    for value in (1000.0, 1005.0, 1009.0, 1011.0, 1012.0, 990.0):
        msgs = sink.encode(meter("CP", value, "Power.Active.Import", "W"))
        assert any(t == "ocpp/s/chargers/CP/evse/1/meter" for t, _, _ in msgs)  # never thinned
        published += [json.loads(body)["value"] for t, body, _ in msgs if t == topic]
    assert published == [1000.0, 1011.0, 990.0]
    cfg2 = MqttSettings(url="mqtt://127.0.0.1:1", retained_min_interval=3600.0)
    sink2 = MqttSink(cfg2, str(tmp_path), "s")
    counts = [len([t for t, _, retain in sink2.encode(meter("CP", v, "Voltage", "V")) if retain]) for v in (230.0, 240.0)]
    assert counts == [1, 0]


async def test_home_assistant_discovery_and_removal(tmp_path: Path) -> None:
    cfg = MqttSettings(url="mqtt://127.0.0.1:1", ha_discovery=True)
    sink = MqttSink(cfg, str(tmp_path), "s")
    out = sink.encode(state("CP 1"))
    out += sink.encode(ConnectorStatus(charger_id="CP 1", evse=1, connector=1, status="Charging", error_code="NoError",
                                       ts=NOW))
    out += sink.encode(meter("CP 1", 7000.0, "Power.Active.Import", "W"))
    out += sink.encode(meter("CP 1", 80.0, "SoC", "Percent"))
    out += sink.encode(EnvironmentReading(charger_id="CP 1", name="humidity", value=40.0, unit="RH", ts=NOW,
                                          source="NotifyEvent"))
    configs = {t: json.loads(body) for t, body, _ in out if t.startswith("homeassistant/")}
    node = "ocppgw_s_CP_201"
    assert set(configs) == {f"homeassistant/binary_sensor/{node}/connected/config",
                            f"homeassistant/sensor/{node}/evse1_status/config",
                            f"homeassistant/sensor/{node}/evse1_power_active_import/config",
                            f"homeassistant/sensor/{node}/evse1_soc/config",
                            f"homeassistant/sensor/{node}/env_humidity/config",
                            # controls (tests/telemetry/test_discovery.py checks them against the schema)
                            f"homeassistant/button/{node}/reset/config",
                            f"homeassistant/select/{node}/availability/config",
                            f"homeassistant/switch/{node}/evse0_pause/config",
                            f"homeassistant/number/{node}/evse0_limit/config",
                            f"homeassistant/switch/{node}/evse1_pause/config",
                            f"homeassistant/number/{node}/evse1_limit/config",
                            f"homeassistant/button/{node}/evse1_unlock/config"}
    soc = configs[f"homeassistant/sensor/{node}/evse1_soc/config"]
    assert (soc["device_class"], soc["unit_of_measurement"], soc["state_class"]) == ("battery", "%", "measurement")
    hum = configs[f"homeassistant/sensor/{node}/env_humidity/config"]
    assert (hum["device_class"], hum["unit_of_measurement"]) == ("humidity", "%")
    assert all(c["device"]["identifiers"] == [node] and c["unique_id"].startswith(node) for c in configs.values())
    retained = {t for t, _, retain in out if retain}
    gone = sink.encode(ChargerForgotten(charger_id="CP 1", ts=NOW))
    assert {t for t, _, _ in gone} == retained  # every retained topic and every config, cleared
    assert all(body == b"" and retain for _, body, retain in gone)


# -- InfluxDB --------------------------------------------------------------------------------------


async def test_influx_drops_a_refused_batch_and_carries_on(influx: Influx, tmp_path: Path) -> None:
    """A field-type conflict (someone wrote `value` as an integer first) is refused with 400 by
    InfluxDB: that batch is dropped and logged, the next ones land."""
    db = "conflict" + str(free_port())
    influx.create_db(db)
    import urllib.request

    req = urllib.request.Request(f"{influx.url}/write?db={db}", data=b"meter_value,charger=X value=1i 1740823200000000000", method="POST")
    urllib.request.urlopen(req, timeout=5).close()
    cfg = InfluxSettings(url=influx.url, api="v1", database=db, flush_interval=0.05, batch_size=1)
    async with InfluxSink(cfg, str(tmp_path), "s") as sink:
        sink.offer(meter("CP", 5.0))
        sink.offer(EnvironmentReading(charger_id="CP", name="temperature", value=21.0, unit="Celsius", ts=NOW,
                                      source="MeterValues"))
        await until(lambda: influx.rows(db, "SELECT * FROM environment"), 10, "the next batch")
        assert sink.rejected == 1 and sink.spool.count == 0


async def test_influx_v1_with_username_and_password(tmp_path: Path) -> None:
    """InfluxDB 1.x with authentication on: a wrong password is retried (spooled, nothing lost);
    the right one (HTTP Basic) gets the points in."""
    need(INFLUXD, "influxdb")
    server = Influx(tmp_path / "auth-influx", auth=True).start()
    try:
        server.create_admin("admin", "adm1n")
        server.create_db("secured")
        server.q("CREATE USER \"gw\" WITH PASSWORD 'g:w pass'")
        server.q('GRANT WRITE ON "secured" TO "gw"')
        bad = InfluxSettings(url=server.url, api="v1", database="secured", username="gw", password="nope",
                             flush_interval=0.05, retry_min=0.1, retry_max=0.2)
        data = str(tmp_path / "data")
        async with InfluxSink(bad, data, "s") as sink:
            for i in range(5):
                sink.offer(meter("CP", float(i), ts=NOW + timedelta(seconds=i)))
            await until(lambda: sink.spool.count == 5, 10, "spooled while refused (401)")
        assert server.rows("secured", "SELECT * FROM meter_value") == []
        good = InfluxSettings(url=server.url, api="v1", database="secured", username="gw", password="g:w pass",
                              flush_interval=0.05)
        async with InfluxSink(good, data, "s") as sink:  # the same spool: drained first
            sink.offer(meter("CP", 5.0, ts=NOW + timedelta(seconds=5)))
            await until(lambda: len(server.rows("secured", "SELECT * FROM meter_value")) == 6, 10, "6 points")
        assert [r["value"] for r in server.rows("secured", "SELECT * FROM meter_value")] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        server.stop()


async def test_influx_v2_wrong_token_spools_then_drains(influx: Influx, tmp_path: Path) -> None:
    """The v2 path (influxdb-client) against the test /api/v2/write endpoint: a wrong token is
    refused with 401 and retried from the spool; with the right token everything lands, in order."""
    from tests.telemetry.services import V2WriteEndpoint

    bucket = "v2auth" + str(free_port())
    influx.create_db(bucket)
    v2 = V2WriteEndpoint(influx, token="right", org="o", bucket=bucket).start()
    try:
        data = str(tmp_path / "data")
        bad = InfluxSettings(url=v2.url, api="v2", org="o", bucket=bucket, token="wrong", flush_interval=0.05,
                             retry_min=0.1, retry_max=0.2)
        async with InfluxSink(bad, data, "s") as sink:
            for i in range(4):
                sink.offer(meter("CP", float(i), ts=NOW + timedelta(seconds=i)))
            await until(lambda: sink.spool.count == 4, 10, "spooled while refused")
        assert any(r["auth"] == "Token wrong" for r in v2.requests)
        good = InfluxSettings(url=v2.url, api="v2", org="o", bucket=bucket, token="right", flush_interval=0.05)
        async with InfluxSink(good, data, "s") as sink:
            await until(lambda: len(influx.rows(bucket, "SELECT * FROM meter_value")) == 4, 10, "4 points")
            # the spool drops a batch once InfluxDB has answered the write, a moment after the rows are visible
            await until(lambda: sink.spool.count == 0, 10, "spool drained")
        assert [r["value"] for r in influx.rows(bucket, "SELECT * FROM meter_value")] == [0.0, 1.0, 2.0, 3.0]
    finally:
        v2.stop()


async def test_a_damaged_spool_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "telemetry-spool-mqtt.sqlite3"
    path.write_bytes(b"this is not an SQLite database" * 100)
    spool = await Spool(path, max_items=10).open()
    await spool.append([b"x"])
    assert spool.count == 1
    await spool.close()
    assert [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]


async def test_influx_v2_unreachable_spools(tmp_path: Path) -> None:
    cfg = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", api="v2", org="o", bucket="b", token="t",
                         flush_interval=0.05, retry_min=0.1, retry_max=0.2, timeout=2.0)
    async with InfluxSink(cfg, str(tmp_path), "s") as sink:
        for i in range(3):
            sink.offer(meter("CP", float(i), ts=NOW + timedelta(seconds=i)))
        await until(lambda: sink.spool.count == 3, 10, "spooled while unreachable")


async def test_messages_the_broker_never_acknowledged_are_sent_again_after_a_restart(tmp_path: Path) -> None:
    """The broker stops answering (SIGSTOP) while the gateway publishes at QoS 1: what it sent and
    what waited for the window are spooled when the gateway stops, ahead of anything newer, and sent
    again after it starts. The frozen broker is then killed (what it had in its socket buffer is
    gone, as in a crash) and started again; the subscriber, with a persistent session, ends up with
    every value exactly once and in order, the retained topic with the last."""
    import os
    import signal

    need(MOSQUITTO, "mosquitto")
    broker = Mosquitto(tmp_path / "broker").start()
    data = str(tmp_path / "data")
    cfg = MqttSettings(url=broker.url, qos=1, reconnect_min=0.5, reconnect_max=0.5)
    topic, retained = "ocpp/u/chargers/CP/evse/1/meter", "ocpp/u/chargers/CP/evse/1/meter/Energy.Active.Import.Register"
    sub = Subscriber(broker.port, [topic, retained], client_id="u-sub", persistent=True)
    stopped = False
    try:
        async with MqttSink(cfg, data, "u") as sink:
            await until(lambda: sink.connected, 10, "connected")
            for i in range(10):
                sink.offer(meter("CP", float(i)))
            await until(lambda: len(sub.on(topic)) >= 10, 10, "the first 10")
            os.kill(broker.proc.pid, signal.SIGSTOP)
            stopped = True
            for i in range(10, 25):
                sink.offer(meter("CP", float(i)))
            lane = sink.lane
            assert lane is not None
            await until(lambda: len(lane.window) + len(lane.backlog) >= 30, 10, "30 messages handed over")
            assert len(lane.window) <= 20  # never more than the broker's Receive Maximum
        assert sink.spool.count == 30  # none acknowledged: all spooled, none lost
        broker.proc.kill()  # SIGKILL works on a stopped process
        broker.proc.wait(10)
        stopped = False
        broker.start()  # same port, same persistence file: the subscriber's session is back
        assert await asyncio.to_thread(sub.connected.wait, 10), "subscriber back"
        async with MqttSink(cfg, data, "u") as sink:
            await until(lambda: {json.loads(m.payload)["samples"][0]["value"] for m in sub.on(topic)}
                        >= {float(i) for i in range(25)}, 15, "every value")
            await until(lambda: sink.spool.count == 0, 10, "spool drained")
        values = [json.loads(m.payload)["samples"][0]["value"] for m in sub.on(topic)]
        assert values == [float(i) for i in range(25)]
        assert json.loads(sub.on(retained)[-1].payload)["value"] == 24.0
    finally:
        if stopped:
            os.kill(broker.proc.pid, signal.SIGCONT)
        sub.close()
        broker.stop()


# -- plain paho publishing (fast_publish = false) -----------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_plain_paho_publishing_delivers_in_order_and_spools_while_the_broker_is_away(
        tmp_path: Path, qos: int) -> None:
    """`[mqtt].fast_publish = false`: no packet is framed by the gateway and paho's socket is its
    own; a burst arrives whole and in order, and what is offered while the broker is down is
    spooled and delivered, in order, once it is back."""
    import socket

    need(MOSQUITTO, "mosquitto")
    broker = Mosquitto(tmp_path / "broker").start()
    topic = "ocpp/p/chargers/CP/evse/1/meter"
    sub = Subscriber(broker.port, [topic], client_id=f"p-sub-{qos}", persistent=True)
    cfg = MqttSettings(url=broker.url, qos=qos, fast_publish=False, reconnect_min=0.3, reconnect_max=0.5)
    try:
        async with MqttSink(cfg, str(tmp_path / "data"), "p") as sink:
            assert sink.lane is None
            await until(lambda: sink.connected, 10, "connected")
            assert type(sink.client.socket()) is socket.socket  # paho's socket, not wrapped
            for i in range(300):
                sink.offer(meter("CP", float(i)))
            await until(lambda: len(sub.on(topic)) >= 300, 20, "the burst")
            if qos:  # (the broker keeps no QoS 0 message for a subscriber that is away)
                broker.stop()
                await until(lambda: not sink.connected, 10, "broker gone")
                for i in range(300, 320):
                    sink.offer(meter("CP", float(i)))
                await until(lambda: sink.spool.count >= 20, 10, "spooled while away")
                broker.start()
                assert await asyncio.to_thread(sub.connected.wait, 10), "subscriber back"
                await until(lambda: len(sub.on(topic)) >= 320, 20, "the spool drained")
            assert sink.dropped == 0
        values = [json.loads(m.payload)["samples"][0]["value"] for m in sub.on(topic)]
        # every value, first seen in order (QoS 1 is at least once: the subscriber's unacknowledged
        # messages may come again after the broker's restart)
        assert list(dict.fromkeys(values)) == [float(i) for i in range(320 if qos else 300)]
    finally:
        sub.close()
        broker.stop()


def test_a_record_a_sink_cannot_encode_is_logged_and_the_others_of_its_hand_off_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The records of many exchanges go to a sink in one hand-off: one that its encoder fails on
    (a bug, or a record it never expected) costs that record only."""
    from adapters.telemetry_sink import SpooledSink

    class Picky(SpooledSink[str]):
        name = "picky"

        def encode(self, record: Any) -> list[str]:
            if record == "bad":
                raise ValueError("cannot")
            return [record.upper(), record]

    sink = Picky(Spool(tmp_path / "s.sqlite3", max_items=5), queue_size=10, batch_size=10, flush_interval=0)
    with caplog.at_level("ERROR", logger="gateway.telemetry.picky"):
        sink.offer_all(["a", "bad", "b", "bad"])  # type: ignore[list-item]
    assert sink.queue.get_nowait() == ("A", "a", "B", "b")
    assert sink.queue.qsize() == 0 and sink.dropped == 0
    assert [r.getMessage() for r in caplog.records] == ["picky could not encode 'bad'"] * 2
