"""The variables mirror: what each charger says about itself, read, kept current and set.

- Read when a charger first connects (nothing kept yet) and after each accepted BootNotification
  (a reboot may change things), `[variables].read_delay` seconds later so the charger's boot
  traffic goes first; and on demand (`refresh`). 1.6: GetConfiguration; 2.x: GetBaseReport, whose
  NotifyReport parts the session answers itself and never relays (`claims`). Both are the
  gateway's own calls, with its own message ids, through the charger's one-outstanding queue.
- Kept current from the traffic (a session observer): accepted ChangeConfiguration / SetVariables
  whoever sent them, NotifyEvent values, NotifyMonitoringReport monitors, NotifyReport parts of the
  CSMS's own reports.
- Kept in the store (adapters/variables_store.py) with when each value was read, when it last
  changed and by which message. Secrets never: their value is None from gateway.variables.model.
- Sets from outside (REST, CLI, MQTT) go through `set_values`: the allow-list, the credentials
  switch, read-only refused; the charger's per-item status returned.
- What local control needs (rate unit, stack level, phases) is cached per charger (`capabilities`),
  and `[environment].ensure` asks for temperature/humidity reporting after each read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from gateway.errors import Busy, CallFailed, CallTimeout, GatewayError, NotConnected
from gateway.flag import Flag
from gateway.ports import Exchange
from gateway.variables import meaning as M
from gateway.variables.model import (
    Address, SetPolicy, Variable, VariablesChanged, address_of, from_change_configuration,
    from_get_configuration, from_get_variables, from_monitoring_report, from_notify_event, from_report_data,
    from_set_variables,
    ha_entity, parse_name_2x, set_variables_request, set_variables_statuses,
)
from gateway.environment import ensure_environment
from gateway.variables.report import ReportAssembly

log = logging.getLogger("gateway.variables")

REQUEST_ID_BASE = 2_000_000_000  # the gateway's GetBaseReport request ids: base + a random draw (int32)
SMALL = frozenset({"ChargingScheduleAllowedChargingRateUnit", "ChargeProfileMaxStackLevel", "MeterValuesSampledData",
                   "MeterValuesAlignedData", "MeterValuesSampledDataMaxLength", "MeterValuesAlignedDataMaxLength",
                   "SmartChargingCtrlr/RateUnit", "SmartChargingCtrlr/RateUnitAvailable",
                   "SmartChargingCtrlr/ProfileStackLevel", "ChargingStation/SupplyPhases"})
SMALL_VARIABLES = frozenset({"Temperature", "Humidity", "SupplyPhases", "ConnectorType"})


class MirrorError(GatewayError):
    """`code`: not_connected, bad_request, disabled."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _small(v: Variable) -> bool:
    """Kept in memory: what local control and the environment need (a few per charger)."""
    return v.name in SMALL or v.variable in SMALL_VARIABLES or "humidity" in v.name.lower()


def row_of(v: Variable, source: str, when: str, read_id: int | None, value_given: bool = True) -> dict[str, Any]:
    return {"name": v.name, "component": v.component, "component_instance": v.component_instance, "evse": v.evse,
            "connector": v.connector, "variable": v.variable, "variable_instance": v.variable_instance,
            "attribute": v.attribute, "value": None if v.secret else v.value, "secret": int(v.secret),
            "known": int(v.known), "mutability": v.mutability, "characteristics": v.characteristics,
            "monitors": v.monitors, "source": source, "read_at": when, "changed_at": when, "read_id": read_id,
            "value_given": int(value_given)}


def variable_of(row: dict[str, Any]) -> Variable:
    return Variable(name=row["name"], variable=row["variable"], component=row["component"],
                    component_instance=row["component_instance"], evse=row["evse"], connector=row["connector"],
                    variable_instance=row["variable_instance"], attribute=row["attribute"], value=row["value"],
                    secret=bool(row["secret"]), known=bool(row["known"]), mutability=row["mutability"],
                    characteristics=row["characteristics"], monitors=row["monitors"])


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored variable as the API and MQTT show it (a secret's value is null, `secret` true)."""
    component = None
    if row.get("component") is not None:
        component = {"name": row["component"], "instance": row.get("component_instance"), "evse": row.get("evse"),
                     "connector": row.get("connector")}
    mutability = row.get("mutability")
    return {"name": row["name"], "component": component,
            "variable": {"name": row["variable"], "instance": row.get("variable_instance")},
            "attribute": row.get("attribute"), "value": None if row.get("secret") else row.get("value"),
            "secret": bool(row.get("secret")), "known": bool(row.get("known", True)), "mutability": mutability,
            "readonly": mutability == "ReadOnly", "characteristics": row.get("characteristics"),
            "monitors": row.get("monitors"), "source": row.get("source"), "read_at": row.get("read_at"),
            "changed_at": row.get("changed_at")}


class _Charger:
    def __init__(self) -> None:
        self.small: dict[str, Variable] = {}
        self.caps = M.Capabilities()
        self.task: asyncio.Task[None] | None = None
        self.waiting = False  # the task still waits out its delay
        self.again = False  # a read was asked for while one ran
        self.report: ReportAssembly | None = None
        self.report_event = Flag()
        self.lock = asyncio.Lock()  # store writes of this charger, in order
        self.parts: set[asyncio.Task[int]] = set()  # writes of report parts under way
        self.request_ids: list[int] = []  # the gateway's 8 most recent GetBaseReports (a list: a deque is 600 bytes)
        self.read_done = Flag()
        self.warned: set[str] = set()


class VariablesMirror:
    """Build after the hub and store; `hub.variables = mirror`; `hub.observers.append(mirror)`."""

    def __init__(self, settings: Any, hub: Any, store: Any,
                 records: Callable[[Sequence[Any]], None] | None = None) -> None:
        self.settings = settings
        self.cfg = settings.variables
        self.env = settings.environment
        self.hub = hub
        self.store = store
        self.policy = SetPolicy(tuple(self.cfg.set_allowed), self.cfg.allow_credentials, tuple(self.cfg.secret_names))
        self.secrets = tuple(self.cfg.secret_names)
        self.chargers: dict[str, _Charger] = {}
        # the telemetry plane (TelemetryObserver.records): VariablesChanged records, published by MQTT
        self.records = records
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def state_of(self, cid: str) -> _Charger:
        ch = self.chargers.get(cid)
        if ch is None:
            ch = self.chargers[cid] = _Charger()
        return ch

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks) + [c.task for c in self.chargers.values() if c.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- the session's hook ---------------------------------------------------------------------

    def claims(self, charger_id: str, payload: dict[str, Any]) -> bool:
        """A NotifyReport answering the gateway's own GetBaseReport: the session answers it and
        does not relay it (the mirror takes it from the exchange)."""
        ch = self.chargers.get(charger_id)
        return ch is not None and payload.get("requestId") in ch.request_ids

    # -- observer -------------------------------------------------------------------------------

    def exchange(self, session: Any, ex: Exchange) -> None:
        if self._closed or ex.response is None:
            return
        action, req, resp = ex.action, ex.request, ex.response
        cid = ex.charger_id
        if ex.origin == "charger":
            if action == "BootNotification":
                if resp.get("status") == "Accepted" and self.cfg.enabled:
                    self.schedule_read(cid, self.cfg.read_delay)  # a (re)boot: read again
            elif action == "NotifyReport":
                ch = self.chargers.get(cid)
                if ch is not None and ch.report is not None and req.get("requestId") == ch.report.request_id:
                    self._report_part(cid, ch, req)
                elif ch is not None and req.get("requestId") in ch.request_ids:  # a late part of an ended read
                    self._apply(cid, from_report_data(req.get("reportData") or [], extra_secrets=self.secrets),
                                "NotifyReport")
                else:  # the CSMS's own report, relayed: what it says is still true
                    self._apply(cid, from_report_data(req.get("reportData") or [], extra_secrets=self.secrets),
                                "NotifyReport")
            elif action == "NotifyEvent":
                self._apply(cid, from_notify_event(req, extra_secrets=self.secrets), "NotifyEvent")
            elif action == "NotifyMonitoringReport":
                self._apply(cid, from_monitoring_report(req, extra_secrets=self.secrets), "NotifyMonitoringReport",
                            value_given=False)
        elif action == "GetVariables":
            self._apply(cid, from_get_variables(resp, extra_secrets=self.secrets), "GetVariables")
        elif action == "GetConfiguration" and ex.origin == "csms":  # the gateway's own reads are applied by _read
            self._apply(cid, from_get_configuration(resp, extra_secrets=self.secrets), "GetConfiguration")
        elif action == "ChangeConfiguration":
            self._apply(cid, from_change_configuration(req, resp, extra_secrets=self.secrets), "ChangeConfiguration")
        elif action == "SetVariables":
            self._apply(cid, from_set_variables(req, resp, extra_secrets=self.secrets), "SetVariables")

    def session_event(self, session: Any, event: str) -> None:
        if self._closed:
            return
        cid = session.charger_id
        if event == "connected" and self.cfg.enabled:
            self._spawn(self._on_connect(cid, session.version.value))
        elif event == "disconnected":
            ch = self.chargers.get(cid)
            if ch is not None and ch.task is not None and ch.waiting:
                # a read still waiting out read_delay is for a charger that is gone: the next
                # connect schedules one again (a read under way ends by itself: no session)
                ch.task.cancel()
        elif event == "forgotten":
            ch = self.chargers.pop(cid, None)
            if ch is not None and ch.task is not None:
                ch.task.cancel()
            self._spawn(self.store.variables_forget(cid))

    async def _on_connect(self, cid: str, protocol: str) -> None:
        ch = self.state_of(cid)
        if not ch.small:
            await self._load_small(cid, ch)
        read = await self.store.variables_read(cid)
        if ch.task is not None and not ch.task.done():
            return  # a read is on its way already (the charger booted meanwhile): not a second one
        if read is None or read["protocol"] != protocol or read["state"] == "reading":
            self.schedule_read(cid, self.cfg.read_delay)  # never read (or cut off by a restart)

    async def _load_small(self, cid: str, ch: _Charger) -> None:
        rows = await self.store.variables(cid)
        ch.small = {r["name"]: variable_of(r) for r in rows if _small(variable_of(r))}
        self._recompute(cid, ch)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, cid: str, variables: list[Variable], source: str, *, read_id: int | None = None,
               value_given: bool = True) -> None:
        if variables:
            self._spawn(self.put(cid, variables, source, read_id, value_given))

    async def put(self, cid: str, variables: list[Variable], source: str, read_id: int | None,
                   value_given: bool = True) -> int:
        ch = self.state_of(cid)
        when = _now()
        rows = [row_of(v, source, when, read_id, value_given) for v in variables]
        async with ch.lock:
            dropped = await self.store.variables_put(cid, rows, self.cfg.max_per_charger)
        changed = False
        for v in variables:
            if _small(v):
                old = ch.small.get(v.name)
                if old is not None and not value_given:
                    old.monitors = v.monitors
                elif old is not None:
                    old.value, old.known = v.value, v.known
                    old.mutability = v.mutability or old.mutability
                    old.characteristics = v.characteristics or old.characteristics
                else:
                    ch.small[v.name] = v
                changed = True
        if changed:
            self._recompute(cid, ch)
        if dropped:
            log.warning("variables of %s: %d beyond [variables].max_per_charger (%d) not kept", cid, dropped,
                        self.cfg.max_per_charger, extra={"charger_id": cid})
        if self.records is not None and self.cfg.publish:
            self._publish(cid, await self._stored(cid, [v.name for v in variables]))
        return dropped

    async def _stored(self, cid: str, names: list[str]) -> list[dict[str, Any]]:
        if len(names) == 1:
            return list(await self.store.variables(cid, name=names[0]))
        wanted = set(names)
        return [r for r in await self.store.variables(cid) if r["name"] in wanted]

    def _publish(self, cid: str, rows: list[dict[str, Any]]) -> None:
        """Offer the values to the telemetry sinks (MQTT: a retained topic per value, Home Assistant
        entities for the chosen ones)."""
        if not rows:
            return
        ha: dict[str, dict[str, Any]] = {}
        patterns = self.cfg.home_assistant
        for row in rows:
            v = variable_of(row)
            shown = any(fnmatch.fnmatchcase(v.name, p) for p in patterns)
            entity = ha_entity(v, shown=shown, settable=shown and self.policy.refusal(v.name, v) is None)
            if entity is not None:
                ha[v.name] = entity
        record = VariablesChanged(cid, tuple(as_json(r) for r in rows), ha)
        if self.records is not None:
            try:
                self.records((record,))
            except Exception:  # noqa: BLE001 - the telemetry plane never breaks the mirror
                log.exception("variables: the telemetry plane failed")

    def _recompute(self, cid: str, ch: _Charger) -> None:
        session = self.hub.sessions.get(cid)
        version = session.version.value if session is not None else \
            ("ocpp1.6" if any(v.component is None for v in ch.small.values()) else "ocpp2.0.1")
        ch.caps = M.capabilities(version, ch.small)

    # -- reading --------------------------------------------------------------------------------

    def schedule_read(self, cid: str, delay: float) -> None:
        """Read the charger's variables `delay` s from now (a waiting read is re-timed; a running
        one is followed by another)."""
        if self._closed:
            return
        ch = self.state_of(cid)
        if ch.task is not None and not ch.task.done():
            if not ch.waiting:
                ch.again = True
                return
            ch.task.cancel()
        ch.read_done.clear()
        ch.waiting = True
        ch.task = asyncio.get_running_loop().create_task(self._read_later(cid, ch, delay), name=f"variables:{cid}")

    async def _read_later(self, cid: str, ch: _Charger, delay: float) -> None:
        try:
            while True:
                if delay:
                    await asyncio.sleep(delay)
                ch.waiting = False
                ch.again = False
                await self._read(cid, ch)
                if not ch.again or self._closed:
                    break
                delay = 0
        finally:
            ch.waiting = False
            ch.read_done.set()

    async def _read(self, cid: str, ch: _Charger) -> None:
        session = self.hub.sessions.get(cid)
        if session is None or not session.connected:
            return
        protocol = session.version.value
        previous = await self.store.variables_read(cid)
        read_id = (previous["read_id"] if previous else 0) + 1
        started = _now()
        await self.store.variables_read_set(cid, protocol, read_id, "reading", started)
        try:
            if protocol == "ocpp1.6":
                detail = await self._read_16(cid, session, read_id)
            else:
                detail = await self._read_2x(cid, ch, session, read_id)
        except (NotConnected, CallTimeout, CallFailed, Busy) as exc:
            detail = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        state = str(detail.pop("state"))
        await self.store.variables_read_set(cid, protocol, read_id, state, started, _now(), detail)
        log.info("variables of %s read: %s (%s)", cid, state, ", ".join(f"{k} {v}" for k, v in detail.items()),
                 extra={"charger_id": cid})
        if state != "failed":
            await self._load_small(cid, ch)
            if self.env.ensure:
                await ensure_environment(self, cid, session)

    async def _read_16(self, cid: str, session: Any, read_id: int) -> dict[str, Any]:
        response = await session.call_charger("GetConfiguration", {}, timeout=self.cfg.call_timeout)
        variables = from_get_configuration(response, extra_secrets=self.secrets)
        dropped = await self.put(cid, variables, "GetConfiguration", read_id)
        removed = await self.store.variables_prune(cid, read_id)
        detail: dict[str, Any] = {"state": "partial" if dropped else "complete", "variables": len(variables) - dropped}
        if dropped:
            detail["dropped"] = dropped
        if removed:
            detail["removed"] = removed
        return detail

    async def _read_2x(self, cid: str, ch: _Charger, session: Any, read_id: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        request_id = REQUEST_ID_BASE + secrets.randbelow(100_000_000)
        report = ReportAssembly(request_id, loop.time(), self.cfg.report_timeout, self.cfg.max_per_charger, read_id)
        ch.report = report
        ch.request_ids.append(request_id)  # claimed from now on, also parts that come after the read ended
        del ch.request_ids[:-8]
        ch.report_event.clear()
        try:
            response = await session.call_charger("GetBaseReport", {"requestId": request_id,
                                                                    "reportBase": self.cfg.report_base},
                                                  timeout=self.cfg.call_timeout)
            status = response.get("status")
            if status != "Accepted":
                return {"state": "failed", "error": f"GetBaseReport {status}"}
            while not report.complete:
                remaining = report.deadline() - loop.time()
                if remaining <= 0 or not session.connected:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await ch.report_event.wait()
                ch.report_event.clear()
        finally:
            ch.report = None
        if ch.parts:  # the parts' writes are done
            await asyncio.gather(*ch.parts, return_exceptions=True)
        detail: dict[str, Any] = dict(report.status())
        if report.complete and not report.dropped:
            removed = await self.store.variables_prune(cid, read_id)
            if removed:
                detail["removed"] = removed
        return detail

    def _report_part(self, cid: str, ch: _Charger, payload: dict[str, Any]) -> None:
        report = ch.report
        assert report is not None
        variables = from_report_data(payload.get("reportData") or [], extra_secrets=self.secrets)
        seq = payload.get("seqNo")
        take = report.part(seq if isinstance(seq, int) else -1, bool(payload.get("tbc")), len(variables),
                           asyncio.get_running_loop().time())
        if take:
            task = asyncio.get_running_loop().create_task(
                self.put(cid, variables[:take], "NotifyReport", report.read_id), name=f"part:{cid}:{seq}")
            ch.parts.add(task)
            task.add_done_callback(ch.parts.discard)
        ch.report_event.set()

    async def refresh(self, cid: str, wait: float | None = None) -> dict[str, Any]:
        """Read now; with `wait`, wait up to that long for the read to end. The read's status."""
        session = self.hub.sessions.get(cid)
        if session is None or not session.connected:
            raise MirrorError("not_connected", f"{cid} is not connected")
        self.schedule_read(cid, 0)
        ch = self.state_of(cid)
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await ch.read_done.wait()
        return await self.read_status(cid)

    async def read_status(self, cid: str) -> dict[str, Any]:
        read = await self.store.variables_read(cid)
        if read is None:
            return {"state": "never"}
        out = {"state": read["state"], "protocol": read["protocol"], "started_at": read["started_at"],
               "finished_at": read["finished_at"]}
        out.update(read["detail"] or {})
        return out

    # -- reading from outside -------------------------------------------------------------------

    async def values(self, cid: str, **filters: Any) -> list[dict[str, Any]]:
        return [as_json(r) for r in await self.store.variables(cid, **filters)]

    async def get(self, cid: str, name: str) -> dict[str, Any] | None:
        rows = await self.store.variables(cid, name=name)
        return as_json(rows[0]) if rows else None

    def capabilities(self, cid: str) -> M.Capabilities:
        ch = self.chargers.get(cid)
        return ch.caps if ch is not None else M.Capabilities()

    def warn_once(self, cid: str, text: str) -> None:
        ch = self.state_of(cid)
        if text not in ch.warned:
            ch.warned.add(text)
            log.warning("%s: %s", cid, text, extra={"charger_id": cid})

    # -- setting --------------------------------------------------------------------------------

    async def set_values(self, cid: str, items: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Set each (name, value): a result per item, in order: `status` is the charger's
        (Accepted, RebootRequired, Rejected, NotSupported, UnknownComponent, ...) or `Refused` by the
        gateway (with `reason`), or an error code when the charger did not answer."""
        session = self.hub.sessions.get(cid)
        if session is None or not session.connected:
            raise MirrorError("not_connected", f"{cid} is not connected")
        wanted: list[tuple[str, str]] = []
        for name, value in items:
            if not isinstance(name, str) or not name or len(name) > 300:
                raise MirrorError("bad_request", "each name must be a non-empty string")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            if not isinstance(value, str):
                raise MirrorError("bad_request", f"{name}: the value must be a string, number or boolean")
            limit = 500 if session.version.value == "ocpp1.6" else 1000
            if len(value) > limit:
                raise MirrorError("bad_request", f"{name}: the value is longer than {limit} characters")
            wanted.append((name, value))
        if not wanted:
            raise MirrorError("bad_request", "nothing to set")
        results: dict[int, dict[str, Any]] = {}
        todo: list[tuple[int, str, str, Variable | None]] = []
        for i, (name, value) in enumerate(wanted):
            rows = await self.store.variables(cid, name=name)
            known = variable_of(rows[0]) if rows else None
            why = self.policy.refusal(name, known)
            if why is not None:
                results[i] = {"name": name, "status": "Refused", "reason": why}
            else:
                todo.append((i, name, value, known))
        if session.version.value == "ocpp1.6":
            for i, name, value, _ in todo:
                request = {"key": name, "value": value}
                try:
                    response = await session.call_charger("ChangeConfiguration", request, timeout=self.cfg.call_timeout)
                except (NotConnected, CallTimeout, CallFailed, Busy) as exc:
                    results[i] = {"name": name, "status": _code(exc), "reason": str(exc)}
                    continue
                results[i] = {"name": name, "status": str(response.get("status"))}
                await self.put(cid, from_change_configuration(request, response, extra_secrets=self.secrets),
                                "ChangeConfiguration", None)
        elif todo:
            addressed: list[tuple[int, str, str, Address]] = []
            for i, name, value, known in todo:
                address = address_of(known) if known is not None and known.component else parse_name_2x(name)
                if address is None:
                    results[i] = {"name": name, "status": "Refused",
                                  "reason": "not a device-model name (Component/Variable, see the API's variables list)"}
                else:
                    addressed.append((i, name, value, address))
            if addressed:
                request = set_variables_request([(a, value) for _, _, value, a in addressed])
                try:
                    response = await session.call_charger("SetVariables", request, timeout=self.cfg.call_timeout)
                except (NotConnected, CallTimeout, CallFailed, Busy) as exc:
                    for i, name, _, _ in addressed:
                        results[i] = {"name": name, "status": _code(exc), "reason": str(exc)}
                else:
                    statuses = set_variables_statuses([(n, a) for _, n, _, a in addressed], response)
                    for i, name, _, _ in addressed:
                        status, reason = statuses.get(name, ("NoAnswer", "the charger's answer did not list it"))
                        results[i] = {"name": name, "status": status, **({"reason": reason} if reason else {})}
                    await self.put(cid, from_set_variables(request, response, extra_secrets=self.secrets),
                                    "SetVariables", None)
        out = [results[i] for i in range(len(wanted))]
        for r in out:  # names and statuses only: a value may be a credential
            log.info("variable %s of %s set from outside: %s", r["name"], cid, r["status"], extra={"charger_id": cid})
        return out

    # -- the environment ([environment].ensure: gateway/environment.py) ----------------------------

    async def environment(self, cid: str) -> dict[str, Any]:
        return {"charger_id": cid, "ensure": self.env.ensure,
                "requests": await self.store.variable_requests(cid, "environment")}


def _code(exc: Exception) -> str:
    if isinstance(exc, CallFailed):
        return exc.code
    if isinstance(exc, CallTimeout):
        return "timeout"
    return type(exc).__name__


MAX_ITEMS = 100  # values in one set request


def set_pairs(request: Any) -> list[tuple[str, Any]] | None:
    """The (name, value) pairs of a set request, None for `{"refresh": true}`; MirrorError
    (bad_request) with the reason otherwise. Shapes: `{"values": {NAME: VALUE, ...}}`,
    `{"values": [{"name", "value"}, ...]}`, `{"name", "value"}`."""
    if not isinstance(request, dict):
        raise MirrorError("bad_request", "the request must be a JSON object")
    if request.get("refresh") is True and len(request) == 1:
        return None
    values = request.get("values")
    if isinstance(request.get("name"), str) and "value" in request and values is None:
        pairs = [(request["name"], request["value"])]
    elif isinstance(values, dict):
        pairs = list(values.items())
    elif isinstance(values, list) and all(isinstance(v, dict) and "name" in v and "value" in v for v in values):
        pairs = [(v["name"], v["value"]) for v in values]
    else:
        raise MirrorError("bad_request", 'expected {"values": {NAME: VALUE, ...}}, {"values": [{"name": ..., '
                                         '"value": ...}]}, {"name": ..., "value": ...} or {"refresh": true}')
    if not pairs or len(pairs) > MAX_ITEMS:
        raise MirrorError("bad_request", f"1 to {MAX_ITEMS} values")
    return pairs
