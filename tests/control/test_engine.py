"""Local control against chargers built on the `ocpp` package, through the real gateway in this
test's event loop, driven through the engine's Python API (gw.control): pause and resume, the
fallback for chargers that refuse profiles, three chargers sharing a site limit, derating by
temperature, all of it again with the cloud CSMS away, and a CSMS profile left untouched."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from ocpp import v16

from gateway.control.engine import ControlChange, ControlError
from tests.control.peers import STEP, Connected, until
from tests.e2e.test_wire import inproc
from tests.offline.peers import CountingCsms

BASE = 900_000_000
AUTH = {"unknown_id_tags": "accept"}
RULE = {"enabled": True, "reduce_above": 50.0, "pause_above": 60.0, "hysteresis": 5.0, "reduced_current_a": 10.0}

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, csms: CountingCsms | None = None, connect_timeout: float = 1.0,
                  **config: Any) -> AsyncIterator[Any]:
    if csms is not None:
        config["upstream"] = {"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.5, "connect_timeout": connect_timeout,
                              "call_timeout": 2.0}
    async with inproc(tmp_path, auth=AUTH, **config) as gw:
        yield gw


async def settle(gw: Any) -> None:
    await gw.control.settled(STEP)


# -- pause and resume -------------------------------------------------------------------------------


async def test_pause_and_resume_16_transaction_and_idle_evse(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, Connected(gw.url("CP16"), "ocpp1.6", "CP16") as cp:
        tx = await cp.start_tx(1)
        await until(lambda: gw.control.view("CP16")["transactions"], STEP, "transaction learnt")
        result = await gw.control.pause("CP16", {"transaction_id": tx})
        assert result["state"] == "paused" and result["mechanism"] == "profile" and result["status"] == "Accepted"
        set_ = cp.of("SetChargingProfile")[-1]
        prof = set_["cs_charging_profiles"]
        assert set_["connector_id"] == 1
        assert prof["charging_profile_id"] == BASE + 10 and prof["transaction_id"] == tx
        assert prof["charging_profile_purpose"] == "TxProfile" and prof["stack_level"] == 8
        assert prof["charging_schedule"]["charging_schedule_period"][0]["limit"] == 0
        result = await gw.control.resume("CP16", {"transaction_id": tx})
        assert result["state"] == "released"
        assert cp.of("ClearChargingProfile") == [{"id": BASE + 10}]
        # an EVSE without a transaction: TxDefaultProfile, cleared by its own id
        await gw.control.pause("CP16", {"evse": 2})
        assert cp.limits()[-1] == ("TxDefaultProfile", 2, 0.0)
        await gw.control.resume("CP16", {"evse": 2})
        assert cp.of("ClearChargingProfile")[-1] == {"id": BASE + 21}
        with pytest.raises(ControlError) as info:
            await gw.control.pause("CP16", {"transaction_id": 999})
        assert info.value.code == "unknown_transaction"
        with pytest.raises(ControlError):
            await gw.control.pause("NOPE", {"evse": 1})


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
async def test_pause_and_resume_2x(tmp_path: Path, version: str) -> None:
    async with gateway(tmp_path) as gw, Connected(gw.url("CP201"), version, "CP201") as cp:
        assert gw.hub.sessions["CP201"].version.value == version
        await cp.start_tx(1, "tx-a")
        await until(lambda: gw.control.view("CP201")["transactions"], STEP, "transaction learnt")
        result = await gw.control.pause("CP201", {"evse": 1})
        assert result["state"] == "paused" and result["transaction_id"] == "tx-a"
        set_ = cp.of("SetChargingProfile")[-1]
        assert set_["evse_id"] == 1
        prof = set_["charging_profile"]
        assert prof["id"] == BASE + 10 and prof["transaction_id"] == "tx-a"
        assert prof["charging_profile_purpose"] == "TxProfile"
        assert prof["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 0
        await gw.control.resume("CP201", {"evse": 1})
        assert cp.of("ClearChargingProfile") == [{"charging_profile_id": BASE + 10}]


async def test_fallback_when_the_charger_refuses_profiles(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, \
            Connected(gw.url("OLD"), "ocpp1.6", "OLD", refuse_profiles=True) as cp:
        # idle EVSE: Inoperative, and Operative again on resume
        result = await gw.control.pause("OLD", {"evse": 1})
        assert result["mechanism"] == "availability" and result["status"] == "Accepted"
        assert cp.of("ChangeAvailability") == [{"connector_id": 1, "type": "Inoperative"}]
        result = await gw.control.resume("OLD", {"evse": 1})
        assert result["state"] == "released"
        assert cp.of("ChangeAvailability")[-1] == {"connector_id": 1, "type": "Operative"}
        assert cp.of("ClearChargingProfile") == []  # nothing of ours was ever accepted
        # with a transaction: the charger can only schedule it (reported honestly)
        tx = await cp.start_tx(1)
        await until(lambda: gw.control.view("OLD")["transactions"], STEP, "transaction learnt")
        result = await gw.control.pause("OLD", {"transaction_id": tx})
        assert (result["mechanism"], result["status"]) == ("availability", "Scheduled")
        assert cp.of("RemoteStopTransaction") == []  # never stopped: too strong for a pause
    async with gateway(tmp_path / "stop", control={"fallback": "stop"}) as gw, \
            Connected(gw.url("OLD"), "ocpp1.6", "OLD", refuse_profiles=True) as cp:
        tx = await cp.start_tx(1)
        await until(lambda: gw.control.view("OLD")["transactions"], STEP, "transaction learnt")
        result = await gw.control.pause("OLD", {"transaction_id": tx})
        assert result["mechanism"] == "stop" and cp.of("RemoteStopTransaction") == [{"transaction_id": tx}]


async def test_fallback_when_the_charger_answers_not_supported(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, \
            Connected(gw.url("OLD2"), "ocpp2.0.1", "OLD2", refuse_profiles="error") as cp:
        result = await gw.control.pause("OLD2", {"evse": 1})
        assert (result["mechanism"], result["status"]) == ("availability", "Accepted")
        assert cp.of("ChangeAvailability") == [{"operational_status": "Inoperative", "evse": {"id": 1}}]
        await gw.control.resume("OLD2", {"evse": 1})
        assert cp.of("ChangeAvailability")[-1] == {"operational_status": "Operative", "evse": {"id": 1}}
        assert cp.of("ClearChargingProfile") == []


async def test_an_unanswered_profile_is_sent_again(tmp_path: Path) -> None:
    async with gateway(tmp_path, control={"call_timeout": 0.3}) as gw, \
            Connected(gw.url("SLOW"), "ocpp1.6", "SLOW") as cp:
        cp.slow_once = 0.5
        result = await gw.control.pause("SLOW", {"evse": 1})
        assert (result["state"], result["mechanism"], result["status"]) == ("paused", "none", "timeout")
        await until(lambda: gw.control.view("SLOW")["evses"], STEP, "sent again and accepted")
        assert gw.control.view("SLOW")["evses"][0]["status"] == "Accepted"
        assert len(cp.of("SetChargingProfile")) >= 2
        assert cp.of("ChangeAvailability") == []  # no answer is not a refusal: no fallback
        assert [(c.state, c.status) for c in gw.control.changes if c.charger_id == "SLOW"] == [
            ("paused", "timeout"), ("paused", "Accepted")]


async def test_pause_switched_off(tmp_path: Path) -> None:
    async with gateway(tmp_path, control={"pause_enabled": False}) as gw, \
            Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
        with pytest.raises(ControlError) as info:
            await gw.control.pause("CP1", {"evse": 1})
        assert info.value.code == "disabled" and cp.commands == []


# -- the site limit ---------------------------------------------------------------------------------


async def _site_scenario(gw: Any) -> None:
    """Three chargers (1.6, 1.6, 2.0.1) under a 32 A site limit, minimum 6 A, as sessions start and stop."""
    async with Connected(gw.url("S1"), "ocpp1.6", "S1") as a, Connected(gw.url("S2"), "ocpp1.6", "S2") as b, \
            Connected(gw.url("S3"), "ocpp2.0.1", "S3") as c:
        ta = await a.start_tx(1)
        await settle(gw)
        assert a.limits() == [("TxProfile", 1, 32.0)]
        tb = await b.start_tx(1)
        await settle(gw)
        assert a.last_limit() == 16.0 and b.limits() == [("TxProfile", 1, 16.0)]
        await c.start_tx(1, "c-1")
        await settle(gw)
        assert (a.last_limit(), b.last_limit(), c.last_limit()) == (10.6, 10.6, 10.6)
        # a second session on S1 (connector 2): 4 x 8 A
        ta2 = await a.start_tx(2)
        await settle(gw)
        assert sorted(lim for (_, e, lim) in a.limits()[-2:]) == [8.0, 8.0] and b.last_limit() == 8.0
        assert c.last_limit() == 8.0
        await a.stop_tx(ta2)
        await settle(gw)
        assert (a.last_limit(), b.last_limit(), c.last_limit()) == (10.6, 10.6, 10.6)
        await b.stop_tx(tb)
        await settle(gw)
        assert a.last_limit() == 16.0 and c.last_limit() == 16.0
        assert len(b.limits()) == 4  # nothing sent for an ended transaction (its TxProfile ends with it)
        await a.stop_tx(ta)
        await settle(gw)
        assert c.last_limit() == 32.0
        await c.stop_tx("c-1", 1)
        await settle(gw)
        for cp in (a, b, c):
            assert all(v.get("id", v.get("charging_profile_id", BASE)) >= BASE for v in cp.of("ClearChargingProfile"))


async def test_three_chargers_share_the_site_limit(tmp_path: Path) -> None:
    async with gateway(tmp_path, site={"enabled": True, "max_current_a": 32.0, "min_per_session": 6.0}) as gw:
        await _site_scenario(gw)


async def test_sessions_beyond_the_minimum_are_paused(tmp_path: Path) -> None:
    async with gateway(tmp_path, site={"enabled": True, "max_power_w": 2 * 3 * 230 * 7.0}) as gw:
        async with Connected(gw.url("M1"), "ocpp1.6", "M1") as a, Connected(gw.url("M2"), "ocpp1.6", "M2") as b:
            await a.start_tx(1)
            await b.start_tx(1)
            await a.start_tx(2)  # 14 A for three: the newest cannot get 6 A
            await settle(gw)
            assert b.last_limit() == 7.0
            by_evse = {e: lim for (_, e, lim) in a.limits()}
            assert by_evse == {1: 7.0, 2: 0.0}
            paused = [c for c in gw.control.changes if c.charger_id == "M1" and c.evse == 2]
            assert paused[-1].state == "paused" and paused[-1].reason == "site_limit"


# -- temperature derating ---------------------------------------------------------------------------


async def _derating_16(gw: Any) -> None:
    async with Connected(gw.url("HOT16"), "ocpp1.6", "HOT16") as cp:
        tx = await cp.start_tx(1)
        await settle(gw)
        assert cp.limits() == []
        for t in (45.0, 50.0):
            await cp.temperature(t)
        await settle(gw)
        assert cp.limits() == []  # not above 50
        await cp.temperature(50.5)
        await settle(gw)
        assert set(cp.limits()) == {("TxProfile", 1, 10.0), ("TxDefaultProfile", 0, 10.0)}
        await cp.temperature(60.5)
        await settle(gw)
        assert ("TxProfile", 1, 0.0) in cp.limits()[-2:]
        n = len(cp.limits())
        await cp.temperature(55.0)  # still within the pause's hysteresis
        await settle(gw)
        assert len(cp.limits()) == n
        await cp.temperature(54.9)  # below 60 - 5: back to reduced
        await settle(gw)
        assert ("TxProfile", 1, 10.0) in cp.limits()[-2:]
        await cp.temperature(45.0)  # still reduced
        await settle(gw)
        assert cp.of("ClearChargingProfile") == []
        await cp.temperature(44.9)  # released
        await settle(gw)
        assert {c["id"] for c in cp.of("ClearChargingProfile")} == {BASE + 10, BASE + 1}
        states = [(c.state, c.reason, c.limit_a) for c in gw.control.changes if c.charger_id == "HOT16" and c.evse == 1]
        assert states == [("limited", "temperature", 10.0), ("paused", "temperature", 0.0),
                          ("limited", "temperature", 10.0), ("released", "", None)]
        assert all(c.transaction_id == str(tx) for c in gw.control.changes if c.charger_id == "HOT16" and c.evse == 1)


async def _derating_201(gw: Any) -> None:
    async with Connected(gw.url("HOT201"), "ocpp2.0.1", "HOT201") as cp:
        await cp.start_tx(1, "h-1")
        await settle(gw)
        await cp.temperature(51.0)
        await settle(gw)
        assert ("TxProfile", 1, 8.0) in cp.limits()  # this charger's own rule: 8 A above 45
        await cp.temperature(56.0)
        await settle(gw)
        assert cp.limits()[-2:] and ("TxProfile", 1, 0.0) in cp.limits()[-2:]
        await cp.temperature(49.0)  # below 55 - 5 = 50: reduced again
        await settle(gw)
        assert ("TxProfile", 1, 8.0) == next(x for x in reversed(cp.limits()) if x[1] == 1)
        await cp.temperature(39.0)
        await settle(gw)
        assert {c["charging_profile_id"] for c in cp.of("ClearChargingProfile")} == {BASE + 10, BASE + 1}


async def test_derating_from_a_vendor_decoder_and_only_the_named_sensors(tmp_path: Path) -> None:
    rule = {**RULE, "sensors": ["ambient_temperature"]}
    async with gateway(tmp_path, derating=rule) as gw, Connected(gw.url("VEN"), "ocpp1.6", "VEN") as cp:
        await cp.start_tx(1)
        await cp.environment([{"name": "cabinet_temperature", "value": 158, "unit": "Fahrenheit"}])  # 70 °C: not named
        await cp.temperature(70.0)  # the MeterValues "temperature": not named either
        await settle(gw)
        assert cp.limits() == []
        await cp.environment([{"name": "ambient_temperature", "value": 131, "unit": "Fahrenheit"},  # 55 °C
                              {"name": "humidity", "value": 99}])
        await settle(gw)
        assert ("TxProfile", 1, 10.0) in cp.limits()
        assert gw.control.view("VEN")["temperature"] == pytest.approx(55.0)


async def test_a_charger_that_takes_power_limits_gets_them_in_watts(tmp_path: Path) -> None:
    """`[chargers.ID].rate_unit = "W"`: the same shares, sent as power (A x 230 V x 3 phases, to the
    watt) with chargingRateUnit W, to a 1.6 and a 2.0.1 charger; an amp charger beside them keeps A."""
    chargers = {"PW16": {"rate_unit": "W"}, "PW201": {"rate_unit": "W"}}
    async with gateway(tmp_path, site={"enabled": True, "max_current_a": 32.0}, chargers=chargers) as gw, \
            Connected(gw.url("PW16"), "ocpp1.6", "PW16") as a, Connected(gw.url("PW201"), "ocpp2.0.1", "PW201") as b, \
            Connected(gw.url("AMP"), "ocpp1.6", "AMP") as c:
        await a.start_tx(1)
        await settle(gw)
        assert a.limits() == [("TxProfile", 1, 32.0 * 230 * 3)]
        await b.start_tx(1, "w-1")
        await c.start_tx(1)
        await settle(gw)
        # 32 A / 3 = 10.6 A each (rounded down to 0.1 A): 7314 W at 230 V on 3 phases
        assert c.last_limit() == 10.6 and a.last_limit() == b.last_limit() == 7314.0
        for cp in (a, b):
            prof = cp.of("SetChargingProfile")[-1]
            sched = (prof.get("cs_charging_profiles") or prof.get("charging_profile"))["charging_schedule"]
            sched = sched[0] if isinstance(sched, list) else sched
            assert sched["charging_rate_unit"] == "W"
        prof = c.of("SetChargingProfile")[-1]["cs_charging_profiles"]["charging_schedule"]
        assert prof["charging_rate_unit"] == "A"


async def test_a_silent_sensor_stops_counting_after_max_age(tmp_path: Path) -> None:
    """A sensor that reported 70 °C and then went silent keeps the charger paused only while its
    reading is younger than max_age; once another sensor reports after that, the silent one is
    dropped and the cooler reading releases the charger."""
    rule = {**RULE, "max_age": 1.0}
    async with gateway(tmp_path, derating=rule) as gw, Connected(gw.url("SIL"), "ocpp1.6", "SIL") as cp:
        await cp.start_tx(1)
        await cp.environment([{"name": "cabinet_temperature", "value": 158, "unit": "Fahrenheit"}])  # 70 °C
        await settle(gw)
        assert ("TxProfile", 1, 0.0) in cp.limits()
        await cp.environment([{"name": "ambient_temperature", "value": 68, "unit": "Fahrenheit"}])  # 20 °C
        await settle(gw)
        assert cp.of("ClearChargingProfile") == [] and gw.control.view("SIL")["temperature"] == pytest.approx(70.0)
        await asyncio.sleep(1.3)  # the cabinet sensor has been silent longer than max_age
        await cp.environment([{"name": "ambient_temperature", "value": 68, "unit": "Fahrenheit"}])
        await settle(gw)
        assert gw.control.view("SIL")["temperature"] == pytest.approx(20.0)
        assert cp.of("ClearChargingProfile")  # released
        states = [c.state for c in gw.control.changes if c.charger_id == "SIL" and c.evse == 1]
        assert states == ["paused", "released"]


DERATING = {"derating": RULE, "chargers": {"HOT201": {"derating": {
    "reduce_above": 45.0, "pause_above": 55.0, "hysteresis": 5.0, "reduced_current_a": 8.0}}}}


async def test_derating_by_temperature(tmp_path: Path) -> None:
    async with gateway(tmp_path, **DERATING) as gw:
        await _derating_16(gw)
        await _derating_201(gw)


# -- without the cloud, and beside the CSMS's own profiles ------------------------------------------


async def test_all_of_it_while_the_csms_is_down(tmp_path: Path) -> None:
    csms = await CountingCsms().start()
    await csms.stop()  # the CSMS is away for the whole test
    async with gateway(tmp_path, csms, site={"enabled": True, "max_current_a": 32.0}) as gw:
        async with Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
            tx = await cp.start_tx(1)
            assert tx >= 2_000_000_000  # the gateway's own 1.6 id: it answered locally
            await settle(gw)
            assert cp.limits() == [("TxProfile", 1, 32.0)]
            assert cp.of("SetChargingProfile")[0]["cs_charging_profiles"]["transaction_id"] == tx
            await gw.control.pause("CP1", {"transaction_id": tx})
            await gw.control.resume("CP1", {"transaction_id": tx})
            assert cp.limits()[-1] == ("TxProfile", 1, 32.0)
            await cp.stop_tx(tx)
        await _site_scenario(gw)
        assert {s.upstream_state.value for s in gw.hub.sessions.values()} <= {"offline", "connecting"}
    async with gateway(tmp_path / "derating", csms, **DERATING) as gw:
        await _derating_16(gw)
        await _derating_201(gw)
        assert {s.upstream_state.value for s in gw.hub.sessions.values()} <= {"offline", "connecting"}


async def test_csms_profile_left_untouched(tmp_path: Path) -> None:
    csms = await CountingCsms().start()
    try:
        # a loaded machine can take more than a second for the first upstream handshake: the CSMS is up
        # here, so give it time, and start the transaction only once the CSMS sees the charger
        async with gateway(tmp_path, csms, connect_timeout=10.0, site={"enabled": True, "max_current_a": 32.0}) as gw, \
                Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
            await until(lambda: "CP1" in csms.cps, STEP, "CSMS sees the charger")
            tx = await cp.start_tx(1)
            assert tx < 2_000_000_000  # the CSMS's id
            await settle(gw)
            # the CSMS sets its own TxProfile (id 7, stack level 0, 20 A) through the gateway
            res = await asyncio.wait_for(csms.cps["CP1"].call(v16.call.SetChargingProfile(connector_id=1, cs_charging_profiles={
                "chargingProfileId": 7, "transactionId": tx, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative", "chargingSchedule": {"chargingRateUnit": "A",
                                                                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20.0}]}})), STEP)
            assert res.status == "Accepted"
            await settle(gw)
            assert cp.limits()[-1] == ("TxProfile", 1, 20.0)  # ours (32 A) never goes above the CSMS's 20 A
            ours = [p for p in cp.of("SetChargingProfile") if p["cs_charging_profiles"]["charging_profile_id"] >= BASE]
            assert ours[-1]["cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 20.0
            # the CSMS clears every profile (no id): its limit is gone, ours is sent again (32 A)
            res = await asyncio.wait_for(csms.cps["CP1"].call(v16.call.ClearChargingProfile(
                charging_profile_purpose="TxProfile")), STEP)
            assert res.status == "Accepted"
            await until(lambda: cp.limits()[-1] == ("TxProfile", 1, 32.0), STEP, "our profile set again")
            await gw.control.pause("CP1", {"evse": 1})
            assert cp.limits()[-1] == ("TxProfile", 1, 0.0)
            await gw.control.resume("CP1", {"evse": 1})
            assert cp.limits()[-1] == ("TxProfile", 1, 32.0)
            await gw.control.pause("CP1", {"evse": 2})  # an idle EVSE: our TxDefaultProfile, then cleared
            await gw.control.resume("CP1", {"evse": 2})
            await cp.stop_tx(tx)
            await settle(gw)
            ours = [c for c in cp.of("ClearChargingProfile") if c != {"charging_profile_purpose": "TxProfile"}]
            assert ours and all(set(c) == {"id"} and c["id"] >= BASE for c in ours)  # by our id only
            assert all(p["cs_charging_profiles"]["charging_profile_id"] in (7,) or
                       p["cs_charging_profiles"]["charging_profile_id"] >= BASE for p in cp.of("SetChargingProfile"))
            # the gateway's own calls never reach the CSMS
            assert not [r for r in csms.received if r.action in ("SetChargingProfile", "ClearChargingProfile")]
    finally:
        await csms.stop()


def test_control_change_record_shape() -> None:
    assert "limit_a" in ControlChange.__dataclass_fields__


async def test_pauses_and_profiles_survive_a_gateway_restart(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
        tx = await cp.start_tx(1)
        await until(lambda: gw.control.view("CP1")["transactions"], STEP, "transaction learnt")
        await gw.control.pause("CP1", {"evse": 2})
        await gw.control.pause("CP1", {"transaction_id": tx})
    assert (tmp_path / "data" / "control-state.json").is_file()
    async with gateway(tmp_path) as gw, Connected(gw.url("CP1"), "ocpp1.6", "CP1") as cp:
        # what the charger holds of ours is known again and set again on connect
        await until(lambda: len(cp.limits()) == 2, STEP, "profiles set again")
        assert sorted(cp.limits()) == [("TxDefaultProfile", 2, 0.0), ("TxProfile", 1, 0.0)]
        assert gw.control.view("CP1")["transactions"] == [{"transaction_id": str(tx), "evse": 1}]
        await gw.control.resume("CP1", {"evse": 2})
        await gw.control.resume("CP1", {"transaction_id": tx})
        assert sorted(c["id"] for c in cp.of("ClearChargingProfile")) == [BASE + 10, BASE + 21]
