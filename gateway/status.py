"""What each charger last said about itself, for the REST API and the status page.

`StatusBook` is a session observer (gateway.ports.SessionObserver): it reads finished exchanges
and keeps, per charger, the BootNotification identity, the status of every EVSE/connector, the
latest power and energy readings, and the transactions it saw start and not yet end. It is an
in-memory view for operators, not a record: the offline store owns the transactions of record.

It runs on the event loop and only updates small dicts; it never awaits and never raises.
Versions: 1.6 (connectorId, status, errorCode, StartTransaction/StopTransaction, MeterValues with
string values and `unit`), 2.0.1 and 2.1 (evseId/connectorId, connectorStatus, TransactionEvent,
MeterValues with numeric values and `unitOfMeasure` with a power-of-ten `multiplier`).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Callable

from gateway.ports import Exchange
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import EnvironmentReading, MeterReading

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}
MAX_READINGS = 512  # identities kept per charger (readings and environment each)
# what stops being true when a charger is gone or its transaction ends: flows, not registers
_INSTANT = ("Power.", "Current.")
# device-model and vendor messages with environment readings: normalised as they come (they are rare);
# meter values are only filed on the relay path and normalised when shown (ChargerStatus.view)
_ENV_ACTIONS = frozenset({"NotifyEvent", "NotifyReport", "NotifyMonitoringReport", "OpenPeriodicEventStream",
                          "NotifyPeriodicEventStream", "DataTransfer"})
_VIEW = Normaliser()  # turns the filed samples into readings when a view is asked for


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso_ms(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


# the units power and energy may come in (no unit: the measurand's own, W or Wh; units.default_unit)
_SCALE = {"W": (1.0, POWER), "kW": (1000.0, POWER), "Wh": (1.0, ENERGY), "kWh": (1000.0, ENERGY)}


def read_samples(meter_values: Any, filed: dict[tuple[Any, ...], Any] | None = None, version: str = "",
                 evse: int = 0) -> dict[str, float]:
    """The latest Power.Active.Import (W) and Energy.Active.Import.Register (Wh) in a list of
    MeterValue objects of any version, by the telemetry's unit rules (no unit: W or Wh; a 2.x
    multiplier applied). Unphased values win; else the phases are summed (power).

    With `filed` (ChargerStatus.samples), every sampled value is also filed there under its
    identity (EVSE, measurand, phase, location; the spec's defaults filled in), in the same pass:
    this runs on the relay path for every MeterValues."""
    found: dict[str, float] = {}
    if not isinstance(meter_values, list):
        return found
    for mv in meter_values:
        if type(mv) is not dict or not isinstance(mv.get("sampledValue"), list):
            continue
        ts = mv.get("timestamp")
        phased: dict[str, float] = {}
        for sv in mv["sampledValue"]:
            if type(sv) is not dict:
                continue
            get = sv.get
            measurand = get("measurand") or ENERGY
            if filed is not None:
                key = (evse, measurand, get("phase"), get("location") or "Outlet")
                try:
                    if len(filed) < MAX_READINGS or key in filed:
                        filed[key] = (version, evse, ts, sv)
                except TypeError:  # a (schema-invalid) list or object as measurand, phase or location
                    pass
            if measurand != ENERGY and measurand != POWER:
                continue
            value = _number(get("value"))
            if value is None:
                continue
            uom = get("unitOfMeasure")
            multiplier: Any = 0
            if uom is None:  # 1.6
                unit = get("unit")
            elif type(uom) is dict:  # 2.x
                unit, multiplier = uom.get("unit"), uom.get("multiplier", 0)
            else:
                continue
            if unit is not None:
                known = _SCALE.get(unit)
                if known is None or known[1] != measurand:
                    continue  # not a unit of this quantity
                value *= known[0]
            if multiplier:
                if type(multiplier) is not int:
                    continue
                try:
                    value = round(value * 10.0 ** multiplier, 6)  # as units.tidy: no binary noise
                except OverflowError:
                    continue
                if value - value != 0.0:  # inf
                    continue
            phase = get("phase")
            if phase is None:
                found[measurand] = value
            elif phase in _PHASES and measurand == POWER:
                phased[measurand] = phased.get(measurand, 0.0) + value
        for measurand, value in phased.items():
            if measurand not in found:
                found[measurand] = value
    return found


class ChargerStatus:
    """What one charger said about itself."""

    def __init__(self, charger_id: str) -> None:
        self.charger_id = charger_id
        self.boot: dict[str, Any] | None = None
        self.connectors: dict[tuple[int, int | None], dict[str, Any]] = {}
        self.transactions: dict[str, dict[str, Any]] = {}  # open ones, by transaction id (as a string)
        self.last_seen_at: datetime | None = None  # formatted only when shown (the relay path stays cheap)
        self.connected = False
        self.protocol: str | None = None  # of the last connection
        self.transport: str | None = None  # of the last connection
        # the latest value of every reading, by identity (EVSE, measurand, phase, location)
        # the latest sampled value of every reading, by identity (EVSE, measurand, phase, location),
        # as the charger sent it: (version, EVSE, the MeterValue's timestamp, the sampledValue)
        self.samples: dict[tuple[Any, ...], tuple[str, int, Any, dict[str, Any]]] = {}
        self.environment: dict[tuple[str, str | None], EnvironmentReading] = {}  # by (name, component)

    def connector(self, evse: int, connector: int | None) -> dict[str, Any]:
        key = (evse, connector)
        entry = self.connectors.get(key)
        if entry is None:
            entry = self.connectors[key] = {
                "evse": evse, "connector": connector, "status": None, "error_code": None, "since": None,
                "power_w": None, "energy_wh": None, "transaction_id": None,
            }
        return entry

    def evse_entries(self, evse: int) -> list[dict[str, Any]]:
        entries = [c for (e, _), c in self.connectors.items() if e == evse]
        return entries or [self.connector(evse, None)]

    def row(self) -> dict[str, Any]:
        """What the store keeps of it (gateway/registry.py): no readings, no transactions."""
        return {"charger_id": self.charger_id, "protocol": self.protocol, "transport": self.transport or "",
                "last_seen": _iso(self.last_seen_at) if self.last_seen_at else "", "boot": self.boot,
                "connectors": [{k: c[k] for k in ("evse", "connector", "status", "error_code", "since")}
                               for _, c in sorted(self.connectors.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))],
                "state": {"connected": self.connected}}

    def restore(self, row: dict[str, Any]) -> None:
        """A charger from an earlier run (its store row): what it last said, not connected."""
        self.connected = False
        self.protocol = row.get("protocol") or self.protocol
        self.transport = row.get("transport") or self.transport
        boot = row.get("boot")
        if isinstance(boot, dict):
            self.boot = boot
        seen = row.get("last_seen")
        if isinstance(seen, str) and seen:
            try:
                when = datetime.fromisoformat(seen.replace("Z", "+00:00"))
                self.last_seen_at = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
            except ValueError:
                pass
        for c in row.get("connectors") or ():
            if isinstance(c, dict) and isinstance(c.get("evse"), int):
                connector = c.get("connector")
                entry = self.connector(c["evse"], connector if isinstance(connector, int) else None)
                for key in ("status", "error_code", "since"):
                    value = c.get(key)
                    entry[key] = value if isinstance(value, str) else None

    def gone(self) -> None:
        """Disconnected: nothing it reported as happening now holds (power and current readings
        are dropped; open transactions stay in the transaction log); the connectors keep their
        last status, shown as last known."""
        self.connected = False
        for c in self.connectors.values():
            c["power_w"] = None
        for tx in self.transactions.values():
            tx["power_w"] = None
        self.end_flows(None)

    def end_flows(self, evse: int | None) -> None:
        """Power and current readings of one EVSE (None: all) no longer hold."""
        for key in [k for k in self.samples if (evse is None or k[0] == evse) and str(k[1]).startswith(_INSTANT)]:
            del self.samples[key]

    def file(self, version: str, evse: int, meter_values: Any) -> dict[str, float]:
        """File each sampled value under its identity (converted only when shown); returns the
        power and energy among them (read_samples)."""
        return read_samples(meter_values, self.samples, version, evse)

    def readings(self) -> tuple[list[dict[str, Any]], list[EnvironmentReading]]:
        """The filed samples as readings (units by the telemetry's rules) and the environment
        readings among them (1.6 temperatures), normalised now."""
        groups: dict[tuple[str, int, Any], list[dict[str, Any]]] = {}
        for version, evse, ts, sv in self.samples.values():
            groups.setdefault((version, evse, ts if isinstance(ts, str) else None), []).append(sv)
        now = self.last_seen_at or datetime.now(timezone.utc)
        out: list[dict[str, Any]] = []
        env: list[EnvironmentReading] = []
        for (version, evse, ts), svs in groups.items():
            mv: dict[str, Any] = {"sampledValue": svs}
            if ts is not None:
                mv["timestamp"] = ts
            request = {"connectorId" if version == "ocpp1.6" else "evseId": evse, "meterValue": [mv]}
            try:
                records = _VIEW.records(self.charger_id, version, "MeterValues", request, {}, now)
            except Exception:  # noqa: BLE001 - a sample the normaliser cannot read is not shown
                continue
            for record in records:
                if type(record) is MeterReading:
                    for sample in record.samples:
                        out.append({"evse": record.evse, "measurand": sample.measurand, "phase": sample.phase,
                                    "location": sample.location, "value": sample.value, "unit": sample.unit,
                                    "ts": _iso_ms(record.ts), "context": sample.context})
                elif type(record) is EnvironmentReading:
                    env.append(record)
        out.sort(key=lambda r: (r["evse"], r["measurand"], r["phase"] or "", r["location"] or ""))
        return out, env

    def keep(self, record: EnvironmentReading) -> None:
        key = (record.name, record.component)
        if len(self.environment) < MAX_READINGS or key in self.environment:
            self.environment[key] = record

    def view(self) -> dict[str, Any]:
        readings, temperatures = self.readings()
        environment = dict(self.environment)
        for e in temperatures:
            environment[(e.name, e.component)] = e
        return {
            "transport": self.transport,
            "boot": self.boot,
            "last_seen": _iso(self.last_seen_at) if self.last_seen_at else None,
            "connectors": [dict(c) for _, c in sorted(self.connectors.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))],
            "open_transactions": [dict(t) for t in self.transactions.values()],
            "readings": readings,
            "environment": [{"name": e.name, "component": e.component, "value": e.value, "unit": e.unit,
                             "ts": _iso_ms(e.ts), "source": e.source}
                            for _, e in sorted(environment.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))],
        }


class StatusBook:
    """Session observer holding a ChargerStatus per charger (bounded: the oldest disconnected
    chargers are forgotten first when more than `max_chargers` ids have been seen)."""

    def __init__(self, max_chargers: int = 5000) -> None:
        self.max_chargers = max_chargers
        self.chargers: OrderedDict[str, ChargerStatus] = OrderedDict()
        # told which charger changed what the store keeps of it (gateway/registry.py)
        self.on_change: Callable[[str], None] | None = None
        self.normaliser = Normaliser()  # environment readings of the device-model and vendor messages
        self.failures = 0
        self._handlers: dict[str, Callable[..., None] | None] = {}  # action -> its _on_ method (None: none)

    def row(self, charger_id: str) -> dict[str, Any] | None:
        entry = self.chargers.get(charger_id)
        return None if entry is None else entry.row()

    def _changed(self, charger_id: str) -> None:
        if self.on_change is not None:
            self.on_change(charger_id)

    def get(self, charger_id: str) -> ChargerStatus | None:
        return self.chargers.get(charger_id)

    def _entry(self, charger_id: str) -> ChargerStatus:
        entry = self.chargers.get(charger_id)
        if entry is None:
            entry = self.chargers[charger_id] = ChargerStatus(charger_id)
            if len(self.chargers) > self.max_chargers:
                for cid, old in list(self.chargers.items()):
                    if not old.connected and cid != charger_id:
                        del self.chargers[cid]
                        self._changed(cid)
                        break
        return entry

    # -- SessionObserver ------------------------------------------------------------------------

    def session_event(self, session: Any, event: str) -> None:
        if event == "forgotten":
            self.normaliser.forget(session.charger_id)
            if self.chargers.pop(session.charger_id, None) is not None:
                self._changed(session.charger_id)
            return
        if event == "known":  # from an earlier run (gateway/registry.py): listed, not connected
            self._entry(session.charger_id).restore(session.row)
            return
        if event not in ("connected", "known") and session.charger_id not in self.chargers:
            return  # forgotten (or evicted) meanwhile: nothing to say about it
        entry = self._entry(session.charger_id)
        if event == "connected":
            entry.connected = True
            entry.protocol = session.version.value
            link = getattr(session, "link", None)
            entry.transport = getattr(link, "transport", None) or entry.transport
            entry.last_seen_at = datetime.now(timezone.utc)
            self._changed(session.charger_id)
        elif event == "disconnected":
            entry.gone()
            self._changed(session.charger_id)

    def exchange(self, session: Any, ex: Exchange) -> None:
        entry = self.chargers.get(ex.charger_id) or self._entry(ex.charger_id)
        entry.last_seen_at = ex.received_at
        if ex.origin != "charger":
            return
        version = ex.version._value_  # `.value` without the enum property's descriptor call
        if ex.action in _ENV_ACTIONS:
            try:
                records = self.normaliser.records(ex.charger_id, version, ex.action, ex.request, ex.response,
                                                  ex.received_at)
            except Exception:  # noqa: BLE001 - a payload the normaliser did not foresee: no readings
                self.failures += 1
                records = []
            for record in records:
                if type(record) is EnvironmentReading:
                    entry.keep(record)
        try:
            handler = self._handlers[ex.action]
        except KeyError:  # once per action: a getattr that misses costs an AttributeError every time
            handler = self._handlers[ex.action] = getattr(self, "_on_" + ex.action, None)
        if handler is not None:
            handler(entry, ex, ex.request, ex.response or {}, version == "ocpp1.6")
            if ex.action in ("BootNotification", "StatusNotification"):
                self._changed(ex.charger_id)

    # -- per action -----------------------------------------------------------------------------

    def _on_BootNotification(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        if v16:
            entry.boot = {"vendor": req.get("chargePointVendor"), "model": req.get("chargePointModel"),
                          "serial_number": req.get("chargePointSerialNumber"),
                          "firmware_version": req.get("firmwareVersion")}
        else:
            station = req.get("chargingStation") or {}
            entry.boot = {"vendor": station.get("vendorName"), "model": station.get("model"),
                          "serial_number": station.get("serialNumber"),
                          "firmware_version": station.get("firmwareVersion")}

    def _on_StatusNotification(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        if v16:
            evse, connector, status, error = req.get("connectorId"), None, req.get("status"), req.get("errorCode")
        else:
            evse, connector, status, error = req.get("evseId"), req.get("connectorId"), req.get("connectorStatus"), None
        if not isinstance(evse, int):
            return
        c = entry.connector(evse, connector if isinstance(connector, int) else None)
        c["status"] = status
        c["error_code"] = error
        c["since"] = req.get("timestamp") or _iso(ex.received_at)

    def _meter(self, entry: ChargerStatus, evse: Any, meter_values: Any, transaction_id: str | None,
               version: str) -> None:
        if not isinstance(evse, int) or not isinstance(meter_values, list):
            return
        samples = entry.file(version, evse, meter_values)
        if not samples:
            return
        for c in entry.evse_entries(evse):
            if POWER in samples:
                c["power_w"] = samples[POWER]
            if ENERGY in samples:
                c["energy_wh"] = samples[ENERGY]
        tx = entry.transactions.get(transaction_id) if transaction_id is not None else None
        if tx is None and entry.transactions:
            tx = next((t for t in entry.transactions.values() if t["evse"] == evse), None)
        if tx is not None:
            if POWER in samples:
                tx["power_w"] = samples[POWER]
            if ENERGY in samples:
                if tx["meter_start_wh"] is None:
                    tx["meter_start_wh"] = samples[ENERGY]
                tx["energy_wh"] = max(0.0, samples[ENERGY] - tx["meter_start_wh"])

    def _on_MeterValues(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        evse = req.get("connectorId") if v16 else req.get("evseId")
        tid = req.get("transactionId")
        self._meter(entry, evse, req.get("meterValue"), str(tid) if tid is not None else None, ex.version._value_)

    def _open(self, entry: ChargerStatus, tid: str, evse: int, connector: int | None, started: str,
              meter_start: float | None) -> dict[str, Any]:
        tx = entry.transactions.get(tid)
        if tx is None:
            tx = entry.transactions[tid] = {"transaction_id": tid, "evse": evse, "connector": connector,
                                            "started_at": started, "meter_start_wh": meter_start,
                                            "energy_wh": 0.0 if meter_start is not None else None,
                                            "power_w": None}
        for c in entry.evse_entries(evse):
            c["transaction_id"] = tid
        return tx

    def _close(self, entry: ChargerStatus, tid: str) -> None:
        tx = entry.transactions.pop(tid, None)
        if tx is not None:
            for c in entry.evse_entries(tx["evse"]):
                if c["transaction_id"] == tid:
                    c["transaction_id"] = None
                    c["power_w"] = None
            entry.end_flows(tx["evse"])

    def _on_StartTransaction(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        tid = res.get("transactionId")
        evse = req.get("connectorId")
        if tid is None or not isinstance(evse, int):
            return
        self._open(entry, str(tid), evse, None, req.get("timestamp") or _iso(ex.received_at),
                   _number(req.get("meterStart")))

    def _on_StopTransaction(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        tid = req.get("transactionId")
        if tid is not None:
            tx = entry.transactions.get(str(tid))
            data = req.get("transactionData")
            if tx is not None and isinstance(data, list):
                entry.file(ex.version.value, tx["evse"], data)
            self._close(entry, str(tid))

    def _on_TransactionEvent(self, entry: ChargerStatus, ex: Exchange, req: dict, res: dict, v16: bool) -> None:
        info = req.get("transactionInfo") or {}
        tid = info.get("transactionId")
        if not isinstance(tid, str):
            return
        evse_obj = req.get("evse") or {}
        tx = entry.transactions.get(tid)
        evse = evse_obj.get("id", tx["evse"] if tx else None)
        if not isinstance(evse, int):
            return
        if req.get("eventType") == "Ended":
            self._meter(entry, evse, req.get("meterValue"), tid, ex.version.value)
            self._close(entry, tid)
            return
        if tx is None:
            started = req.get("timestamp") or _iso(ex.received_at)
            self._open(entry, tid, evse, evse_obj.get("connectorId"), started, None)
        self._meter(entry, evse, req.get("meterValue"), tid, ex.version.value)
