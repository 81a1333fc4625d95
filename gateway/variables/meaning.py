"""Which variable means what: what local control reads from the mirror (rate unit, maximum stack
level, phases, connector types) and what `[environment].ensure` asks a charger for.

- Rate unit: 1.6 `ChargingScheduleAllowedChargingRateUnit` (`Current`, `Power`, both); 2.x
  `SmartChargingCtrlr/RateUnit` (a member list of `A`, `W`; its value list when the value is empty)
  or a vendor's `RateUnitAvailable`.
- Maximum stack level: 1.6 `ChargeProfileMaxStackLevel`; 2.x `SmartChargingCtrlr/ProfileStackLevel`.
- Phases: 2.x `SupplyPhases` of the ChargingStation or the EVSE (0 = DC: left unknown).
- Connector types: 2.x `Connector@e.c/ConnectorType`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from gateway.variables.model import ACTUAL, Variable

TEMPERATURE = "Temperature"
HUMIDITY = "Humidity"
SAMPLED_KEYS = ("MeterValuesSampledData", "MeterValuesAlignedData")  # 1.6: the measurand lists
MAX_LENGTH = {"MeterValuesSampledData": "MeterValuesSampledDataMaxLength",
              "MeterValuesAlignedData": "MeterValuesAlignedDataMaxLength"}


@dataclass(slots=True)
class Capabilities:
    rate_units: tuple[str, ...] = ()  # "A", "W"; empty: the charger did not say
    max_stack_level: int | None = None
    phases: int | None = None
    connector_types: dict[str, str] = field(default_factory=dict)  # "evse.connector" -> type

    def as_json(self) -> dict[str, Any]:
        return {"rate_units": list(self.rate_units), "max_stack_level": self.max_stack_level, "phases": self.phases,
                "connector_types": dict(self.connector_types)}


def _csl(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


_UNIT_WORDS = {"current": "A", "a": "A", "power": "W", "w": "W"}


def _units(words: Iterable[str]) -> tuple[str, ...]:
    found = {_UNIT_WORDS[w.lower()] for w in words if w.lower() in _UNIT_WORDS}
    return tuple(u for u in ("A", "W") if u in found)


def capabilities(version: str, variables: Mapping[str, Variable]) -> Capabilities:
    """What the mirror says; `variables` by name (only those present count)."""
    caps = Capabilities()
    if version == "ocpp1.6":
        v = variables.get("ChargingScheduleAllowedChargingRateUnit")
        if v is not None and v.known:
            caps.rate_units = _units(_csl(v.value))
        v = variables.get("ChargeProfileMaxStackLevel")
        if v is not None and v.known:
            caps.max_stack_level = _int(v.value)
        return caps
    for name in ("SmartChargingCtrlr/RateUnit", "SmartChargingCtrlr/RateUnitAvailable"):
        v = variables.get(name)
        if v is None:
            continue
        words = _csl(v.value) or _csl(str((v.characteristics or {}).get("values_list") or ""))
        if words:
            caps.rate_units = _units(words)
            break
    v = variables.get("SmartChargingCtrlr/ProfileStackLevel")
    if v is not None:
        caps.max_stack_level = _int(v.value)
    station = variables.get("ChargingStation/SupplyPhases")
    phases = _int(station.value) if station is not None else None
    if not phases:
        evse_phases = {_int(v.value) for v in variables.values()
                       if v.component == "EVSE" and v.variable == "SupplyPhases" and v.attribute in (None, ACTUAL)}
        evse_phases.discard(None)
        evse_phases.discard(0)
        if evse_phases:
            phases = max(p for p in evse_phases if p is not None)
    caps.phases = phases if phases and 1 <= phases <= 3 else None
    for v in variables.values():
        if v.component == "Connector" and v.variable == "ConnectorType" and v.value and v.attribute in (None, ACTUAL):
            caps.connector_types[f"{v.evse}.{v.connector}" if v.connector is not None else str(v.evse)] = v.value
    return caps


def choose_rate_unit(supported: tuple[str, ...], configured: str | None) -> tuple[str, str | None]:
    """(unit to use, a mismatch to log or None). The configured unit wins; without one, A unless the
    charger takes W only."""
    if configured is not None:
        if supported and configured not in supported:
            return configured, (f"[chargers.ID].rate_unit = {configured!r} but the charger reports "
                                f"{','.join(supported)} only")
        return configured, None
    if supported == ("W",):
        return "W", None
    return "A", None


def choose_stack_level(configured: int, max_level: int | None) -> tuple[int, str | None]:
    """The gateway's stack level: the configured one, lowered to the charger's maximum."""
    if max_level is not None and 0 <= max_level < configured:
        return max_level, (f"[control].stack_level {configured} is above the charger's maximum {max_level}; "
                           f"using {max_level}")
    return configured, None


# -- the environment ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A 1.6 ChangeConfiguration the gateway asks for."""

    key: str
    value: str
    why: str


def environment_changes_16(variables: Mapping[str, Variable]) -> list[ConfigChange]:
    """Temperature added to the measurand lists the charger has and may change (within their
    maximum length), and a vendor's humidity switch (a writable key naming humidity whose value is
    false) turned on."""
    out: list[ConfigChange] = []
    for key in SAMPLED_KEYS:
        v = variables.get(key)
        if v is None or not v.writable or v.secret:
            continue
        items = _csl(v.value)
        if any(i.lower() == TEMPERATURE.lower() for i in items):
            continue
        limit = variables.get(MAX_LENGTH[key])
        most = _int(limit.value) if limit is not None and limit.known else None
        if most is not None and len(items) + 1 > most:
            continue
        out.append(ConfigChange(key, ",".join([*items, TEMPERATURE]), "temperature"))
    for v in variables.values():
        if "humidity" in v.name.lower() and v.writable and not v.secret and (v.value or "").lower() in ("false", "0"):
            out.append(ConfigChange(v.name, "true" if v.value and v.value.lower() == "false" else "1", "humidity"))
    return out


@dataclass(frozen=True, slots=True)
class MonitorRequest:
    """A 2.x monitor the gateway asks for on one variable."""

    name: str  # the variable's mirror name
    component: dict[str, Any]
    variable: dict[str, Any]
    type: str  # Periodic or Delta
    value: float
    severity: int = 8  # Informational


def environment_monitors_2x(variables: Mapping[str, Variable], *, periodic: float, delta_temperature: float,
                            delta_humidity: float) -> list[MonitorRequest]:
    """Periodic and delta monitors on every Temperature / Humidity variable the device model lists
    (Actual attribute, monitoring not said to be unsupported), except a type the variable already
    has a monitor of."""
    from gateway.variables.model import address_of

    out: list[MonitorRequest] = []
    for v in variables.values():
        if v.variable not in (TEMPERATURE, HUMIDITY) or v.attribute not in (None, ACTUAL) or v.component is None:
            continue
        if (v.characteristics or {}).get("supports_monitoring") is False:
            continue
        have = {m.get("type") for m in v.monitors or []}
        addr = address_of(v)
        delta = delta_temperature if v.variable == TEMPERATURE else delta_humidity
        for kind, value in (("Periodic", periodic), ("Delta", delta)):
            if kind not in have and value > 0:
                out.append(MonitorRequest(v.name, addr.component, addr.variable, kind, value))
    return out


def monitoring_request(items: list[MonitorRequest]) -> dict[str, Any]:
    return {"setMonitoringData": [{"value": m.value, "type": m.type, "severity": m.severity,
                                   "component": m.component, "variable": m.variable} for m in items]}
