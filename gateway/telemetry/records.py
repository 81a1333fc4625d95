"""Normalised telemetry records: one shape whatever OCPP version the charger speaks.

Every record carries the charger's own timestamp (`ts`, timezone-aware UTC); the receipt time is used
only where the charger gave none (ARCHITECTURE.md invariant 7). Values are floats in the canonical
units of `gateway.telemetry.units` (energy Wh, power W, temperature Celsius, humidity RH, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from gateway.variables.model import VariablesChanged  # the variables mirror's values (gateway/mirror.py)


class MeterSample(NamedTuple):
    """One sampled value. A named tuple rather than a frozen dataclass: a MeterValues carries
    several, and a frozen dataclass costs about four times as much to build.

    Identity: a reading is the same reading as another when the EVSE (MeterReading.evse), the
    measurand, the phase and the location are equal (`reading_key`); sinks keep readings with
    different identities apart (MQTT topics, InfluxDB tags, Home Assistant entities, the API)."""

    measurand: str  # e.g. "Energy.Active.Import.Register" (the OCPP default filled in)
    value: float
    unit: str  # canonical unit (units.canonical; a missing unit is the measurand's own: units.default_unit)
    phase: str | None = None  # None: the overall value
    location: str | None = None  # the normaliser fills in the OCPP default, "Outlet"
    context: str | None = None  # the normaliser fills in the OCPP default, "Sample.Periodic"


def reading_key(evse: int, sample: MeterSample) -> tuple[int, str, str | None, str | None]:
    """The identity of a sampled value: (EVSE, measurand, phase, location)."""
    return evse, sample.measurand, sample.phase, sample.location


class MeterReading(NamedTuple):
    """The samples a charger took at one instant on one EVSE (1.6 connectorId, 2.x evseId; 0 = main meter).

    A named tuple, like MeterSample, and for the same reason: one is built for every MeterValues of
    every charger, and a frozen slots dataclass costs three times as much to build (about 1 us
    against 0.35 us). Immutable all the same; build it with keywords."""

    charger_id: str
    evse: int
    connector: int | None
    ts: datetime
    transaction_id: str | None
    samples: tuple[MeterSample, ...]
    source: str  # the OCPP action it came from


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorStatus:
    charger_id: str
    evse: int  # 0 = the whole charger
    connector: int | None
    status: str  # 1.6 ChargePointStatus or 2.x ConnectorStatusEnumType, as the charger sent it
    error_code: str | None  # 1.6 ChargePointErrorCode; 2.x has none
    ts: datetime
    info: str | None = None
    vendor_error_code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionEvent:
    charger_id: str
    event: str  # "started", "updated", "ended"
    transaction_id: str | None
    evse: int | None
    connector: int | None
    ts: datetime
    meter_start: float | None = None  # Wh
    meter_stop: float | None = None  # Wh
    energy_wh: float | None = None  # meter_stop - meter_start when both are known
    reason: str | None = None
    offline: bool = False
    seq_no: int | None = None
    ts_clamped: bool = False  # the charger's time was outside years 1-9999 in UTC: `ts` is the nearest bound


class EnvironmentReading(NamedTuple):
    """A device or environment variable: temperature, humidity, fan speed, ... (a named tuple: a 1.6
    MeterValues with a temperature sample carries one, see MeterReading).

    Identity: `name` with `component` (2.x: the device-model component with its instance and EVSE;
    the name encodes the location, instance and EVSE too, normalise.py says how)."""

    charger_id: str
    name: str  # e.g. "temperature", "humidity", "ambient_temperature", "temperature_inlet_evse1"
    value: float
    unit: str  # canonical unit: "Celsius", "RH", ...
    ts: datetime
    source: str  # the OCPP action it came from, e.g. "MeterValues", "NotifyEvent", "DataTransfer/acme.env"
    component: str | None = None  # 2.x device model component (with instance as "Name[instance]")
    variable: str | None = None
    evse: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerState:
    charger_id: str
    connected: bool
    upstream: str  # "standalone", "connecting", "online", "offline"
    protocol: str  # "ocpp1.6", "ocpp2.0.1", "ocpp2.1"
    ts: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerInfo:
    """What a BootNotification says about the charger (for Home Assistant's device registry)."""

    charger_id: str
    vendor: str | None
    model: str | None
    firmware: str | None
    serial: str | None
    ts: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerForgotten:
    """The charger is gone for good: sinks remove what they published for it (retained state, HA)."""

    charger_id: str
    ts: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlChange:
    """A change of what local control applies to one EVSE (gateway.control.engine): a limit, a
    pause, derating, or the release of all of them. Published like every other record."""

    charger_id: str
    evse: int
    transaction_id: str | None
    state: str  # "limited", "paused", "released"
    limit_a: float | None  # A per phase; None when released
    reason: str  # "operator", "temperature", "site_limit", "" when released
    mechanism: str  # "profile", "availability", "stop", "none"
    status: str  # the charger's answer: "Accepted", "Rejected", "Scheduled", an error code, "timeout"
    ts: datetime
    temperature: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteLimit:
    """The site limit local control applies (A per phase, None: none), and where it comes from:
    "config" (`[site]`) or "operator" (set at run time)."""

    limit_a: float | None
    source: str
    ts: datetime


Record = (MeterReading | ConnectorStatus | TransactionEvent | EnvironmentReading | ChargerState | ChargerInfo
          | ChargerForgotten | ControlChange | VariablesChanged | SiteLimit)
