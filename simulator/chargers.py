"""The simulated chargers and the driver behind `ocpp-gateway simulate` (see simulator/__init__.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ocpp import v16, v21, v201
from ocpp.charge_point import ChargePoint
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, MessageType, unpack, validate_payload
from ocpp.routing import after, on
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from simulator import SUBPROTOCOL

log = logging.getLogger("simulator")

VOLTAGE = 230.0
STEP_TIMEOUT = 30.0  # s a peer has to answer one CALL
FINISH_WITHIN = 10.0  # s on Ctrl-C for a charger to end its transaction and have its calls answered


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ stats


@dataclass
class Stats:
    """What every simulated charger did; summed over all of them."""

    sent: Counter[str] = field(default_factory=Counter)  # CALLs the chargers sent, per action
    answered: Counter[str] = field(default_factory=Counter)  # ... answered with a CALLRESULT
    errors: Counter[str] = field(default_factory=Counter)  # ... CALLERROR, timeout or link lost
    error_codes: Counter[str] = field(default_factory=Counter)  # "Action: code"
    received: Counter[str] = field(default_factory=Counter)  # CALLs the chargers got, per action
    replied: Counter[str] = field(default_factory=Counter)  # ... answered with a CALLRESULT
    refused: Counter[str] = field(default_factory=Counter)  # ... answered with a CALLERROR
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    resets: int = 0
    transactions_started: int = 0
    transactions_ended: int = 0
    energy_wh: float = 0.0
    booted: set[str] = field(default_factory=set)
    connected: set[str] = field(default_factory=set)  # connected now
    stayed: set[str] = field(default_factory=set)  # connected until the end of the run
    profiles_set: int = 0
    tags_refused: int = 0  # Authorize / transaction start answered with a status other than Accepted

    def as_dict(self, chargers: int, elapsed: float) -> dict[str, Any]:
        actions = sorted(set(self.sent) | set(self.received))
        return {
            "chargers": chargers,
            "booted": len(self.booted),
            "connected_at_end": len(self.stayed),
            "elapsed_s": round(elapsed, 1),
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "resets": self.resets,
            "transactions_started": self.transactions_started,
            "transactions_ended": self.transactions_ended,
            "energy_wh": round(self.energy_wh, 1),
            "charging_profiles_set": self.profiles_set,
            "id_tags_refused": self.tags_refused,
            "sent": {a: {"sent": self.sent[a], "answered": self.answered[a], "errors": self.errors[a]}
                     for a in actions if self.sent[a]},
            "received": {a: {"received": self.received[a], "answered": self.replied[a], "errors": self.refused[a]}
                         for a in actions if self.received[a]},
            "error_codes": dict(self.error_codes),
        }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['booted']} of {summary['chargers']} chargers booted, {summary['connected_at_end']} connected at the "
        f"end, {summary['elapsed_s']} s; {summary['connects']} connections ({summary['connect_failures']} failed "
        f"dials, {summary['disconnects']} drops, {summary['resets']} resets)",
        f"transactions: {summary['transactions_started']} started, {summary['transactions_ended']} ended, "
        f"{summary['energy_wh'] / 1000:.2f} kWh; charging profiles set: {summary['charging_profiles_set']}",
        "",
        f"{'ACTION':<28} {'DIRECTION':<18} {'MESSAGES':>8} {'ANSWERED':>8} {'ERRORS':>6}",
    ]
    for action, row in summary["sent"].items():
        lines.append(f"{action:<28} {'charger -> server':<18} {row['sent']:>8} {row['answered']:>8} {row['errors']:>6}")
    for action, row in summary["received"].items():
        lines.append(f"{action:<28} {'server -> charger':<18} {row['received']:>8} {row['answered']:>8} "
                     f"{row['errors']:>6}")
    if summary["transactions_started"] == 0 and summary["id_tags_refused"]:
        lines.append("")
        lines.append(f"every id tag was refused ({summary['id_tags_refused']} times): let the gateway accept unknown tags "
                     "([auth].unknown_id_tags = \"accept\", or OCPPGW_AUTH__UNKNOWN_ID_TAGS=accept) or give a tag it "
                     "knows with --id-tag")
    if summary["error_codes"]:
        lines.append("")
        lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(summary["error_codes"].items())))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- one charger state


@dataclass
class Profile:
    profile_id: int
    stack_level: int
    purpose: str
    transaction_id: str | None
    limit_w: float  # the first period's limit, converted to W


class CallFailed(Exception):
    pass


class _Sim:
    """Behaviour shared by the 1.6 and 2.x chargers (mixed into an `ocpp` ChargePoint)."""

    version: str
    _call_result: Any
    _ocpp_version: str
    _connection: ClientConnection
    _call_lock: asyncio.Lock
    _response_timeout: float
    _get_specific_response: Any
    id: str

    def setup(self, stats: Stats, rng: random.Random, phases: int, max_a: float, id_tag: str = "",
              session: float = 60.0) -> None:
        self.stats = stats
        self.session = session
        self.id_tag = id_tag
        self.rng = rng
        self.phases = phases
        self.max_a = max_a
        self.heartbeat_interval = 60.0
        self.wake = asyncio.Event()  # something for the life loop to do (remote start/stop, reset, trigger)
        self.stop_at = float("inf")  # the loop's time to end this charger's run (sooner on Ctrl-C: finish)
        self.remote_start: str | None = None  # id tag of a remote start to run
        self.remote_stop = False
        self.reset_requested = False
        self.triggers: list[str] = []
        self.tx_id: str | None = None
        self.profiles: dict[int, Profile] = {}
        self.config: dict[str, str] = {"HeartbeatInterval": "60", "MeterValueSampleInterval": "10",
                                       "NumberOfConnectors": "1", "ChargeProfileMaxStackLevel": "10",
                                       "ChargingScheduleAllowedChargingRateUnit": "Current,Power"}
        self.available = True
        self._incoming: dict[str, str] = {}  # message id -> action of CALLs being answered
        self.energy_wh = float(rng.randint(0, 50_000))
        self.seq_no = 0

    # -- counting every frame ------------------------------------------------------------------
    async def route_message(self, raw_msg: str | bytes) -> None:
        with contextlib.suppress(Exception):
            msg = unpack(raw_msg)
            if msg.message_type_id == MessageType.Call:
                self.stats.received[msg.action] += 1
                self._incoming[msg.unique_id] = msg.action
        await ChargePoint.route_message(self, raw_msg)

    async def _send(self, message: str) -> None:
        with contextlib.suppress(Exception):
            frame = json.loads(message)
            if frame[0] in (3, 4):
                action = self._incoming.pop(frame[1], None)
                if action is not None:
                    (self.stats.replied if frame[0] == 3 else self.stats.refused)[action] += 1
        await self._connection.send(message)

    async def req(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one CALL (validated against the `ocpp` package's schema) and return the answer's payload."""
        msg = Call(str(uuid.uuid4()), action, payload)
        await validate_payload(msg, self._ocpp_version)
        self.stats.sent[action] += 1
        try:
            async with self._call_lock:
                await self._connection.send(msg.to_json())
                response = await self._get_specific_response(msg.unique_id, self._response_timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            self.stats.errors[action] += 1
            self.stats.error_codes[f"{action}: timeout"] += 1
            raise CallFailed(f"{action}: no answer within {self._response_timeout} s") from exc
        except (ConnectionClosed, asyncio.CancelledError):
            # the link closed (or the run ended) before the answer came
            self.stats.errors[action] += 1
            self.stats.error_codes[f"{action}: connection closed"] += 1
            raise
        if response.message_type_id == MessageType.CallError:
            self.stats.errors[action] += 1
            self.stats.error_codes[f"{action}: {response.error_code}"] += 1
            raise CallFailed(f"{action}: {response.error_code} {response.error_description}")
        self.stats.answered[action] += 1
        return response.payload

    async def try_req(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self.req(action, payload)
        except CallFailed as exc:
            log.debug("%s: %s", self.id, exc)
            return None

    # -- charging ------------------------------------------------------------------------------
    def power_w(self) -> float:
        """What the simulated EV draws now: its maximum, capped by the charging profile in force."""
        nominal = self.max_a * VOLTAGE * self.phases
        if not self.available:
            return 0.0
        tx = [p for p in self.profiles.values() if p.purpose == "TxProfile"
              and p.transaction_id in (None, self.tx_id)]
        pool = tx or [p for p in self.profiles.values() if p.purpose == "TxDefaultProfile"]
        if pool:
            best = max(pool, key=lambda p: p.stack_level)
            nominal = min(nominal, best.limit_w)
        return max(0.0, nominal)

    def _limit_w(self, schedule: dict[str, Any]) -> float:
        periods = schedule.get("charging_schedule_period") or [{}]
        if periods[0].get("limit") is None:  # 2.1 may give a setpoint instead: no cap
            return float("inf")
        limit = float(periods[0]["limit"])
        phases = int(periods[0].get("number_phases", self.phases))
        if schedule.get("charging_rate_unit") == "A":
            return limit * VOLTAGE * phases
        return limit

    def store_profile(self, profile: dict[str, Any]) -> None:
        schedules = profile["charging_schedule"]
        schedule = schedules[0] if isinstance(schedules, list) else schedules
        pid = int(profile.get("charging_profile_id", profile.get("id", 0)))
        tx = profile.get("transaction_id")
        self.profiles[pid] = Profile(pid, int(profile["stack_level"]), str(profile["charging_profile_purpose"]),
                                     None if tx is None else str(tx), self._limit_w(schedule))
        self.stats.profiles_set += 1

    def clear_profiles(self, profile_id: int | None, purpose: str | None, stack_level: int | None) -> bool:
        gone = [pid for pid, p in self.profiles.items()
                if (profile_id is None or pid == profile_id) and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)]
        for pid in gone:
            del self.profiles[pid]
        return bool(gone)

    def _accepted(self, answer: dict[str, Any] | None, key: str) -> bool:
        if answer is None:
            return False
        info = answer.get(key)
        if info is not None and info.get("status") != "Accepted":
            self.stats.tags_refused += 1
            return False
        return True

    def poke(self) -> None:
        self.wake.set()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake early when a command asks for something."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, seconds))

    # -- the life of a connection: version-specific pieces are below -------------------------
    async def life(self, stop_at: float, rate: float) -> None:
        loop = asyncio.get_running_loop()
        self.stop_at = stop_at
        while not await self.boot():  # Pending / Rejected: ask again after the interval it gave
            if loop.time() + self.heartbeat_interval >= self.stop_at:
                return
            await asyncio.sleep(self.heartbeat_interval)
        self.stats.booted.add(self.id)
        await self.status("Available")
        last_heartbeat = loop.time()
        while loop.time() < self.stop_at and not self.reset_requested:
            # idle between sessions; answer triggers, heartbeat when due
            idle_until = min(self.stop_at, loop.time() + self.rng.uniform(3.0, 10.0))
            while loop.time() < min(idle_until, self.stop_at) and not self.reset_requested and self.remote_start is None:
                await self._handle_triggers()
                if loop.time() - last_heartbeat >= self.heartbeat_interval:
                    await self.try_req("Heartbeat", {})
                    last_heartbeat = loop.time()
                self.wake.clear()
                await self.pause(min(idle_until, last_heartbeat + self.heartbeat_interval) - loop.time())
            if loop.time() >= self.stop_at or self.reset_requested or not self.available:
                continue
            tag = self.remote_start or self.id_tag or f"SIM{self.rng.randint(1000, 9999)}"
            remote = self.remote_start is not None
            self.remote_start = None
            self.remote_stop = False
            if not remote and not await self.authorize(tag):
                continue
            if not await self.start_transaction(tag, remote):
                continue
            self.stats.transactions_started += 1
            end = min(self.stop_at, loop.time() + self.rng.uniform(0.5, 1.5) * self.session)
            tick = 1.0 / rate
            n = 0
            last = loop.time()
            next_tick = last + tick
            reason = "Local"
            while loop.time() < min(end, self.stop_at):
                self.wake.clear()
                await self.pause(min(next_tick, end) - loop.time())
                now = loop.time()
                wh = self.power_w() * (now - last) / 3600.0  # the power in force since the last look
                self.energy_wh += wh
                self.stats.energy_wh += wh
                last = now
                if self.remote_stop:
                    reason = "Remote"
                    break
                if self.reset_requested:
                    reason = "Reset"
                    break
                await self._handle_triggers()
                if now < next_tick:
                    continue  # woken by a command (a profile, a trigger): no meter value yet
                next_tick += tick
                await self.meter_values(n)
                n += 1
                if n % 5 == 1:
                    await self.environment()
            await self.stop_transaction(reason)
            self.stats.transactions_ended += 1
            self.tx_id = None
            self.profiles = {pid: p for pid, p in self.profiles.items() if p.purpose != "TxProfile"}
            await self.status("Finishing")
            await self.status("Available")
        await self._handle_triggers()

    def finish(self) -> None:
        """End the run now as at its end: the transaction under way stops with its StopTransaction
        (or TransactionEvent Ended) and the call in flight gets its answer (Ctrl-C)."""
        self.stop_at = min(self.stop_at, asyncio.get_running_loop().time())
        self.wake.set()

    async def _handle_triggers(self) -> None:
        while self.triggers:
            what = self.triggers.pop(0)
            if what.startswith("NotifyReport:"):
                await self.report(int(what.split(":", 1)[1]))
            elif what == "BootNotification":
                await self.boot()
            elif what == "Heartbeat":
                await self.try_req("Heartbeat", {})
            elif what == "StatusNotification":
                await self.status("Charging" if self.tx_id else "Available")
            elif what == "MeterValues":
                await self.meter_values(0, triggered=True)

    def samples(self, context: str) -> list[dict[str, Any]]:
        power = self.power_w()
        current = power / (VOLTAGE * self.phases)
        soc = min(100, 20 + int(self.energy_wh / 1000) % 80)
        return [
            {"measurand": "Energy.Active.Import.Register", "value": round(self.energy_wh, 1), "unit": "Wh"},
            {"measurand": "Power.Active.Import", "value": round(power, 1), "unit": "W"},
            {"measurand": "Current.Import", "value": round(current, 2), "unit": "A", "phase": "L1"},
            {"measurand": "Voltage", "value": VOLTAGE, "unit": "V", "phase": "L1-N"},
            {"measurand": "SoC", "value": soc, "unit": "Percent", "location": "EV"},
            {"measurand": "Temperature", "value": round(self.temperature(), 1), "unit": "Celsius", "location": "Body"},
        ]

    def temperature(self) -> float:
        return 25.0 + self.power_w() / 1000.0 + self.rng.uniform(-0.5, 0.5)

    # version-specific (overridden)
    async def boot(self) -> bool:
        raise NotImplementedError

    async def status(self, status: str) -> None: ...

    async def authorize(self, tag: str) -> bool:
        raise NotImplementedError

    async def start_transaction(self, tag: str, remote: bool) -> bool:
        raise NotImplementedError

    async def meter_values(self, n: int, triggered: bool = False) -> None: ...
    async def environment(self) -> None: ...

    async def report(self, request_id: int) -> None: ...
    async def stop_transaction(self, reason: str) -> None: ...


class Sim16(_Sim, v16.ChargePoint):
    version = "1.6"

    async def boot(self) -> bool:
        answer = await self.req("BootNotification", {"chargePointVendor": "Simulator", "chargePointModel": "Sim-AC16",
                                                     "chargePointSerialNumber": self.id, "firmwareVersion": "1.0"})
        self.heartbeat_interval = float(answer.get("interval") or 60) or 60.0
        return answer.get("status") == "Accepted"

    async def status(self, status: str) -> None:
        await self.try_req("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": status,
                                                  "timestamp": utcnow()})

    async def authorize(self, tag: str) -> bool:
        answer = await self.try_req("Authorize", {"idTag": tag})
        return self._accepted(answer, "idTagInfo")

    async def start_transaction(self, tag: str, remote: bool) -> bool:
        await self.status("Preparing")
        answer = await self.try_req("StartTransaction", {"connectorId": 1, "idTag": tag,
                                                         "meterStart": int(self.energy_wh), "timestamp": utcnow()})
        if answer is None or not self._accepted(answer, "idTagInfo"):
            await self.status("Available")
            return False
        self.tx_id = str(answer["transactionId"])
        await self.status("Charging")
        return True

    def _sampled(self, context: str) -> list[dict[str, Any]]:
        out = []
        for s in self.samples(context):
            item = {"value": str(s["value"]), "context": context, "measurand": s["measurand"], "unit": s["unit"]}
            for k in ("phase", "location"):
                if k in s:
                    item[k] = s[k]
            out.append(item)
        return out

    async def meter_values(self, n: int, triggered: bool = False) -> None:
        payload: dict[str, Any] = {"connectorId": 1, "meterValue": [{
            "timestamp": utcnow(), "sampledValue": self._sampled("Trigger" if triggered else "Sample.Periodic")}]}
        if self.tx_id is not None:
            payload["transactionId"] = int(self.tx_id)
        await self.try_req("MeterValues", payload)

    async def environment(self) -> None:
        data = {"timestamp": utcnow(), "readings": [
            {"name": "temperature", "value": round(self.temperature(), 1), "unit": "Celsius"},
            {"name": "humidity", "value": round(self.rng.uniform(30, 70), 1), "unit": "RH"}]}
        await self.try_req("DataTransfer", {"vendorId": "gateway.environment", "messageId": "Environment",
                                            "data": json.dumps(data)})

    async def stop_transaction(self, reason: str) -> None:
        if self.tx_id is None:
            return
        reason = {"Reset": self.reset_type}.get(reason, reason)
        await self.try_req("StopTransaction", {"transactionId": int(self.tx_id), "meterStop": int(self.energy_wh),
                                               "timestamp": utcnow(), "reason": reason,
                                               "transactionData": [{"timestamp": utcnow(),
                                                                    "sampledValue": self._sampled("Transaction.End")}]})

    # -- commands ------------------------------------------------------------------------------
    reset_type = "SoftReset"

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        self.reset_type = "HardReset" if type == "Hard" else "SoftReset"
        return v16.call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, **_: Any) -> None:
        self.reset_requested = True
        self.poke()

    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, **kw: Any) -> Any:
        if self.tx_id is not None or not self.available:
            return v16.call_result.RemoteStartTransaction(status="Rejected")
        if kw.get("charging_profile"):
            self.store_profile(kw["charging_profile"])
        self.remote_start = id_tag
        self.poke()
        return v16.call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        if self.tx_id is None or str(transaction_id) != self.tx_id:
            return v16.call_result.RemoteStopTransaction(status="Rejected")
        self.remote_stop = True
        self.poke()
        return v16.call_result.RemoteStopTransaction(status="Accepted")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, **_: Any) -> Any:
        if requested_message not in ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues"):
            return v16.call_result.TriggerMessage(status="NotImplemented")
        self.triggers.append(requested_message)
        self.poke()
        return v16.call_result.TriggerMessage(status="Accepted")

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        keys = key if key else list(self.config)
        known = [{"key": k, "readonly": False, "value": self.config[k]} for k in keys if k in self.config]
        unknown = [k for k in keys if k not in self.config]
        return v16.call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        if key not in self.config:
            return v16.call_result.ChangeConfiguration(status="NotSupported")
        self.config[key] = value
        return v16.call_result.ChangeConfiguration(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        self.available = type == "Operative"
        return v16.call_result.ChangeAvailability(status="Scheduled" if self.tx_id and not self.available
                                                  else "Accepted")

    @on("UnlockConnector")
    def on_unlock(self, **_: Any) -> Any:
        return v16.call_result.UnlockConnector(status="Unlocked")

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return v16.call_result.DataTransfer(status="UnknownVendorId")

    @on("SetChargingProfile")
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        self.store_profile(cs_charging_profiles)
        self.poke()
        return v16.call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, id: int | None = None, charging_profile_purpose: str | None = None,
                         stack_level: int | None = None, **_: Any) -> Any:
        found = self.clear_profiles(id, charging_profile_purpose, stack_level)
        self.poke()
        return v16.call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")


class _Sim2x(_Sim):
    def _sampled(self, context: str) -> list[dict[str, Any]]:
        out = []
        for s in self.samples(context):
            if s["measurand"] == "Temperature":
                continue  # 2.x reports it as a device-model variable (NotifyEvent)
            item: dict[str, Any] = {"value": s["value"], "context": context, "measurand": s["measurand"],
                                    "unitOfMeasure": {"unit": s["unit"]}}
            for k in ("phase", "location"):
                if k in s:
                    item[k] = s[k]
            out.append(item)
        return out

    def _event(self, event_type: str, trigger: str, context: str, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "eventType": event_type, "timestamp": utcnow(), "triggerReason": trigger, "seqNo": self.seq_no,
            "transactionInfo": {"transactionId": self.tx_id}, "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": utcnow(), "sampledValue": self._sampled(context)}],
        }
        self.seq_no += 1
        payload.update(extra)
        return payload

    async def boot(self) -> bool:
        reason = "RemoteReset" if self.stats.resets and self.id in self.stats.booted else "PowerUp"
        answer = await self.req("BootNotification", {
            "chargingStation": {"model": "Sim-AC2x", "vendorName": "Simulator", "serialNumber": self.id,
                                "firmwareVersion": "1.0"}, "reason": reason})
        self.heartbeat_interval = float(answer.get("interval") or 60) or 60.0
        return answer.get("status") == "Accepted"

    async def status(self, status: str) -> None:
        connector = {"Preparing": "Occupied", "Charging": "Occupied", "Finishing": "Occupied"}.get(status, status)
        if not self.available:
            connector = "Unavailable"
        await self.try_req("StatusNotification", {"timestamp": utcnow(), "connectorStatus": connector,
                                                  "evseId": 1, "connectorId": 1})

    async def authorize(self, tag: str) -> bool:
        answer = await self.try_req("Authorize", {"idToken": {"idToken": tag, "type": "ISO14443"}})
        return self._accepted(answer, "idTokenInfo")

    async def start_transaction(self, tag: str, remote: bool) -> bool:
        self.tx_id = f"{self.id}-{uuid.uuid4().hex[:8]}"
        await self.status("Preparing")
        extra: dict[str, Any] = {"idToken": {"idToken": tag, "type": "ISO14443"}}
        if remote:
            extra["transactionInfo"] = {"transactionId": self.tx_id, "chargingState": "Charging",
                                        "remoteStartId": self.remote_start_id}
        else:
            extra["transactionInfo"] = {"transactionId": self.tx_id, "chargingState": "Charging"}
        answer = await self.try_req("TransactionEvent", self._event(
            "Started", "RemoteStart" if remote else "Authorized", "Transaction.Begin", **extra))
        if not self._accepted(answer, "idTokenInfo"):
            await self.try_req("TransactionEvent", self._event("Ended", "Deauthorized", "Transaction.End",
                                                               transactionInfo={"transactionId": self.tx_id,
                                                                                "stoppedReason": "DeAuthorized"}))
            self.tx_id = None
            await self.status("Available")
            return False
        await self.status("Charging")
        return True

    async def meter_values(self, n: int, triggered: bool = False) -> None:
        if self.tx_id is None:
            await self.try_req("MeterValues", {"evseId": 1, "meterValue": [
                {"timestamp": utcnow(), "sampledValue": self._sampled("Trigger" if triggered else "Sample.Clock")}]})
            return
        state = "Charging" if self.power_w() > 0 else "SuspendedEVSE"
        await self.try_req("TransactionEvent", self._event(
            "Updated", "Trigger" if triggered else "MeterValuePeriodic",
            "Trigger" if triggered else "Sample.Periodic",
            transactionInfo={"transactionId": self.tx_id, "chargingState": state}))

    async def environment(self) -> None:
        now = utcnow()
        self.seq_no += 1
        await self.try_req("NotifyEvent", {"generatedAt": now, "seqNo": 0, "eventData": [
            {"eventId": self.seq_no * 2, "timestamp": now, "trigger": "Periodic",
             "actualValue": f"{self.temperature():.1f}", "eventNotificationType": "HardWiredMonitor",
             "component": {"name": "TemperatureSensor"}, "variable": {"name": "Temperature"}},
            {"eventId": self.seq_no * 2 + 1, "timestamp": now, "trigger": "Periodic",
             "actualValue": f"{self.rng.uniform(30, 70):.1f}", "eventNotificationType": "HardWiredMonitor",
             "component": {"name": "HumiditySensor"}, "variable": {"name": "Humidity"}}]})

    async def stop_transaction(self, reason: str) -> None:
        if self.tx_id is None:
            return
        stopped = {"Remote": "Remote", "Reset": "ImmediateReset", "Local": "Local"}.get(reason, "Other")
        trigger = {"Remote": "RemoteStop", "Reset": "ResetCommand"}.get(reason, "StopAuthorized")
        await self.try_req("TransactionEvent", self._event(
            "Ended", trigger, "Transaction.End",
            transactionInfo={"transactionId": self.tx_id, "stoppedReason": stopped, "chargingState": "EVConnected"}))

    # -- commands ------------------------------------------------------------------------------
    remote_start_id = 0

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        return self._call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, **_: Any) -> None:
        self.reset_requested = True
        self.poke()

    @on("RequestStartTransaction")
    def on_request_start(self, id_token: dict[str, Any], remote_start_id: int, **kw: Any) -> Any:
        if self.tx_id is not None or not self.available:
            return self._call_result.RequestStartTransaction(status="Rejected")
        if kw.get("charging_profile"):
            self.store_profile(kw["charging_profile"])
        self.remote_start = str(id_token.get("id_token", "REMOTE"))
        self.remote_start_id = remote_start_id
        self.poke()
        return self._call_result.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        if self.tx_id is None or transaction_id != self.tx_id:
            return self._call_result.RequestStopTransaction(status="Rejected")
        self.remote_stop = True
        self.poke()
        return self._call_result.RequestStopTransaction(status="Accepted")

    async def report(self, request_id: int) -> None:
        """The NotifyReport of a GetBaseReport: the variables this simulator knows, in one part."""
        items = [("OCPPCommCtrlr", "HeartbeatInterval", "integer", None, "ReadWrite"),
                 ("SampledDataCtrlr", "TxUpdatedInterval", "integer", None, "ReadWrite"),
                 ("SmartChargingCtrlr", "RateUnit", "MemberList", None, "ReadOnly"),
                 ("SmartChargingCtrlr", "ProfileStackLevel", "integer", None, "ReadOnly"),
                 ("TemperatureSensor", "Temperature", "decimal", "Celsius", "ReadOnly"),
                 ("HumiditySensor", "Humidity", "decimal", "RH", "ReadOnly"),
                 ("ChargingStation", "Available", "boolean", None, "ReadOnly")]
        data = []
        for component, variable, kind, unit, mutability in items:
            characteristics: dict[str, Any] = {"dataType": kind, "supportsMonitoring": unit is not None}
            if unit:
                characteristics["unit"] = unit
            if kind == "MemberList":
                characteristics["valuesList"] = "A,W"
            data.append({"component": {"name": component}, "variable": {"name": variable},
                         "variableAttribute": [{"type": "Actual", "value": self._variable(component, variable) or "",
                                                "mutability": mutability}],
                         "variableCharacteristics": characteristics})
        await self.try_req("NotifyReport", {"requestId": request_id, "generatedAt": utcnow(), "seqNo": 0,
                                            "tbc": False, "reportData": data})

    @on("GetBaseReport")
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        self.triggers.append(f"NotifyReport:{request_id}")
        self.poke()
        return self._call_result.GetBaseReport(status="Accepted")

    @on("SetVariableMonitoring")
    def on_set_monitoring(self, set_monitoring_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for n, d in enumerate(set_monitoring_data):
            results.append({"id": int(d.get("id") or 1000 + n), "status": "Accepted", "type": d["type"],
                            "severity": d["severity"], "component": {"name": d["component"]["name"]},
                            "variable": {"name": d["variable"]["name"]}})
        return self._call_result.SetVariableMonitoring(set_monitoring_result=results)

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, **_: Any) -> Any:
        if requested_message not in ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues"):
            return self._call_result.TriggerMessage(status="NotImplemented")
        self.triggers.append(requested_message)
        self.poke()
        return self._call_result.TriggerMessage(status="Accepted")

    def _variable(self, component: str, variable: str) -> str | None:
        values = {("OCPPCommCtrlr", "HeartbeatInterval"): str(int(self.heartbeat_interval)),
                  ("SampledDataCtrlr", "TxUpdatedInterval"): self.config["MeterValueSampleInterval"],
                  ("SmartChargingCtrlr", "RateUnit"): "A,W",
                  ("SmartChargingCtrlr", "ProfileStackLevel"): "10",
                  ("TemperatureSensor", "Temperature"): f"{self.temperature():.1f}",
                  ("HumiditySensor", "Humidity"): "45.0",
                  ("ChargingStation", "Available"): "true" if self.available else "false"}
        return values.get((component, variable))

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in get_variable_data:
            value = self._variable(d["component"]["name"], d["variable"]["name"])
            item: dict[str, Any] = {"attributeStatus": "Accepted" if value is not None else "UnknownVariable",
                                    "component": {"name": d["component"]["name"]},
                                    "variable": {"name": d["variable"]["name"]}}
            if value is not None:
                item["attributeValue"] = value
            results.append(item)
        return self._call_result.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = [{"attributeStatus": "Accepted" if self._variable(d["component"]["name"], d["variable"]["name"])
                    is not None else "UnknownVariable",
                    "component": {"name": d["component"]["name"]}, "variable": {"name": d["variable"]["name"]}}
                   for d in set_variable_data]
        return self._call_result.SetVariables(set_variable_result=results)

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, **_: Any) -> Any:
        self.available = operational_status == "Operative"
        return self._call_result.ChangeAvailability(status="Scheduled" if self.tx_id and not self.available
                                                    else "Accepted")

    @on("UnlockConnector")
    def on_unlock(self, **_: Any) -> Any:
        return self._call_result.UnlockConnector(status="Unlocked")

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return self._call_result.DataTransfer(status="UnknownVendorId")

    @on("SetChargingProfile")
    def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        self.store_profile(charging_profile)
        self.poke()
        return self._call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, charging_profile_id: int | None = None,
                         charging_profile_criteria: dict[str, Any] | None = None, **_: Any) -> Any:
        crit = charging_profile_criteria or {}
        found = self.clear_profiles(charging_profile_id, crit.get("charging_profile_purpose"), crit.get("stack_level"))
        self.poke()
        return self._call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")


class Sim201(_Sim2x, v201.ChargePoint):
    version = "2.0.1"


class Sim21(_Sim2x, v21.ChargePoint):
    version = "2.1"


CLASSES: dict[str, Any] = {"1.6": Sim16, "2.0.1": Sim201, "2.1": Sim21}


# ------------------------------------------------------------------------------------ the driver


@dataclass
class Options:
    url: str
    chargers: int
    versions: list[str]
    duration: float
    rate: float
    prefix: str = "SIM"
    password: str = ""
    seed: int = 1
    connect_rate: float = 50.0
    id_tag: str = ""
    session: float = 60.0  # mean length of a transaction, s


async def _one(opts: Options, index: int, stats: Stats, stop_at: float, stopping: asyncio.Event) -> None:
    version = opts.versions[index % len(opts.versions)]
    charger_id = f"{opts.prefix}{index + 1:04d}"
    rng = random.Random(opts.seed * 100_003 + index)
    loop = asyncio.get_running_loop()
    headers = {}
    if opts.password:
        token = base64.b64encode(f"{charger_id}:{opts.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    delay = 1.0
    # three-phase 16 A for 2.x, single-phase 32 A for 1.6: both about 7-11 kW
    phases, max_a = (1, 32.0) if version == "1.6" else (3, 16.0)
    while loop.time() < stop_at and not stopping.is_set():
        outcome = "failed"  # the dial failed
        try:
            async with connect(f"{opts.url.rstrip('/')}/{charger_id}", subprotocols=[SUBPROTOCOL[version]],  # type: ignore[list-item]
                               additional_headers=headers, open_timeout=15, close_timeout=5) as ws:
                if ws.subprotocol != SUBPROTOCOL[version]:
                    raise InvalidHandshake(f"the server chose {ws.subprotocol!r}")
                stats.connects += 1
                outcome = "drop"
                cp = CLASSES[version](charger_id, ws, response_timeout=STEP_TIMEOUT)
                cp.setup(stats, rng, phases, max_a, opts.id_tag, opts.session)
                outcome = await _connected(cp, charger_id, stats, stop_at, stopping, opts.rate)
        except (OSError, InvalidHandshake, asyncio.TimeoutError, TimeoutError, ConnectionClosed, OCPPError) as exc:
            log.debug("%s: %s", charger_id, exc)
        if outcome == "failed":
            stats.connect_failures += 1
        elif outcome == "drop":
            stats.disconnects += 1
        elif outcome == "reset":
            stats.resets += 1
            delay = 0.5  # a charger takes a moment to reboot, then dials at once
        else:
            break  # the end of the run
        if loop.time() >= stop_at or stopping.is_set():
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), rng.uniform(1.0, 2.0) * delay)
        delay = min(delay * 2, 30.0)


async def _connected(cp: _Sim, charger_id: str, stats: Stats, stop_at: float, stopping: asyncio.Event,
                     rate: float) -> str:
    """One connection's life; returns how it ended: "end", "stop", "reset" or "drop"."""
    loop = asyncio.get_running_loop()
    stats.connected.add(charger_id)
    serve = asyncio.create_task(cp.start(), name=f"sim:{charger_id}")  # type: ignore[attr-defined]
    life = asyncio.create_task(cp.life(stop_at, rate))
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({serve, life, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if done == {stop_wait}:  # Ctrl-C: finish what is under way, as at the end of --duration
            cp.finish()
            await asyncio.wait({serve, life}, timeout=FINISH_WITHIN, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (serve, life, stop_wait):
            t.cancel()
        await asyncio.gather(serve, life, stop_wait, return_exceptions=True)
        stats.connected.discard(charger_id)
    if stop_wait in done:
        stats.stayed.add(charger_id)
        return "stop"
    if life in done and life.exception() is None:
        if cp.reset_requested:
            return "reset"
        if loop.time() >= stop_at:
            stats.stayed.add(charger_id)
        return "end"
    if life in done and not isinstance(life.exception(), ConnectionClosed):
        log.warning("%s: %s", charger_id, life.exception())
    return "drop"


async def simulate(opts: Options, stopping: asyncio.Event | None = None) -> dict[str, Any]:
    """Run the chargers for `opts.duration` seconds (or until `stopping` is set); return the summary."""
    stopping = stopping or asyncio.Event()
    stats = Stats()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = started + opts.duration if opts.duration > 0 else float("inf")
    tasks = []
    for i in range(opts.chargers):
        tasks.append(asyncio.create_task(_one(opts, i, stats, stop_at, stopping), name=f"sim-{i}"))
        if opts.connect_rate > 0:
            await asyncio.sleep(1.0 / opts.connect_rate)
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats.as_dict(opts.chargers, loop.time() - started)
