"""Every Home Assistant control, end to end: the gateway (in this event loop) announces its
entities on a real Mosquitto; a paho client plays Home Assistant, reading each discovery config and
publishing what Home Assistant would to its command topic (payload_on/off, the number as text,
payload_press, the select's command_template with the option); the `ocpp` package chargers (1.6 and
2.0.1) receive the calls. State topics are checked to say what was done."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import inproc
from tests.control.peers import STEP, Connected, until
from tests.telemetry.services import Mosquitto, Subscriber, wait_for

pytestmark = pytest.mark.timeout(90)


class HomeAssistant:
    """Reads discovery configs and presses the controls as Home Assistant does."""

    def __init__(self, port: int, base: str) -> None:
        self.sub = Subscriber(port, ["homeassistant/#", f"{base}/#"])

    async def config(self, component: str, node: str, key: str) -> dict[str, Any]:
        topic = f"homeassistant/{component}/{node}/{key}/config"
        found = await asyncio.to_thread(wait_for, lambda: [m for m in self.sub.on(topic) if m.payload], STEP, topic)
        return json.loads(found[-1].payload)  # type: ignore[no-any-return]

    def send(self, topic: str, payload: str) -> None:
        self.sub.client.publish(topic, payload.encode(), qos=1).wait_for_publish(5)

    async def press(self, config: dict[str, Any], payload: str) -> dict[str, Any]:
        """Publish to the control's command topic; the gateway's result for it."""
        topic = config["command_topic"]
        before = len(self.sub.json(f"{topic}/result"))
        await asyncio.to_thread(self.send, topic, payload)
        results = await asyncio.to_thread(wait_for, lambda: len(self.sub.json(f"{topic}/result")) > before
                                          and self.sub.json(f"{topic}/result"), STEP, f"result of {topic}")
        return results[-1]  # type: ignore[no-any-return]

    def state(self, config: dict[str, Any]) -> Any:
        """The latest JSON on the control's state topic ({} before the first)."""
        seen = self.sub.json(config["state_topic"])
        return seen[-1] if seen else {}

    def close(self) -> None:
        self.sub.close()


async def test_every_control_round_trips_to_the_chargers(tmp_path: Path, mosquitto: Mosquitto) -> None:
    base = "ocpp/ha"
    config = {"mqtt": {"url": mosquitto.url, "ha_discovery": True, "ha_max_current_a": 32},
              "site_id": "ha", "auth": {"unknown_id_tags": "accept"}, "site": {"min_per_session": 6.0}}
    ha = HomeAssistant(mosquitto.port, base)
    try:
        async with inproc(tmp_path, **config) as gw, \
                Connected(gw.url("CP16"), "ocpp1.6", "CP16") as cp16, \
                Connected(gw.url("CP201"), "ocpp2.0.1", "CP201") as cp201:
            tx16 = await cp16.start_tx(1)
            await cp201.start_tx(1, "t-201")
            await until(lambda: len(gw.control.view("CP16")["transactions"]) == 1
                        and len(gw.control.view("CP201")["transactions"]) == 1, STEP, "transactions learnt")
            for cp, node, version in ((cp16, "ocppgw_ha_CP16", "1.6"), (cp201, "ocppgw_ha_CP201", "2.0.1")):
                evse_key = "connector_id" if version == "1.6" else "evse_id"
                # pause switch: ON pauses (limit 0), OFF resumes (the profile is cleared)
                switch = await ha.config("switch", node, "evse1_pause")
                result = await ha.press(switch, switch["payload_on"])
                assert result["status"] == "ok" and result["response"]["state"] == "paused"
                assert cp.limits()[-1] == ("TxProfile", 1, 0.0)
                await until(lambda switch=switch: ha.state(switch).get("state") == "paused", STEP, "switch state on")
                cleared = len(cp.of("ClearChargingProfile"))
                result = await ha.press(switch, switch["payload_off"])
                assert result["status"] == "ok" and result["response"]["state"] == "released"
                assert len(cp.of("ClearChargingProfile")) == cleared + 1
                await until(lambda switch=switch: ha.state(switch).get("state") == "released", STEP, "switch state off")
                # current-limit number: a number of amperes, "None" lifts it
                number = await ha.config("number", node, "evse1_limit")
                assert (number["min"], number["max"], number["unit_of_measurement"]) == (0, 32, "A")
                result = await ha.press(number, "10.0")
                assert result["status"] == "ok" and result["response"]["limit_a"] == 10.0
                assert cp.limits()[-1] == ("TxProfile", 1, 10.0)
                await until(lambda number=number: ha.state(number).get("limit_a") == 10.0, STEP, "number state")
                result = await ha.press(number, "None")
                assert result["status"] == "ok" and result["response"]["state"] == "released"
                assert (await ha.press(number, "lots"))["error"]["code"] == "FormatViolation"
                # restart button
                reset = await ha.config("button", node, "reset")
                result = await ha.press(reset, reset["payload_press"])
                assert result == {"status": "ok", "response": {"status": "Accepted"}}
                assert cp.of("Reset")[-1] == {"type": "Soft" if version == "1.6" else "OnIdle"}
                # unlock button of EVSE 1
                unlock = await ha.config("button", node, "evse1_unlock")
                result = await ha.press(unlock, unlock["payload_press"])
                assert result["status"] == "ok" and result["response"]["status"] == "Unlocked"
                assert cp.of("UnlockConnector")[-1][evse_key] == 1
                # availability select: the option through the command template
                select = await ha.config("select", node, "availability")
                assert select["options"] == ["Operative", "Inoperative"]
                result = await ha.press(select, select["command_template"].replace("{{ value }}", "Inoperative"))
                assert result["status"] == "ok"
                sent = cp.of("ChangeAvailability")[-1]
                assert sent == ({"connector_id": 0, "type": "Inoperative"} if version == "1.6"
                                else {"operational_status": "Inoperative"})
            # the site limit number (the gateway's device): shared by the two open transactions
            site = await ha.config("number", "ocppgw_ha", "site_limit")
            result = await ha.press(site, "12")
            assert result == {"status": "ok", "response": {"limit_a": 12.0, "source": "operator"}}
            await until(lambda: cp16.limits()[-1] == ("TxProfile", 1, 6.0)
                        and cp201.limits()[-1] == ("TxProfile", 1, 6.0), STEP, "the site limit shared")
            await until(lambda: (ha.state(site).get("limit_a"), ha.state(site).get("source")) == (12.0, "operator"),
                        STEP, "site limit state")
            assert gw.control.site_limit() == 12.0
            result = await ha.press(site, "None")
            assert result["response"]["limit_a"] is None
            await until(lambda: cp16.limits()[-1][2] != 6.0 or len(cp16.of("ClearChargingProfile")) >= 2,
                        STEP, "site limit lifted")
            # the charger leaves: its availability says so, and its connectivity sensor follows the gateway only
            await cp16.stop_tx(tx16)
            power16 = f"{base}/chargers/CP16/availability"
            assert ha.sub.on(power16)[-1].payload == b"online"
        await asyncio.to_thread(wait_for, lambda: ha.sub.on(power16)[-1].payload == b"offline", STEP,
                                "availability offline after the gateway stopped")
    finally:
        ha.close()


async def test_controls_are_refused_when_not_on_the_allow_list(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = {"mqtt": {"url": mosquitto.url, "ha_discovery": True, "command_actions": ["Reset"]},
              "site_id": "ro", "auth": {"unknown_id_tags": "accept"}}
    ha = HomeAssistant(mosquitto.port, "ocpp/ro")
    try:
        async with inproc(tmp_path, **config) as gw, Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
            await cp.start_tx(1)
            switch = await ha.config("switch", "ocppgw_ro_CP1", "evse1_pause")
            assert (await ha.press(switch, "ON"))["error"]["code"] == "SecurityError"
            number = await ha.config("number", "ocppgw_ro_CP1", "evse1_limit")
            assert (await ha.press(number, "8"))["error"]["code"] == "SecurityError"
            site = await ha.config("number", "ocppgw_ro", "site_limit")
            assert (await ha.press(site, "8"))["error"]["code"] == "SecurityError"
            assert cp.limits() == [] and gw.control.site_limit() is None
            reset = await ha.config("button", "ocppgw_ro_CP1", "reset")
            assert (await ha.press(reset, reset["payload_press"]))["status"] == "ok"
    finally:
        ha.close()
