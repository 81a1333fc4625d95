"""The variables mirror on MQTT: chargers on the `ocpp` package -> the gateway as a process -> a
real Mosquitto. A retained topic per value (a 2.x name stays one topic level), a set command with
its result reaching the charger and the mirror, credentials refused and never published, Home
Assistant entities for the chosen variables."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import pytest

from tests.harness import GatewayProcess
from tests.telemetry.services import Mosquitto, Subscriber, wait_for
from tests.variables.peers import SECRETS, connected

pytestmark = pytest.mark.timeout(90)
ROOT = "ocpp/testsite/chargers"


async def wait(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    return await asyncio.to_thread(wait_for, condition, timeout, what)


async def test_values_on_mqtt_set_command_and_home_assistant(
        gateway_factory: Callable[..., GatewayProcess], mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, [f"{ROOT}/+/variables/#", f"{ROOT}/+/cmd/#", "homeassistant/#",
                                      "ocpp/testsite/gateway/state"])
    try:
        gw = await asyncio.to_thread(gateway_factory, {
            "mqtt": {"url": mosquitto.url, "reconnect_min": 1.0, "reconnect_max": 1.0, "ha_discovery": True},
            "variables": {"read_delay": 0.3, "report_timeout": 5.0}})
        async with connected(gw.url("Q16"), "ocpp1.6", "Q16") as c16, \
                connected(gw.url("Q201"), "ocpp2.0.1", "Q201") as c201:
            def values(cid: str) -> dict[str, Any]:
                with sub._lock:
                    msgs = [m for m in sub.messages if m.topic.startswith(f"{ROOT}/{cid}/variables/")]
                return {m.topic[len(f"{ROOT}/{cid}/variables/"):]: json.loads(m.payload) for m in msgs}

            await wait(lambda: len(values("Q16")) == 55, "55 retained 1.6 values")
            await wait(lambda: len(values("Q201")) == 411, "411 retained 2.0.1 values")
            v201 = values("Q201")
            # one topic level per value, whatever the name holds
            assert all("/" not in level and "+" not in level and "#" not in level for level in v201)
            level = "TemperatureSensor%5BBody%5D%2FTemperature"
            assert v201[level]["name"] == "TemperatureSensor[Body]/Temperature" and v201[level]["unit"] == "Celsius"
            assert v201["SecurityCtrlr%2FBasicAuthPassword"] == {**v201["SecurityCtrlr%2FBasicAuthPassword"],
                                                                 "value": None, "secret": True}
            assert values("Q16")["AuthorizationKey"]["value"] is None

            # set through MQTT: the result, the charger, the retained value
            sub.client.publish(f"{ROOT}/Q16/cmd/Variables", json.dumps({"values": {"HeartbeatInterval": "45"}}), qos=1)
            result = await asyncio.to_thread(sub.last, f"{ROOT}/Q16/cmd/Variables/result")
            assert result == {"status": "ok", "response": {"results": [{"name": "HeartbeatInterval",
                                                                        "status": "Accepted"}]}}
            assert c16.config["HeartbeatInterval"][0] == "45"
            await wait(lambda: values("Q16")["HeartbeatInterval"]["value"] == "45", "the retained 1.6 value")
            sub.client.publish(f"{ROOT}/Q201/cmd/Variables",
                               json.dumps({"name": "OCPPCommCtrlr/HeartbeatInterval", "value": 75}), qos=1)
            result = await asyncio.to_thread(sub.last, f"{ROOT}/Q201/cmd/Variables/result")
            assert result["response"]["results"] == [{"name": "OCPPCommCtrlr/HeartbeatInterval", "status": "Accepted"}]
            await wait(lambda: values("Q201")["OCPPCommCtrlr%2FHeartbeatInterval"]["value"] == "75",
                       "the retained 2.0.1 value")
            assert [a for a, _ in c201.commands].count("SetVariables") == 1
            # credentials: refused, never sent; bad payloads: an error result
            with sub._lock:
                sub.messages.clear()
            sub.client.publish(f"{ROOT}/Q16/cmd/Variables", json.dumps({"values": {"AuthorizationKey": "00ff"}}), qos=1)
            result = await asyncio.to_thread(sub.last, f"{ROOT}/Q16/cmd/Variables/result")
            assert result["response"]["results"][0]["status"] == "Refused"
            assert ("ChangeConfiguration", {"key": "AuthorizationKey", "value": "00ff"}) not in c16.commands
            with sub._lock:
                sub.messages.clear()
            sub.client.publish(f"{ROOT}/Q16/cmd/Variables", json.dumps({"values": 3}), qos=1)
            result = await asyncio.to_thread(sub.last, f"{ROOT}/Q16/cmd/Variables/result")
            assert result["status"] == "error" and result["error"]["code"] == "FormatViolation"

            # Home Assistant: settable ones as number/select/text, the others as diagnostic sensors
            # retained: what a new subscriber (a new Home Assistant) sees
            sub2 = Subscriber(mosquitto.port, ["homeassistant/#", f"{ROOT}/Q16/variables/#"])
            try:
                await wait(lambda: len([m for m in sub2.messages if "/variables/" in m.topic and m.retain]) == 55,
                           "55 retained values for a new subscriber")
                hb = await wait(lambda: config_of(sub2, "number", "Q16", "var_heartbeatinterval"),
                                "the heartbeat interval as a number")
                assert hb["command_topic"] == f"{ROOT}/Q16/cmd/Variables" and hb["entity_category"] == "config"
                rendered = hb["command_template"].replace("{{ value | string | tojson }}", json.dumps("30"))
                assert json.loads(rendered) == {"values": {"HeartbeatInterval": "30"}}
                temp = await wait(lambda: config_of(sub2, "sensor", "Q201", "var_temperaturesensor_body__temperature"),
                                  "the temperature as a diagnostic sensor")
                assert temp["entity_category"] == "diagnostic" and temp["unit_of_measurement"] == "°C"
                assert temp["state_topic"] == f"{ROOT}/Q201/variables/{level}"
                assert config_of(sub2, "number", "Q201", "var_ocppcommctrlr_heartbeatinterval") is not None
            finally:
                sub2.close()
            with sub._lock:
                blobs = [m.payload for m in sub.messages]
            for secret in SECRETS:
                assert not any(secret.encode() in b for b in blobs)
        assert not any(s in gw.logs() for s in SECRETS)
    finally:
        sub.close()


def config_of(sub: Subscriber, component: str, cid: str, key: str) -> Any:
    found = [json.loads(m.payload) for m in sub.on(f"homeassistant/{component}/ocppgw_testsite_{cid}/{key}/config")
             if m.payload]
    return found[-1] if found else None
