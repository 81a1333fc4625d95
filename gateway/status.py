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
from gateway.telemetry import units
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import EnvironmentReading, MeterReading, MeterSample

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}
MAX_READINGS = 512  # identities kept per charger (readings and environment each)
# what stops being true when a charger is gone or its transaction ends: flows, not registers
_INSTANT = ("Power.", "Current.")
_READING_ACTIONS = frozenset({"MeterValues", "StartTransaction", "StopTransaction", "TransactionEvent",
                              "NotifyEvent", "NotifyReport", "NotifyMonitoringReport", "OpenPeriodicEventStream",
                              "NotifyPeriodicEventStream", "DataTransfer"})


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


def summarise(samples: tuple[MeterSample, ...]) -> dict[str, float]:
    """Power.Active.Import (W) and Energy.Active.Import.Register (Wh) of one normalised reading:
    the unphased value wins, else the phases are summed (power)."""
    found: dict[str, float] = {}
    phased: dict[str, float] = {}
    for s in samples:
        m = s.measurand
        if (m == ENERGY and s.unit == "Wh") or (m == POWER and s.unit == "W"):
            if s.phase is None:
                found[m] = s.value
            elif m == POWER and s.phase in _PHASES:
                phased[m] = phased.get(m, 0.0) + s.value
    for m, value in phased.items():
        found.setdefault(m, value)
    return found


def read_samples(meter_values: Any) -> dict[str, float]:
    """The latest Power.Active.Import (W) and Energy.Active.Import.Register (Wh) in a list of
    MeterValue objects of any version. Unphased values win; else the phases are summed (power)."""
    found: dict[str, float] = {}
    if not isinstance(meter_values, list):
        return found
    for mv in meter_values:
        if not isinstance(mv, dict) or not isinstance(mv.get("sampledValue"), list):
            continue
        phased: dict[str, float] = {}
        for sv in mv["sampledValue"]:
            if not isinstance(sv, dict):
                continue
            measurand = sv.get("measurand", ENERGY)
            if measurand not in (ENERGY, POWER):
                continue
            value = _number(sv.get("value"))
            if value is None:
                continue
            uom = sv.get("unitOfMeasure")
            try:  # the telemetry's unit rules: no unit is the measurand's own (W, Wh), 2.x multiplier first
                if isinstance(uom, dict):  # 2.x
                    multiplier = uom.get("multiplier", 0)
                    value, unit = units.canonical(value, uom.get("unit"), measurand=measurand,
                                                  multiplier=multiplier if isinstance(multiplier, int) else 0)
                else:  # 1.6
                    value, unit = units.canonical(value, sv.get("unit"), measurand=measurand)
            except (ValueError, OverflowError):
                continue
            if unit != ("Wh" if measurand == ENERGY else "W"):
                continue
            phase = sv.get("phase")
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
        self.readings: dict[tuple[int, str, str | None, str | None], dict[str, Any]] = {}
        self.environment: dict[tuple[str, str | None], dict[str, Any]] = {}  # by (name, component)

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
        for key in [k for k in self.readings if (evse is None or k[0] == evse) and k[1].startswith(_INSTANT)]:
            del self.readings[key]

    def keep(self, record: MeterReading | EnvironmentReading) -> None:
        ts = _iso_ms(record.ts)
        if type(record) is MeterReading:
            readings = self.readings
            for s in record.samples:
                key = (record.evse, s.measurand, s.phase, s.location)
                if key in readings or len(readings) < MAX_READINGS:
                    readings[key] = {"value": s.value, "unit": s.unit, "ts": ts, "context": s.context}
        elif type(record) is EnvironmentReading:
            key2 = (record.name, record.component)
            if key2 in self.environment or len(self.environment) < MAX_READINGS:
                self.environment[key2] = {"value": record.value, "unit": record.unit, "ts": ts,
                                          "source": record.source}

    def view(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "boot": self.boot,
            "last_seen": _iso(self.last_seen_at) if self.last_seen_at else None,
            "connectors": [dict(c) for _, c in sorted(self.connectors.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))],
            "open_transactions": [dict(t) for t in self.transactions.values()],
            "readings": [{"evse": k[0], "measurand": k[1], "phase": k[2], "location": k[3], **v}
                         for k, v in sorted(self.readings.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "",
                                                                                   kv[0][3] or ""))],
            "environment": [{"name": k[0], "component": k[1], **v}
                            for k, v in sorted(self.environment.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))],
        }


class StatusBook:
    """Session observer holding a ChargerStatus per charger (bounded: the oldest disconnected
    chargers are forgotten first when more than `max_chargers` ids have been seen)."""

    def __init__(self, max_chargers: int = 5000) -> None:
        self.max_chargers = max_chargers
        self.chargers: OrderedDict[str, ChargerStatus] = OrderedDict()
        # told which charger changed what the store keeps of it (gateway/registry.py)
        self.on_change: Callable[[str], None] | None = None
        self.normaliser = Normaliser()  # the readings by the telemetry's unit and identity rules
        self._records: list[Any] = []  # those of the exchange being read
        self.failures = 0

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
        entry = self._entry(ex.charger_id)
        entry.last_seen_at = ex.received_at
        if ex.origin != "charger":
            return
        if ex.action in _READING_ACTIONS:
            try:
                records = self.normaliser.records(ex.charger_id, ex.version.value, ex.action, ex.request,
                                                  ex.response, ex.received_at)
            except Exception:  # noqa: BLE001 - a payload the normaliser did not foresee: no readings
                self.failures += 1
                records = []
            for record in records:
                if type(record) is MeterReading or type(record) is EnvironmentReading:
                    entry.keep(record)
            self._records = records
        else:
            self._records = []
        handler = getattr(self, "_on_" + ex.action, None)
        if handler is not None:
            handler(entry, ex, ex.request, ex.response or {}, ex.version.value == "ocpp1.6")
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

    def _meter(self, entry: ChargerStatus, evse: Any, meter_values: Any, transaction_id: str | None) -> None:
        """Power and energy of the exchange's readings (normalised once, in `exchange`)."""
        if not isinstance(evse, int) or not meter_values:
            return
        samples: dict[str, float] = {}
        for record in self._records:
            if type(record) is MeterReading:
                samples.update(summarise(record.samples))
        if not samples:
            return
        for c in entry.evse_entries(evse):
            if POWER in samples:
                c["power_w"] = samples[POWER]
            if ENERGY in samples:
                c["energy_wh"] = samples[ENERGY]
        tx = entry.transactions.get(transaction_id) if transaction_id is not None else None
        if tx is None:
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
        self._meter(entry, evse, req.get("meterValue"), str(tid) if tid is not None else None)

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
            self._meter(entry, evse, req.get("meterValue"), tid)
            self._close(entry, tid)
            return
        if tx is None:
            started = req.get("timestamp") or _iso(ex.received_at)
            self._open(entry, tid, evse, evse_obj.get("connectorId"), started, None)
        self._meter(entry, evse, req.get("meterValue"), tid)
