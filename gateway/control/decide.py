"""The decisions of local control, as pure functions (no I/O, no clock): the site's fair share,
the derating hysteresis, the limit an EVSE gets, and the OCPP payloads that carry it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

NORMAL, REDUCED, PAUSED = 0, 1, 2
LEVEL_NAMES = {NORMAL: "normal", REDUCED: "reduced", PAUSED: "paused"}

TX_PROFILE = "TxProfile"
TX_DEFAULT_PROFILE = "TxDefaultProfile"
EVSE_SLOTS = 10  # profile ids per EVSE: base + evse * 10 + slot


# -- the site limit -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One active transaction asking for a share: `key` identifies it, `cap` is the most it may
    get anyway (derating, the CSMS's own limit; inf = none). Claims come oldest first."""

    key: Hashable
    cap: float = math.inf


def fair_share(limit: float, claims: Sequence[Claim], minimum: float) -> dict[Hashable, float]:
    """Share `limit` (A per phase) among the claims.

    Admission, oldest first: a claim is admitted when the admitted claims can still each get
    min(minimum, cap); the others get 0 (paused by the site limit; the newest go first). The admitted
    claims then share the limit equally, a claim capped below its equal share keeps only its cap and
    leaves the rest to the others (water-filling). Limits are rounded down to 0.1 A."""
    out: dict[Hashable, float] = {}
    admitted: list[Claim] = []
    reserved = 0.0
    for claim in claims:
        need = min(minimum, claim.cap)
        if reserved + need <= limit + 1e-9:
            admitted.append(claim)
            reserved += need
        else:
            out[claim.key] = 0.0
    remaining = limit
    open_ = sorted(admitted, key=lambda c: c.cap)
    while open_:
        share = remaining / len(open_)
        first = open_[0]
        if first.cap <= share:
            out[first.key] = first.cap
            remaining -= first.cap
            open_.pop(0)
            continue
        for claim in open_:
            out[claim.key] = share
        break
    return {k: _floor(v) for k, v in out.items()}


def _floor(value: float) -> float:
    if value == math.inf:
        return value
    return math.floor(value * 10 + 1e-6) / 10


# -- derating -------------------------------------------------------------------------------------


def derate_level(level: int, temperature: float, reduce_above: float, pause_above: float,
                 hysteresis: float) -> int:
    """The next derating level for a reading: above `pause_above` -> PAUSED, above `reduce_above`
    -> REDUCED; a level is kept until the temperature falls below its threshold minus
    `hysteresis` (a pause released between the two steps lands on REDUCED)."""
    if temperature > pause_above:
        return PAUSED
    if level == PAUSED and temperature >= pause_above - hysteresis:
        return PAUSED
    if temperature > reduce_above:
        return REDUCED
    if level >= REDUCED and temperature >= reduce_above - hysteresis:
        return REDUCED
    return NORMAL


# -- what an EVSE gets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Want:
    """What the gateway wants on one EVSE: a profile with `limit` (A per phase) of `purpose`
    (TxProfile for `transaction_id`, else TxDefaultProfile), and why; limit None = no profile."""

    limit: float | None
    purpose: str | None
    transaction_id: Any
    reason: str


NOTHING = Want(None, None, None, "")


def evse_want(transaction_id: Any, *, operator_paused: bool, derating: int, reduced: float,
              site_share: float | None, csms_cap: float | None, operator_limit: float | None = None) -> Want:
    """Combine the reasons into one limit: the lowest wins; the reason named is the one that
    set it (operator pause first, then temperature, then the site limit)."""
    candidates: list[tuple[float, str]] = []
    if operator_paused:
        candidates.append((0.0, "operator"))
    if operator_limit is not None:
        candidates.append((operator_limit, "operator"))
    if derating == PAUSED:
        candidates.append((0.0, "temperature"))
    elif derating == REDUCED:
        candidates.append((reduced, "temperature"))
    if site_share is not None and transaction_id is not None:
        candidates.append((site_share, "site_limit"))
    if not candidates:
        return NOTHING
    limit, reason = min(candidates, key=lambda c: c[0])  # stable: the first of equal limits
    if csms_cap is not None and csms_cap < limit and transaction_id is not None:
        limit = csms_cap  # never above what the CSMS itself allows
    purpose = TX_PROFILE if transaction_id is not None else TX_DEFAULT_PROFILE
    return Want(limit, purpose, transaction_id, reason)


def profile_id(base: int, evse: int, purpose: str) -> int:
    return base + evse * EVSE_SLOTS + (0 if purpose == TX_PROFILE else 1)


def is_gateway_profile_id(base: int, value: Any) -> bool:
    return isinstance(value, int) and base <= value < base + 100_000


# -- payloads -------------------------------------------------------------------------------------


def set_profile_request(version: str, evse: int, want: Want, pid: int, stack_level: int,
                        phases: int, unit: str = "A", voltage: float = 230.0) -> dict[str, Any]:
    """SetChargingProfile for `want` (limit in A per phase, Relative: in force from now on). With
    `unit` "W" (a charger that takes only power limits) the limit goes as A x voltage x phases,
    rounded down to a watt."""
    assert want.limit is not None and want.purpose is not None
    limit = want.limit if unit == "A" else float(math.floor(want.limit * voltage * phases))
    period = {"startPeriod": 0, "limit": limit, "numberPhases": phases}
    if version == "ocpp1.6":
        profile: dict[str, Any] = {
            "chargingProfileId": pid, "stackLevel": stack_level, "chargingProfilePurpose": want.purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": unit, "chargingSchedulePeriod": [period]},
        }
        if want.purpose == TX_PROFILE:
            profile["transactionId"] = int(want.transaction_id)
        return {"connectorId": evse, "csChargingProfiles": profile}
    profile = {
        "id": pid, "stackLevel": stack_level, "chargingProfilePurpose": want.purpose,
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{"id": pid, "chargingRateUnit": unit, "chargingSchedulePeriod": [period]}],
    }
    if want.purpose == TX_PROFILE:
        profile["transactionId"] = str(want.transaction_id)
    return {"evseId": evse, "chargingProfile": profile}


def clear_profile_request(version: str, pid: int) -> dict[str, Any]:
    """ClearChargingProfile by the gateway's own id only (never by criteria)."""
    return {"id": pid} if version == "ocpp1.6" else {"chargingProfileId": pid}


def availability_request(version: str, evse: int, operative: bool) -> dict[str, Any]:
    if version == "ocpp1.6":
        return {"connectorId": evse, "type": "Operative" if operative else "Inoperative"}
    body: dict[str, Any] = {"operationalStatus": "Operative" if operative else "Inoperative"}
    if evse:
        body["evse"] = {"id": evse}
    return body


def stop_request(version: str, transaction_id: Any) -> tuple[str, dict[str, Any]]:
    if version == "ocpp1.6":
        return "RemoteStopTransaction", {"transactionId": int(transaction_id)}
    return "RequestStopTransaction", {"transactionId": str(transaction_id)}


def csms_profile_cap(version: str, request: dict[str, Any], voltage: float, phases: int) -> tuple[int, Any, float] | None:
    """From a CSMS SetChargingProfile: (evse, its profile id, the lowest limit it sets in A per
    phase), for TxProfile/TxDefaultProfile; None for other purposes or shapes."""
    if version == "ocpp1.6":
        evse, profile = request.get("connectorId"), request.get("csChargingProfiles") or {}
        pid, schedules = profile.get("chargingProfileId"), [profile.get("chargingSchedule") or {}]
    else:
        evse, profile = request.get("evseId"), request.get("chargingProfile") or {}
        pid, schedules = profile.get("id"), list(profile.get("chargingSchedule") or [])
    if profile.get("chargingProfilePurpose") not in (TX_PROFILE, TX_DEFAULT_PROFILE) or not isinstance(evse, int):
        return None
    limits: list[float] = []
    for schedule in schedules:
        unit = schedule.get("chargingRateUnit")
        for period in schedule.get("chargingSchedulePeriod") or []:
            value = period.get("limit")
            if not isinstance(value, (int, float)):
                continue
            n = period.get("numberPhases") or phases
            limits.append(float(value) if unit == "A" else float(value) / (voltage * n))
    if not limits:
        return None
    return evse, pid, min(limits)
