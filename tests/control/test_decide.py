"""The pure decisions of local control: fair share, the derating hysteresis, combining reasons,
and the payloads (checked against the OCPP schemas the `ocpp` package ships)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import ocpp
import pytest

from gateway.control import decide as D
from gateway.control.settings import DeratingRule, SiteSettings

SCHEMAS = Path(ocpp.__file__).parent


def test_equal_shares_rounded_down() -> None:
    assert D.fair_share(32.0, [D.Claim("a"), D.Claim("b"), D.Claim("c")], 6.0) == {"a": 10.6, "b": 10.6, "c": 10.6}


def test_newest_sessions_paused_when_the_minimum_does_not_fit() -> None:
    claims = [D.Claim(k) for k in "abcdef"]
    assert D.fair_share(20.0, claims, 6.0) == {"a": 6.6, "b": 6.6, "c": 6.6, "d": 0.0, "e": 0.0, "f": 0.0}
    assert D.fair_share(5.0, claims[:1], 6.0) == {"a": 0.0}


def test_capped_sessions_leave_the_rest_to_the_others() -> None:
    shares = D.fair_share(32.0, [D.Claim("a", cap=4.0), D.Claim("b"), D.Claim("c", cap=10.0)], 6.0)
    assert shares == {"a": 4.0, "c": 10.0, "b": 18.0}
    # a small cap needs less than the minimum to be admitted
    assert D.fair_share(10.0, [D.Claim("a"), D.Claim("b"), D.Claim("c", cap=3.0)], 6.0) == {"a": 7.0, "b": 0.0, "c": 3.0}


def test_admission_is_oldest_first() -> None:
    shares = D.fair_share(13.0, [D.Claim("old"), D.Claim("mid"), D.Claim("new")], 6.0)
    assert shares == {"old": 6.5, "mid": 6.5, "new": 0.0}


def test_nothing_to_share() -> None:
    assert D.fair_share(32.0, [], 6.0) == {}


@pytest.mark.parametrize("readings, levels", [
    # rising through both thresholds, falling back with hysteresis 5 (reduce 50, pause 60)
    ([40, 50, 50.5, 59, 60, 60.5, 58, 55.1, 55, 54.9, 50, 45.1, 45, 44.9],
     [0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 0]),
    # straight from normal to paused, released to normal at once when it drops far
    ([70, 30], [2, 0]),
    # a pause released while still above the first threshold lands on reduced
    ([61, 52], [2, 1]),
])
def test_hysteresis(readings: list[float], levels: list[int]) -> None:
    level = D.NORMAL
    out = []
    for t in readings:
        level = D.derate_level(level, t, 50.0, 60.0, 5.0)
        out.append(level)
    assert out == levels


def test_evse_want_lowest_reason_wins() -> None:
    w = D.evse_want("7", operator_paused=False, derating=D.REDUCED, reduced=10.0, site_share=8.0, csms_cap=None)
    assert (w.limit, w.reason, w.purpose) == (8.0, "site_limit", D.TX_PROFILE)
    w = D.evse_want("7", operator_paused=True, derating=D.PAUSED, reduced=10.0, site_share=8.0, csms_cap=None)
    assert (w.limit, w.reason) == (0.0, "operator")
    w = D.evse_want(None, operator_paused=False, derating=D.PAUSED, reduced=10.0, site_share=None, csms_cap=None)
    assert (w.limit, w.reason, w.purpose) == (0.0, "temperature", D.TX_DEFAULT_PROFILE)
    assert D.evse_want("7", operator_paused=False, derating=D.NORMAL, reduced=10.0, site_share=None,
                       csms_cap=3.0) == D.NOTHING  # nothing of ours to limit: the CSMS's profile rules alone
    w = D.evse_want("7", operator_paused=False, derating=D.NORMAL, reduced=10.0, site_share=16.0, csms_cap=6.0)
    assert (w.limit, w.reason) == (6.0, "site_limit")  # never above what the CSMS allows


def test_profile_ids_are_reserved_and_distinct() -> None:
    base = 900_000_000
    ids = {D.profile_id(base, e, p) for e in range(5) for p in (D.TX_PROFILE, D.TX_DEFAULT_PROFILE)}
    assert len(ids) == 10 and all(D.is_gateway_profile_id(base, i) for i in ids)
    assert not D.is_gateway_profile_id(base, 1) and not D.is_gateway_profile_id(base, "900000000")


def _validate(version: str, action: str, payload: dict) -> None:
    folder = {"ocpp1.6": "v16", "ocpp2.0.1": "v201", "ocpp2.1": "v21"}[version]
    name = f"{action}.json" if version == "ocpp1.6" else f"{action}Request.json"
    schema = json.loads((SCHEMAS / folder / "schemas" / name).read_text())
    jsonschema.Draft4Validator(schema).validate(payload)


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_payloads_match_the_schemas(version: str) -> None:
    tx = D.Want(0.0, D.TX_PROFILE, "42", "operator")
    default = D.Want(10.0, D.TX_DEFAULT_PROFILE, None, "temperature")
    for want in (tx, default):
        body = D.set_profile_request(version, 1, want, D.profile_id(900_000_000, 1, want.purpose), 8, 3)
        _validate(version, "SetChargingProfile", body)
        watts = D.set_profile_request(version, 1, want, D.profile_id(900_000_000, 1, want.purpose), 8, 3, "W", 230.0)
        _validate(version, "SetChargingProfile", watts)
        profile = watts.get("csChargingProfiles") or watts["chargingProfile"]
        schedule = profile["chargingSchedule"]
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        assert schedule["chargingRateUnit"] == "W"
        assert schedule["chargingSchedulePeriod"][0]["limit"] == want.limit * 690  # A x 230 V x 3 phases
    _validate(version, "ClearChargingProfile", D.clear_profile_request(version, 900_000_010))
    _validate(version, "ChangeAvailability", D.availability_request(version, 1, False))
    action, payload = D.stop_request(version, "42")
    _validate(version, action, payload)
    v16 = D.set_profile_request(version, 1, tx, 900_000_010, 8, 3)
    if version == "ocpp1.6":
        assert v16["csChargingProfiles"]["transactionId"] == 42
    else:
        assert v16["chargingProfile"]["transactionId"] == "42"


def test_csms_profile_cap() -> None:
    req16 = {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative", "chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 6900.0}, {"startPeriod": 3600, "limit": 11040.0}]}}}
    assert D.csms_profile_cap("ocpp1.6", req16, 230.0, 3) == (1, 5, 10.0)
    req16["csChargingProfiles"]["chargingProfilePurpose"] = "ChargePointMaxProfile"
    assert D.csms_profile_cap("ocpp1.6", req16, 230.0, 3) is None


def test_site_settings_current() -> None:
    assert SiteSettings().current_limit() is None
    assert SiteSettings(enabled=True, max_current_a=32).current_limit() == 32
    assert SiteSettings(enabled=True, max_power_w=22080, phases=3, voltage=230).current_limit() == pytest.approx(32)
    with pytest.raises(ValueError):
        SiteSettings(enabled=True)
    with pytest.raises(ValueError):
        DeratingRule(reduce_above=60, pause_above=50)
    assert math.isinf(D.Claim("x").cap)
