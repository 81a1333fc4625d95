"""OCPP payloads of 1.6, 2.0.1 and 2.1 into normalised records (pure: no I/O, no clock reads).

`Normaliser.records(...)` takes one finished exchange (action, request, response, receipt time) and
returns the records it carries. It keeps a little bounded state per charger, because OCPP spreads
facts over messages: the meter start and EVSE of a transaction (for `energy_wh` at the end), the
units a 2.x charger declared in NotifyReport (NotifyEvent carries none), and which monitor a 2.1
periodic event stream reports.

Where environment data lives (ocpp-reference.md §4): 1.6 MeterValues `Temperature` (and `RPM`);
2.x device-model variables `Temperature`, `Humidity`, `FanSpeed` of any component, from NotifyEvent,
NotifyReport, NotifyMonitoringReport (thresholds), GetVariables answers and 2.1
NotifyPeriodicEventStream; DataTransfer through `vendors.DECODERS`.

Identities: every MeterSample carries the spec's defaults filled in (measurand
Energy.Active.Import.Register, location Outlet, context Sample.Periodic; phase None is the overall
value), so a reading's identity (EVSE, measurand, phase, location) is its fields: a Body and an
Outlet temperature are two readings, a sample without location and one with Outlet are the same.
Units are those of `units` (a missing unit is the measurand's own, not always Wh).

Environment names: 1.6 `temperature` (location Body), `temperature_{location}` otherwise (no
location is Outlet: `temperature_outlet`),
`_evse{n}` appended for a connector's sensor; 2.x `temperature` / `humidity` for TemperatureSensor /
HumiditySensor / ChargingStation, `ambient_temperature` for ExternalTemperatureSensor,
`{component}_{variable}` for other components (snake_case), then `_{instance}` and `_evse{n}`.
"""

from __future__ import annotations

import logging
import re
from math import isfinite
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Iterable

from gateway.telemetry import units
from gateway.telemetry.records import (
    ChargerInfo, ConnectorStatus, EnvironmentReading, MeterReading, MeterSample, Record, TransactionEvent,
)
from gateway.telemetry.units import ROUNDER
from gateway.telemetry.vendors import DECODERS, DecoderRegistry, is_clamped, parse_time

log = logging.getLogger("gateway.telemetry")

ENERGY_REGISTER = "Energy.Active.Import.Register"
DEFAULT_LOCATION = "Outlet"  # SampledValue.location when absent (1.6 §7.45, 2.x LocationEnumType)
# 2.x device-model variables that are environment data, with their default unit
ENV_VARIABLES = {"Temperature": ("temperature", units.CELSIUS), "Humidity": ("humidity", units.HUMIDITY),
                 "FanSpeed": ("fan_speed", "RPM")}
_COMPONENT_PREFIX = {"TemperatureSensor": "", "HumiditySensor": "", "ChargingStation": "",
                     "ExternalTemperatureSensor": "ambient_"}
# 1.6 measurands that are also environment readings
_ENV_MEASURANDS_16 = {"Temperature": "temperature", "RPM": "fan_speed"}
_EVENTS_2X = {"Started": "started", "Updated": "updated", "Ended": "ended"}


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "x"


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class _Bounded(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Normaliser:
    def __init__(self, decoders: DecoderRegistry | None = None, max_state: int = 10_000) -> None:
        self.decoders = decoders or DECODERS
        self._tx: _Bounded = _Bounded(max_state)  # (charger, tx id) -> (meter_start Wh or None, evse, connector)
        self._units: _Bounded = _Bounded(max_state)  # (charger, component key, variable key) -> unit
        self._monitors: _Bounded = _Bounded(max_state)  # (charger, monitor id) -> (component, variable)
        self._streams: _Bounded = _Bounded(max_state)  # (charger, stream id) -> monitor id
        self._plans: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}  # 1.6 sample shape -> _plan_16
        self._handlers: dict[tuple[str, bool], Any] = {}  # (action, 1.6?) -> bound method or None

    def forget(self, charger_id: str) -> None:
        for table in (self._tx, self._units, self._monitors, self._streams):
            for key in [k for k in table if k[0] == charger_id]:
                del table[key]

    # -- entry point ----------------------------------------------------------------------------

    def records(self, charger_id: str, version: str, action: str, request: dict[str, Any],
                response: dict[str, Any] | None, received_at: datetime, origin: str = "charger") -> list[Record]:
        """The records in one exchange. `version` is "ocpp1.6", "ocpp2.0.1" or "ocpp2.1"."""
        if origin != "charger":
            if action == "GetVariables" and response:
                return self._get_variables(charger_id, request, response, received_at)
            return []
        key = (action, version == "ocpp1.6")
        try:
            handler = self._handlers[key]
        except KeyError:
            handler = (getattr(self, f"_{action}_{'16' if key[1] else '2x'}", None) or getattr(self, f"_{action}", None)
                       if action.isidentifier() else None)
            if len(self._handlers) < 1024:  # action names come from the charger: keep the table bounded
                self._handlers[key] = handler
        if handler is None:
            return []
        out = handler(charger_id, request, response or {}, received_at)
        return out if type(out) is list else list(out)

    # -- shared ---------------------------------------------------------------------------------

    def _BootNotification_16(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        yield ChargerInfo(charger_id=cid, vendor=req.get("chargePointVendor"), model=req.get("chargePointModel"),
                          firmware=req.get("firmwareVersion"),
                          serial=req.get("chargePointSerialNumber") or req.get("chargeBoxSerialNumber"), ts=now)

    def _BootNotification_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        cs = req.get("chargingStation") or {}
        yield ChargerInfo(charger_id=cid, vendor=cs.get("vendorName"), model=cs.get("model"),
                          firmware=cs.get("firmwareVersion"), serial=cs.get("serialNumber"), ts=now)

    def _DataTransfer(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        decoder = self.decoders.find(str(req.get("vendorId", "")), req.get("messageId"))
        if decoder is None:
            return []
        try:
            return decoder(cid, req.get("data"), now)
        except Exception as exc:  # noqa: BLE001 - a vendor's bad data must not break anything
            log.warning("DataTransfer %s/%s from %s not decoded: %s", req.get("vendorId"), req.get("messageId"),
                        cid, exc)
            return []

    # -- 1.6 ------------------------------------------------------------------------------------

    def _StatusNotification_16(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        cid_ = _int(req.get("connectorId")) or 0
        yield ConnectorStatus(charger_id=cid, evse=cid_, connector=cid_, status=str(req.get("status")),
                              error_code=req.get("errorCode"), ts=parse_time(req.get("timestamp"), now),
                              info=req.get("info"), vendor_error_code=req.get("vendorErrorCode"))

    @staticmethod
    def _plan_16(key: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """What a 1.6 sampledValue of this shape becomes (all but its value): None for signed data.

        (measurand, unit, phase, location, context, factor, kind, env): a value is `value x factor`
        in `unit` when factor is set; `kind` "F", "K" or "C" is a temperature to convert to Celsius;
        with neither, units.canonical works it out per value (units it does not know)."""
        measurand, unit, phase, location, context, fmt, evse = key
        if fmt == "SignedData":
            return None  # a signed blob, not a number
        measurand = measurand or ENERGY_REGISTER
        location = location or DEFAULT_LOCATION
        factor = kind = None
        if measurand == "Temperature" or units.is_temperature_unit(unit):
            kind = units.temperature_kind(unit)  # None: "Temperature" in a unit that is not one
            if kind is not None:
                unit = units.CELSIUS
        else:
            # every other conversion is a factor: (canonical unit, factor), no call per value
            factor, unit = units.canonical(1.0, unit, measurand=measurand)
        env = _ENV_MEASURANDS_16.get(measurand)
        if env is not None:
            if location != "Body":
                env += "_" + snake(location)
            if phase:
                env += "_" + snake(phase)
            if evse:
                env += f"_evse{evse}"
        return measurand, unit, phase, location, context or "Sample.Periodic", factor, kind, env

    def _samples_16(self, cid: str, evse: int, tx: str | None, meter_values: Any, now: datetime,
                    source: str) -> list[Record]:
        """The hot path of the telemetry plane (every 1.6 MeterValues): the sample's shape is looked
        up once per sample, its conversion comes from the plan, and the records are named tuples."""
        out: list[Record] = []
        plans = self._plans
        new = tuple.__new__
        tidy = units.tidy
        for mv in meter_values or ():
            ts = parse_time(mv.get("timestamp"), now)
            samples: list[MeterSample] = []
            for sv in mv.get("sampledValue") or ():
                get = sv.get
                raw = get("value")
                if raw is None:
                    continue
                # the shape of a sample repeats from one MeterValues to the next: work it out once.
                # Most samples carry just value, measurand and unit: then the shape is those two.
                measurand, unit = get("measurand"), get("unit")
                if len(sv) == 1 + (measurand is not None) + (unit is not None):
                    key: tuple[Any, ...] = (measurand, unit, evse)
                else:
                    key = (measurand, unit, get("phase"), get("location"), get("context"), get("format"), evse)
                plan = plans.get(key, False)  # TypeError for a (schema-invalid) list or object field
                if plan is False:
                    plan = self._plan_16((measurand, unit, get("phase"), get("location"), get("context"),
                                          get("format"), evse))
                    if len(plans) >= 4096:
                        plans.clear()
                    plans[key] = plan
                if plan is None:
                    continue
                if type(raw) is str:  # 1.6: a decimal string (float() allows the spaces around it)
                    try:
                        raw = float(raw)
                    except ValueError:
                        continue
                    if not isfinite(raw):
                        continue
                else:
                    raw = units.parse_number(raw)
                    if raw is None:
                        continue
                measurand, unit, phase, location, context, factor, kind, env = plan  # type: ignore[misc]
                if factor == 1.0:
                    value = raw
                elif factor is not None or kind is not None:
                    # a factor, or units.to_celsius inline; then units.tidy inline
                    value = (raw * factor if factor is not None else raw if kind == "C"
                             else (raw - 32.0) * 5.0 / 9.0 if kind == "F" else raw - 273.15)
                    value = (value * 1e6 + ROUNDER - ROUNDER) / 1e6 if -1e9 < value < 1e9 else tidy(value)
                else:
                    try:
                        value, unit = units.canonical(raw, unit, measurand=measurand)
                    except ValueError:
                        continue
                samples.append(new(MeterSample, (measurand, value, unit, phase, location, context)))
                if env is not None:  # EnvironmentReading(charger_id=, name=, value=, unit=, ts=, source=, evse=)
                    out.append(new(EnvironmentReading, (cid, env, value, unit, ts, source, None, None, evse or None)))
            if samples:  # MeterReading(charger_id=, evse=, connector=, ts=, transaction_id=, samples=, source=)
                out.append(new(MeterReading, (cid, evse, evse, ts, tx, tuple(samples), source)))
        return out

    def _MeterValues_16(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        tx = req.get("transactionId")
        return self._samples_16(cid, _int(req.get("connectorId")) or 0, None if tx is None else str(tx),
                                req.get("meterValue"), now, "MeterValues")

    def _StartTransaction_16(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        connector = _int(req.get("connectorId"))
        tx = resp.get("transactionId")
        tx_id = None if tx is None else str(tx)
        start = units.parse_number(req.get("meterStart"))
        if tx_id is not None:
            self._tx.put((cid, tx_id), (start, connector, connector))
        ts = parse_time(req.get("timestamp"), now)
        yield TransactionEvent(charger_id=cid, event="started", transaction_id=tx_id, evse=connector,
                               connector=connector, ts=ts, meter_start=start, ts_clamped=is_clamped(ts))

    def _StopTransaction_16(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        tx = req.get("transactionId")
        tx_id = None if tx is None else str(tx)
        start, evse, connector = self._tx.pop((cid, tx_id), (None, None, None))
        stop = units.parse_number(req.get("meterStop"))
        yield from self._samples_16(cid, evse or 0, tx_id, req.get("transactionData"), now, "StopTransaction")
        ts = parse_time(req.get("timestamp"), now)
        yield TransactionEvent(charger_id=cid, event="ended", transaction_id=tx_id, evse=evse, connector=connector,
                               ts=ts, meter_start=start, meter_stop=stop, energy_wh=_energy(start, stop),
                               reason=req.get("reason") or "Local", ts_clamped=is_clamped(ts))

    # -- 2.0.1 / 2.1 ----------------------------------------------------------------------------

    def _StatusNotification_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        yield ConnectorStatus(charger_id=cid, evse=_int(req.get("evseId")) or 0, connector=_int(req.get("connectorId")),
                              status=str(req.get("connectorStatus")), error_code=None,
                              ts=parse_time(req.get("timestamp"), now))

    def _samples_2x(self, cid: str, evse: int, connector: int | None, tx: str | None, meter_values: Any,
                    now: datetime, source: str) -> list[MeterReading]:
        out: list[MeterReading] = []
        for mv in meter_values or []:
            ts = parse_time(mv.get("timestamp"), now)
            samples: list[MeterSample] = []
            for sv in mv.get("sampledValue") or []:
                raw = units.parse_number(sv.get("value"))
                if raw is None:
                    continue
                uom = sv.get("unitOfMeasure") or {}
                measurand = sv.get("measurand") or ENERGY_REGISTER
                try:
                    # no unit: the measurand's own (Wh only for energy), after the multiplier
                    value, unit = units.canonical(raw, uom.get("unit"), measurand=measurand,
                                                  multiplier=_int(uom.get("multiplier")) or 0)
                except ValueError:
                    continue
                samples.append(MeterSample(measurand, value, unit, sv.get("phase"),
                                           sv.get("location") or DEFAULT_LOCATION,
                                           sv.get("context") or "Sample.Periodic"))
            if samples:
                out.append(MeterReading(charger_id=cid, evse=evse, connector=connector, ts=ts, transaction_id=tx,
                                        samples=tuple(samples), source=source))
        return out

    def _MeterValues_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        return self._samples_2x(cid, _int(req.get("evseId")) or 0, None, None, req.get("meterValue"), now,
                                "MeterValues")

    def _TransactionEvent_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        info = req.get("transactionInfo") or {}
        tx_id = info.get("transactionId")
        tx_id = None if tx_id is None else str(tx_id)
        event = _EVENTS_2X.get(req.get("eventType", ""), "updated")
        known = self._tx.get((cid, tx_id), (None, None, None))
        evse_obj = req.get("evse") or {}
        evse = _int(evse_obj.get("id"))
        connector = _int(evse_obj.get("connectorId"))
        if evse is None:
            evse, connector = known[1], known[2] if connector is None else connector
        readings = self._samples_2x(cid, evse or 0, connector, tx_id, req.get("meterValue"), now, "TransactionEvent")
        yield from readings
        register = [s.value for r in readings for s in r.samples
                    if s.measurand == ENERGY_REGISTER and s.phase is None and s.unit == "Wh"]
        start = known[0]
        stop = None
        if event == "started" and register:
            start = register[0]
        if event == "ended" and register:
            stop = register[-1]
        if event == "ended":
            self._tx.pop((cid, tx_id), None)
        else:
            self._tx.put((cid, tx_id), (start, evse, connector))
        reason = info.get("stoppedReason") if event == "ended" else None
        ts = parse_time(req.get("timestamp"), now)
        yield TransactionEvent(charger_id=cid, event=event, transaction_id=tx_id, evse=evse, connector=connector,
                               ts=ts, meter_start=start, meter_stop=stop, energy_wh=_energy(start, stop),
                               reason=reason or req.get("triggerReason"), offline=bool(req.get("offline", False)),
                               seq_no=_int(req.get("seqNo")), ts_clamped=is_clamped(ts))

    # device model -----------------------------------------------------------------------------

    def _env(self, cid: str, component: dict, variable: dict, raw: Any, ts: datetime, source: str,
             unit: str | None = None, suffix: str = "") -> EnvironmentReading | None:
        known = ENV_VARIABLES.get(str(variable.get("name")))
        if known is None:
            return None
        value = units.parse_number(raw)
        if value is None:
            return None
        comp_name = str(component.get("name", ""))
        comp_key, var_key = _component_key(component), _variable_key(variable)
        unit = unit or self._units.get((cid, comp_key, var_key)) or known[1]
        base, default_unit = known
        if default_unit == units.CELSIUS:
            try:
                value, unit = units.to_celsius(value, unit), units.CELSIUS
            except ValueError:
                return None
        elif default_unit == units.HUMIDITY:
            unit = units.HUMIDITY
        prefix = _COMPONENT_PREFIX.get(comp_name)
        name = (prefix if prefix is not None else snake(comp_name) + "_") + base
        for instance in (component.get("instance"), variable.get("instance")):
            if instance:
                name += "_" + snake(str(instance))
        evse = _int((component.get("evse") or {}).get("id"))
        if evse:
            name += f"_evse{evse}"
        return EnvironmentReading(charger_id=cid, name=name + suffix, value=value, unit=unit, ts=ts, source=source,
                                  component=comp_key, variable=var_key, evse=evse)

    def _NotifyEvent_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        for ev in req.get("eventData") or []:
            reading = self._env(cid, ev.get("component") or {}, ev.get("variable") or {}, ev.get("actualValue"),
                                parse_time(ev.get("timestamp"), now), "NotifyEvent")
            if reading is not None:
                yield reading

    def _NotifyReport_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        ts = parse_time(req.get("generatedAt"), now)
        for item in req.get("reportData") or []:
            component, variable = item.get("component") or {}, item.get("variable") or {}
            unit = (item.get("variableCharacteristics") or {}).get("unit")
            if unit:
                self._units.put((cid, _component_key(component), _variable_key(variable)), unit)
            for attr in item.get("variableAttribute") or []:
                if attr.get("type", "Actual") != "Actual" or "value" not in attr:
                    continue
                reading = self._env(cid, component, variable, attr.get("value"), ts, "NotifyReport", unit)
                if reading is not None:
                    yield reading

    def _NotifyMonitoringReport_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        ts = parse_time(req.get("generatedAt"), now)
        for item in req.get("monitor") or []:
            component, variable = item.get("component") or {}, item.get("variable") or {}
            for mon in item.get("variableMonitoring") or []:
                mid = _int(mon.get("id"))
                if mid is not None:
                    self._monitors.put((cid, mid), (component, variable))
                kind = mon.get("type")
                if kind in ("UpperThreshold", "LowerThreshold"):
                    reading = self._env(cid, component, variable, mon.get("value"), ts, "NotifyMonitoringReport",
                                        suffix="_" + snake(kind))
                    if reading is not None:
                        yield reading

    def _OpenPeriodicEventStream_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        data = req.get("constantStreamData") or {}
        sid, mid = _int(data.get("id")), _int(data.get("variableMonitoringId"))
        if sid is not None and mid is not None:
            self._streams.put((cid, sid), mid)
        return []

    def _NotifyPeriodicEventStream_2x(self, cid: str, req: dict, resp: dict, now: datetime) -> Iterable[Record]:
        mid = self._streams.get((cid, _int(req.get("id"))))
        target = self._monitors.get((cid, mid)) if mid is not None else None
        if target is None:
            return
        base = parse_time(req.get("basetime"), now)
        for item in req.get("data") or []:
            offset = units.parse_number(item.get("t")) or 0.0
            reading = self._env(cid, target[0], target[1], item.get("v"), base + timedelta(seconds=offset),
                                "NotifyPeriodicEventStream")
            if reading is not None:
                yield reading

    def _get_variables(self, cid: str, req: dict, resp: dict, now: datetime) -> list[Record]:
        out: list[Record] = []
        for res in resp.get("getVariableResult") or []:
            if res.get("attributeStatus") != "Accepted" or res.get("attributeType", "Actual") != "Actual":
                continue
            reading = self._env(cid, res.get("component") or {}, res.get("variable") or {},
                                res.get("attributeValue"), now, "GetVariables")
            if reading is not None:
                out.append(reading)
        return out


def _component_key(component: dict) -> str:
    key = str(component.get("name", ""))
    if component.get("instance"):
        key += f"[{component['instance']}]"
    evse = component.get("evse") or {}
    if evse.get("id") is not None:
        key += f"@{evse['id']}" + (f".{evse['connectorId']}" if evse.get("connectorId") is not None else "")
    return key


def _variable_key(variable: dict) -> str:
    key = str(variable.get("name", ""))
    if variable.get("instance"):
        key += f"[{variable['instance']}]"
    return key


def _energy(start: float | None, stop: float | None) -> float | None:
    if start is None or stop is None:
        return None
    return units.tidy(stop - start)
