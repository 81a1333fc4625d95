"""OCPP 1.5 <-> 1.6 payload conversion for SOAP chargers (upstream every charger is OCPP 1.6J).

Pure functions on JSON dictionaries. Charger -> CSMS messages (requests of the Central System
service, responses of the Charge Point service) go `up` from 1.5 to 1.6; CSMS -> charger messages go
`down`. The table in docs/chargers.md ("SOAP chargers") lists every rule; keep them in step.
"""

from __future__ import annotations

import copy
from typing import Any

# 1.5 values that 1.6 renamed (charger -> CSMS)
STATUS_UP = {"Occupied": "Charging"}  # 1.6 splits Occupied into Preparing/Charging/Suspended*/Finishing
ERROR_CODE_UP = {"Mode3Error": "EVCommunicationError"}
UNIT_UP = {"Amp": "A", "Volt": "V"}
UNLOCK_UP = {"Accepted": "Unlocked", "Rejected": "UnlockFailed"}
UPDATE_STATUS_UP = {"HashError": "Failed"}

# 1.6 values that 1.5 lacks (CSMS -> charger)
REGISTRATION_DOWN = {"Pending": "Rejected"}  # the charger retries after `interval`, as Pending asks

# What a 1.5 charger cannot be asked: the operations 1.6 added.
NOT_IN_15 = frozenset({"ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile", "TriggerMessage"})


def _meter_values_up(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mv in values or []:
        samples = []
        for v in mv.get("value") or []:
            s = {k: v[k] for k in ("value", "context", "format", "measurand", "location", "unit") if k in v}
            s.setdefault("value", "")
            if "unit" in s:
                s["unit"] = UNIT_UP.get(s["unit"], s["unit"])
            samples.append(s)
        out.append({"timestamp": mv.get("timestamp"), "sampledValue": samples})
    return out


def up(action: str, payload: dict[str, Any], response: bool) -> dict[str, Any]:
    """A 1.5 payload as 1.6: requests of the Central System service, responses of the Charge Point service."""
    p = copy.deepcopy(payload)
    if not response:
        if action == "MeterValues":
            p["meterValue"] = _meter_values_up(p.pop("values", None) or [])
        elif action == "StopTransaction":
            data = p.pop("transactionData", None)
            if data:
                merged = [mv for td in data for mv in (td.get("values") or [])]
                if merged:
                    p["transactionData"] = _meter_values_up(merged)
        elif action == "StatusNotification":
            if "status" in p:
                p["status"] = STATUS_UP.get(p["status"], p["status"])
            if "errorCode" in p:
                p["errorCode"] = ERROR_CODE_UP.get(p["errorCode"], p["errorCode"])
    else:
        if action == "UnlockConnector" and "status" in p:
            p["status"] = UNLOCK_UP.get(p["status"], p["status"])
        elif action == "SendLocalList":
            p.pop("hash", None)
            if "status" in p:
                p["status"] = UPDATE_STATUS_UP.get(p["status"], p["status"])
    return p


def down(action: str, payload: dict[str, Any], response: bool) -> dict[str, Any]:
    """A 1.6 payload as 1.5: responses of the Central System service, requests of the Charge Point service."""
    p = copy.deepcopy(payload)
    if response:
        if action == "BootNotification":
            if "interval" in p:
                p["heartbeatInterval"] = p.pop("interval")
            if "status" in p:
                p["status"] = REGISTRATION_DOWN.get(p["status"], p["status"])
    else:
        if action == "RemoteStartTransaction":
            p.pop("chargingProfile", None)  # 1.5 has no smart charging
        elif action == "SendLocalList":
            if "localAuthorizationList" in p:
                p["localAuthorisationList"] = p.pop("localAuthorizationList")
    return p
