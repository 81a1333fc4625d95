"""One gateway per data_dir, a start that fails cleanly, MQTT client ids that cannot collide, and a
quiet clean stop, all with real gateway processes and a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.harness import GatewayProcess, free_port
from tests.lifecycle.conftest import run_once, wait_for
from tests.telemetry.services import Mosquitto, Subscriber

STATE = "ocpp/testsite/gateway/state"


def _healthy(gw: GatewayProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=2) as r:
        return r.status == 200


def _states(sub: Subscriber) -> list[bytes]:
    return [bytes(m.payload) for m in sub.on(STATE)]


def test_a_second_instance_on_the_same_data_dir_exits_3_and_the_first_never_notices(
        gateways: Callable[..., GatewayProcess], broker: Mosquitto) -> None:
    # api.token = "" makes the configuration warn at every start: the second start must not
    first = gateways({"mqtt": {"url": broker.url}, "api": {"token": ""}}).start()
    assert "configuration: api.token" in first.logs()
    sub = Subscriber(broker.port, [STATE])
    try:
        wait_for(lambda: _states(sub) == [b"online"], what="the first gateway online")
        assert first.proc is not None

        second = run_once(first.config_path)  # the same configuration file, the same data_dir

        lines = (second.stdout + second.stderr).splitlines()
        assert second.returncode == 3, second
        assert lines == [f"cannot start: another gateway (pid {first.proc.pid}) is running with data_dir "
                         f"{first.config['data_dir']}; stop it first, or give this one its own data_dir"]
        time.sleep(2.0)  # a takeover would show within a keepalive or two of paho's reconnect
        assert _states(sub) == [b"online"]  # the state topic never flapped
        assert _healthy(first)
        assert "MQTT: connection lost" not in first.logs() and first.logs().count("MQTT: connected") == 1
    finally:
        sub.close()


def test_a_taken_charger_port_is_one_line_and_exit_4_before_mqtt(
        gateways: Callable[..., GatewayProcess], broker: Mosquitto) -> None:
    """A copy of a running gateway's configuration with its own data_dir: the charger port is taken.
    The copy stops before it connects to the broker: the first one's state never flaps and the
    broker never saw a second client."""
    first = gateways({"mqtt": {"url": broker.url}}, name="first").start()
    sub = Subscriber(broker.port, [STATE])
    try:
        wait_for(lambda: _states(sub) == [b"online"], what="the first gateway online")
        copy = gateways({"mqtt": {"url": broker.url}, "websocket": {"listen": f"127.0.0.1:{first.ws_port}"},
                         "api": {"token": ""}}, name="copy")  # a configuration that warns

        result = run_once(copy.config_path)

        assert result.returncode == 4, result
        assert (result.stdout + result.stderr).splitlines() == [
            f"cannot start: websocket.listen 127.0.0.1:{first.ws_port}: address already in use (another program, or "
            "another gateway, listens there); change [websocket].listen or set OCPPGW_WEBSOCKET__LISTEN=HOST:PORT"]
        time.sleep(1.0)
        assert _states(sub) == [b"online"]
        assert _healthy(first)
        connects = (broker.dir / "mosquitto.log").read_text().count("New client connected")
        assert connects == 2, (broker.dir / "mosquitto.log").read_text()  # the first gateway and the subscriber
    finally:
        sub.close()


def test_two_gateways_of_one_site_get_their_own_mqtt_client_ids(
        gateways: Callable[..., GatewayProcess], broker: Mosquitto) -> None:
    """Same site id, own data_dirs, the second one's API port taken by the first: both run (the
    API is optional), each with the client id of its install, and nobody is knocked off the broker
    (before, both used ocpp-gateway-{site_id} and the state topic flapped every second)."""
    first = gateways({"mqtt": {"url": broker.url}}, name="one").start()
    sub = Subscriber(broker.port, [STATE])
    try:
        second = gateways({"mqtt": {"url": broker.url}, "api": {"listen": first.config["api"]["listen"]}}, name="two")
        second.start()
        time.sleep(3.0)

        ids = []
        for gw in (first, second):
            install = (Path(gw.config["data_dir"]) / "install-id").read_text().strip()
            ids.append(f"ocpp-gateway-testsite-{install}")
            assert f"as ocpp-gateway-testsite-{install} (topics" in gw.logs()
            assert "connection lost" not in gw.logs()
        assert ids[0] != ids[1]
        assert b"offline" not in _states(sub)
        assert "already connected" not in (broker.dir / "mosquitto.log").read_text()
        api = first.config["api"]["listen"]
        error = [line for line in second.logs().splitlines() if "REST API not available" in line]
        assert len(error) == 1 and "ERROR" in error[0], second.logs()
        assert f"api.listen {api}: address already in use" in error[0]
        assert "change [api].listen or set OCPPGW_API__LISTEN=HOST:PORT" in error[0]
        # the id stays with the install across restarts
        assert second.stop() == 0
        second.start()
        assert second.logs().count(f"as {ids[1]} (topics") == 2
    finally:
        sub.close()


def test_a_broker_takeover_is_reported(gateways: Callable[..., GatewayProcess], broker: Mosquitto) -> None:
    """Two gateways configured with the same [mqtt].client_id (MQTT 5): the broker disconnects the
    first with "Session taken over", and its log says what happened and what to change."""
    config = {"mqtt": {"url": broker.url, "client_id": "shared-id"}}
    first = gateways(config, name="one").start()
    wait_for(lambda: "MQTT: connected" in first.logs(), what="the first connected")
    gateways(config, name="two").start()

    line = wait_for(lambda: [x for x in first.logs().splitlines() if "taken over" in x], what="the takeover reported")[0]

    # Mosquitto 2.0 closes the old connection without DISCONNECT 0x8E: the gateway tells by the
    # connections that end right after they were made (a broker that sends 0x8E is named at once)
    assert "ERROR" in line and "'shared-id'" in line and "[mqtt].client_id" in line and "install-id" in line


def test_a_clean_stop_logs_no_warning(gateways: Callable[..., GatewayProcess], broker: Mosquitto) -> None:
    gw = gateways({"mqtt": {"url": broker.url}, "logging": {"level": "INFO"},
                   "api": {"token": "a-token-for-this-test-0123456789"}}).start()
    wait_for(lambda: "MQTT: connected" in gw.logs(), what="connected to the broker")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(20)

    logs = gw.logs()
    assert gw.proc.returncode == 0
    assert "MQTT: disconnected (gateway stopping)" in logs
    assert [line for line in logs.splitlines() if "WARNING" in line or "ERROR" in line] == []  # start and stop
    assert logs.splitlines()[-1].endswith("gateway: stopped")


def test_data_dir_that_cannot_be_used_is_a_configuration_error(tmp_path: Path,
                                                                gateways: Callable[..., GatewayProcess]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    gw = gateways({"data_dir": str(blocker / "data")})

    result = run_once(gw.config_path)

    assert result.returncode == 2, result
    assert "data_dir: cannot use" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["soap", "http"])
def test_every_charger_port_is_required(key: str, gateways: Callable[..., GatewayProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = gateways({key: {"enabled": True, "listen": f"127.0.0.1:{port}"}, "api": {"listen": f"127.0.0.1:{free_port()}"}})

        result = run_once(gw.config_path)

    assert result.returncode == 4
    assert result.stderr.splitlines() == [
        f"cannot start: {key}.listen 127.0.0.1:{port}: address already in use (another program, or another gateway, "
        f"listens there); change [{key}].listen or set OCPPGW_{key.upper()}__LISTEN=HOST:PORT"]


async def test_a_broker_that_says_session_taken_over_is_named_at_once(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """MQTT 5 brokers that send DISCONNECT with reason 0x8E: the first such loss is reported (the
    paho callback's reason code, as paho passes it on)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from adapters.mqtt import MqttSink
    from gateway.config import MqttSettings

    sink = MqttSink(MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"), str(tmp_path), "s", client_id="gw-a")
    sink.connected = True
    reason = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    sink._paho_disconnect(sink.client, None, None, reason, None)
    await asyncio.sleep(0)

    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["MQTT: the broker gave client id 'gw-a' to another connection (session taken over): another "
                      "gateway, or a copy of this data_dir, uses the same id; set [mqtt].client_id, or delete "
                      "data_dir/install-id on the copy so it draws its own"]
    await sink.spool.close()


def test_a_restart_loads_the_compiled_schemas_instead_of_compiling_them(
        gateways: Callable[..., GatewayProcess]) -> None:
    """cache_dir unset: data_dir/cache. The first start compiles and keeps the validators; the
    second compiles none."""
    gw = gateways({"cache_dir": ""})
    ready = re.compile(r"schemas ready after \d+ ms: (\d+) validators, (\d+) from the cache, (\d+) compiled")
    counts = []
    for _ in range(2):
        gw.start()
        found = wait_for(lambda: ready.search(gw.logs().split("gateway: stopped")[-1]), what="schemas ready")
        counts.append(tuple(int(x) for x in found.groups()))
        assert gw.stop() == 0
    (n, cached, compiled), (n2, cached2, compiled2) = counts
    assert n == n2 > 100
    assert cached == 0 and compiled > 100
    assert compiled2 == 0 and cached2 == compiled
    assert len(list((Path(gw.config["data_dir"]) / "cache").glob("validators-*.bin"))) == 1
