"""The control engine: a session observer that learns transactions, temperatures and the CSMS's
own charging profiles from the exchanges, decides (gateway.control.decide) and sends the gateway's
charging profiles through each charger's one-outstanding queue.

- Observer calls return at once: they update state and mark the charger dirty; one worker task per
  charger reconciles what the gateway wants with what it last sent, one call at a time.
- It works the same whether the CSMS is online, away or absent: it only needs the exchanges (which
  flow whoever answered) and the charger's queue.
- The operator's commands (pause, resume, limits, the site limit) are in gateway.control.commands,
  a mixin of the engine.
- Every change of an EVSE's limit is logged with its reason and handed to the telemetry plane as a
  `ControlChange` record (`publish`: the telemetry observer's `records`), which reaches the sinks
  like every other record (MQTT `.../chargers/{id}/control`, InfluxDB measurement `control`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from gateway.control import decide as D
from gateway.control import state
from gateway.control.commands import ControlError, OperatorCommands
from gateway.control.state import ACCEPTED, ChargerControl as _Charger, Sent as _Sent, Tx as _Tx
from gateway.control.settings import DeratingRule
from gateway.errors import Busy, CallFailed, CallTimeout, NotConnected
from gateway.ports import Exchange
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import ControlChange, EnvironmentReading, Record
from gateway.variables.meaning import Capabilities, choose_rate_unit, choose_stack_level

__all__ = ["ControlChange", "ControlEngine", "ControlError"]  # ControlError lives in gateway.control.commands

log = logging.getLogger("gateway.control")

TRANSIENT = frozenset({"timeout", "NotConnected", "Busy"})  # no answer: the charger's state is unchanged


class ControlEngine(OperatorCommands):
    def __init__(self, settings: Any, hub: Any, publish: Callable[[Sequence[Record]], None] | None = None,
                 state_file: Path | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.publish = publish  # the telemetry observer's `records` (None: no sink is configured)
        # what must survive a restart: operator pauses, open transactions, the derating step and
        # the profiles of ours a charger holds (else a paused EVSE could never be resumed)
        self.state_file = state_file
        self._save_task: asyncio.Task[None] | None = None
        self._save_again = False
        self.normaliser = Normaliser()
        self.chargers: dict[str, _Charger] = {}
        self._order = 0
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.changes: list[ControlChange] = []  # the latest changes (bounded), for the API and tests
        self.site_override: float | None = None  # the operator's site limit (A per phase), when set
        self.site_overridden = False  # set by the operator (None then means: no site limit)
        self._load()
        self._site_changed()  # what the site limit is, for the telemetry plane (MQTT .../site/limit)

    # -- configuration --------------------------------------------------------------------------

    @property
    def control(self) -> Any:
        return self.settings.control

    def rule(self, charger_id: str) -> DeratingRule | None:
        charger = self.settings.charger(charger_id)
        own = getattr(charger, "derating", None) if charger is not None else None
        if own is not None:
            return own
        return self.settings.derating if self.settings.derating.enabled else None

    def charger_limits(self, cid: str) -> tuple[str, int, int]:
        """(rate unit, phases, stack level) of the gateway's profiles for one charger: what the
        variables mirror read from it, `[chargers.ID]` values over it (a mismatch is logged once),
        else the site's phases and `[control].stack_level`."""
        own = self.settings.charger(cid)
        mirror = getattr(self.hub, "variables", None)
        caps = mirror.capabilities(cid) if mirror is not None else Capabilities()
        unit, problem = choose_rate_unit(caps.rate_units, own.rate_unit if own is not None else None)
        notes = [problem]
        phases = caps.phases or self.settings.site.phases
        if own is not None and own.phases is not None:
            if caps.phases is not None and caps.phases != own.phases:
                notes.append(f"[chargers.ID].phases = {own.phases} but the charger reports {caps.phases} supply phases")
            phases = own.phases
        stack_level, problem = choose_stack_level(self.control.stack_level, caps.max_stack_level)
        notes.append(problem)
        for note in notes:
            if note is not None:
                if mirror is not None:
                    mirror.warn_once(cid, note)
                else:
                    log.warning("%s: %s", cid, note)
        return unit, phases, stack_level

    # -- observer -------------------------------------------------------------------------------

    def _charger(self, charger_id: str) -> _Charger:
        ch = self.chargers.get(charger_id)
        if ch is None:
            ch = self.chargers[charger_id] = _Charger()
        return ch

    def exchange(self, session: Any, exchange: Exchange) -> None:
        if self._closed or exchange.error is not None or exchange.response is None:
            return
        try:
            self._learn(exchange)
        except Exception:  # noqa: BLE001 - never into the relay
            log.exception("control: could not learn from %s of %s", exchange.action, exchange.charger_id)

    def session_event(self, session: Any, event: str) -> None:
        if self._closed:
            return
        ch = self.chargers.get(session.charger_id)
        if event == "connected":
            ch = self._charger(session.charger_id)
            ch.version = session.version.value
            # after a reconnect the charger may have lost what we sent: send it again
            for sent in ch.sent.values():
                sent.status = "unknown"
            self._kick(session.charger_id)
        elif event == "forgotten" and ch is not None:
            self.chargers.pop(session.charger_id, None)
            self._recompute_site(except_for=None)

    def _learn(self, ex: Exchange) -> None:
        cid, action, req, resp = ex.charger_id, ex.action, ex.request, ex.response or {}
        ch = self.chargers.get(cid) or self._charger(cid)
        ch.version = ex.version._value_  # `.value` without the enum property's descriptor call
        v16 = ch.version == "ocpp1.6"
        if ex.origin == "csms":
            self._learn_csms(cid, ch, action, req, resp)
            return
        if ex.origin != "charger":
            return
        if v16 and action == "StartTransaction":
            tx = resp.get("transactionId")
            status = (resp.get("idTagInfo") or {}).get("status")
            if tx is not None and status == ACCEPTED:
                self._start(cid, ch, str(tx), int(req.get("connectorId") or 0))
        elif v16 and action == "StopTransaction":
            self._stop(cid, ch, str(req.get("transactionId")))
        elif v16 and action == "MeterValues" and req.get("transactionId") is not None:
            mv_tid = str(req["transactionId"])
            if mv_tid not in ch.txs and req.get("connectorId"):  # a transaction that began before we ran
                self._start(cid, ch, mv_tid, int(req["connectorId"]))
        elif not v16 and action == "TransactionEvent":
            info = req.get("transactionInfo") or {}
            tid = info.get("transactionId")
            evse = (req.get("evse") or {}).get("id")
            if tid is None:
                pass
            elif req.get("eventType") == "Ended":
                self._stop(cid, ch, str(tid))
            elif str(tid) not in ch.txs and evse:
                self._start(cid, ch, str(tid), int(evse))
        if action in ("MeterValues", "NotifyEvent", "NotifyReport", "NotifyMonitoringReport", "DataTransfer",
                      "NotifyPeriodicEventStream"):
            self._temperatures(cid, ch, ex)

    def _learn_csms(self, cid: str, ch: _Charger, action: str, req: dict[str, Any], resp: dict[str, Any]) -> None:
        """The CSMS's own profiles: remember their limits (we never go above them); a CSMS clear
        that may have removed ours makes us send ours again."""
        base = self.control.profile_id_base
        if action == "SetChargingProfile" and resp.get("status") == ACCEPTED:
            found = D.csms_profile_cap(ch.version, req, self.settings.site.voltage, self.settings.site.phases)
            if found is None:
                return
            evse, pid, cap = found
            if D.is_gateway_profile_id(base, pid):
                log.warning("control: the CSMS set profile id %s on %s, inside the gateway's reserved range",
                            pid, cid, extra={"charger_id": cid})
            purpose = (req.get("csChargingProfiles") or req.get("chargingProfile") or {}).get("chargingProfilePurpose")
            ch.csms_caps[(evse, pid)] = (purpose, cap)
            self._kick(cid)
        elif action == "ClearChargingProfile" and resp.get("status") == ACCEPTED:
            pid = req.get("id") if ch.version == "ocpp1.6" else req.get("chargingProfileId")
            for key in [k for k in ch.csms_caps if pid is None or k[1] == pid]:
                del ch.csms_caps[key]
            if pid is None or D.is_gateway_profile_id(base, pid):
                for sent in ch.sent.values():
                    sent.status = "unknown"  # ours may be gone: set again
            self._kick(cid)

    def _start(self, cid: str, ch: _Charger, tid: str, evse: int) -> None:
        if tid in ch.txs:
            return
        self._order += 1
        ch.txs[tid] = _Tx(tid, evse, self._order)
        log.info("control: transaction %s started on %s EVSE %d", tid, cid, evse, extra={"charger_id": cid})
        self._recompute_site(except_for=cid)
        self._kick(cid)

    def _stop(self, cid: str, ch: _Charger, tid: str) -> None:
        tx = ch.txs.pop(tid, None)
        ch.paused_txs.discard(tid)
        if tx is None:
            return
        for key in [k for k, v in ch.csms_caps.items() if v[0] == D.TX_PROFILE and k[0] == tx.evse]:
            del ch.csms_caps[key]
        sent = ch.sent.get(tx.evse)
        if sent is not None and sent.want.transaction_id == tid and sent.want.purpose == D.TX_PROFILE:
            ch.sent.pop(tx.evse)  # a TxProfile ends with its transaction on the charger
        log.info("control: transaction %s ended on %s EVSE %d", tid, cid, tx.evse, extra={"charger_id": cid})
        self._recompute_site(except_for=cid)
        self._kick(cid)

    def _temperatures(self, cid: str, ch: _Charger, ex: Exchange) -> None:
        rule = self.rule(cid)
        if rule is None:
            return
        records = self.normaliser.records(cid, ex.version.value, ex.action, ex.request, ex.response,
                                          ex.received_at, ex.origin)
        seen = False
        now = asyncio.get_running_loop().time()
        for r in records:
            if isinstance(r, EnvironmentReading) and r.unit == "Celsius" and (not rule.sensors or r.name in rule.sensors):
                ch.temps[r.name] = (r.value, now)
                seen = True
        if not seen:
            return
        if rule.max_age > 0:  # a sensor that stopped reporting no longer holds the charger back (or up)
            for name, (_, at) in list(ch.temps.items()):
                if now - at > rule.max_age:
                    del ch.temps[name]
                    log.warning("control: %s sensor %r sent nothing for %.0f s: its last reading no longer counts",
                                cid, name, now - at, extra={"charger_id": cid})
        hottest = max(value for value, _ in ch.temps.values())
        level = D.derate_level(ch.level, hottest, rule.reduce_above, rule.pause_above, rule.hysteresis)
        ch.temperature = hottest
        if level != ch.level:
            log.info("control: %s temperature %.1f °C: derating %s -> %s", cid, hottest,
                     D.LEVEL_NAMES[ch.level], D.LEVEL_NAMES[level], extra={"charger_id": cid})
            ch.level = level
            self._recompute_site(except_for=cid)
            self._kick(cid)

    # -- the site -------------------------------------------------------------------------------

    def _recompute_site(self, except_for: str | None) -> None:
        """A start, stop or cap change may move every share: every charger with a transaction is
        reconciled (each compares against what it sent, so unchanged ones send nothing)."""
        if self.site_limit() is None:
            return
        for cid, ch in self.chargers.items():
            if cid != except_for and (ch.txs or ch.sent):
                self._kick(cid)

    def site_shares(self) -> dict[tuple[str, str], float]:
        limit = self.site_limit()
        if limit is None:
            return {}
        claims: list[tuple[int, D.Claim]] = []
        for cid, ch in self.chargers.items():
            for tx in ch.txs.values():
                if self._operator_paused(ch, tx.evse, tx.transaction_id) or ch.level == D.PAUSED:
                    continue  # draws nothing: leaves its share to the others
                cap = self._cap(cid, ch, tx.evse)
                claims.append((tx.order, D.Claim((cid, tx.transaction_id), cap)))
        claims.sort(key=lambda c: c[0])
        return D.fair_share(limit, [c for _, c in claims], self.settings.site.min_per_session)  # type: ignore[return-value]

    def site_limit(self) -> float | None:
        """The site limit in A per phase: the operator's when set, else `[site]`'s; None: none."""
        return self.site_override if self.site_overridden else self.settings.site.current_limit()

    def _operator_limit(self, ch: _Charger, evse: int) -> float | None:
        limits = [a for e, a in ch.limits.items() if e in (0, evse)]
        return min(limits) if limits else None

    def _cap(self, cid: str, ch: _Charger, evse: int) -> float:
        cap = self._operator_limit(ch, evse)
        if cap is None:
            cap = math.inf
        rule = self.rule(cid)
        if ch.level == D.REDUCED and rule is not None:
            cap = rule.reduced_current_a
        csms = self._csms_cap(ch, evse)
        if csms is not None:
            cap = min(cap, csms)
        return cap

    def _csms_cap(self, ch: _Charger, evse: int) -> float | None:
        if not self.control.respect_csms_limits:
            return None
        caps = [cap for (e, _), (_, cap) in ch.csms_caps.items() if e in (0, evse)]
        return min(caps) if caps else None

    def _operator_paused(self, ch: _Charger, evse: int, tid: str | None) -> bool:
        # EVSE 0 is the whole charger: pausing it pauses every EVSE
        return evse in ch.paused_evses or 0 in ch.paused_evses or (tid is not None and tid in ch.paused_txs)

    def want(self, cid: str, evse: int) -> D.Want:
        ch = self._charger(cid)
        tx = next((t for t in ch.txs.values() if t.evse == evse), None)
        tid = tx.transaction_id if tx is not None else None
        rule = self.rule(cid)
        share = None
        if tx is not None:
            share = self.site_shares().get((cid, tx.transaction_id))
        return D.evse_want(tid, operator_paused=self._operator_paused(ch, evse, tid),
                           derating=ch.level if rule is not None else D.NORMAL,
                           reduced=rule.reduced_current_a if rule is not None else math.inf,
                           site_share=share, csms_cap=self._csms_cap(ch, evse),
                           operator_limit=self._operator_limit(ch, evse))

    # -- reconciling ----------------------------------------------------------------------------

    def _kick(self, cid: str) -> None:
        if self._closed:
            return
        self._dirty.add(cid)
        self._touch()
        task = self._workers.get(cid)
        if task is None or task.done():
            task = self._workers[cid] = asyncio.get_running_loop().create_task(self._worker(cid), name=f"control:{cid}")
            task.add_done_callback(functools.partial(self._worker_done, cid))

    def _worker_done(self, cid: str, task: asyncio.Task[None]) -> None:
        """A finished worker is not kept (a done task per charger cost about 1 KiB each)."""
        if self._workers.get(cid) is task:
            del self._workers[cid]

    def _retry(self, cid: str) -> None:
        loop = asyncio.get_running_loop()
        # try again after as long as a charger has to answer ([control].call_timeout)
        loop.call_later(self.control.call_timeout, lambda: None if self._closed else self._kick(cid))

    async def _worker(self, cid: str) -> None:
        while cid in self._dirty and not self._closed:
            self._dirty.discard(cid)
            try:
                await self.reconcile(cid)
            except Exception:  # noqa: BLE001 - keep serving the others
                log.exception("control: reconciling %s failed", cid, extra={"charger_id": cid})

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until no charger has work pending (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._dirty or any(not t.done() for t in self._workers.values()):
            if loop.time() > deadline:
                raise TimeoutError("control work still pending")
            await asyncio.sleep(0.02)

    async def reconcile(self, cid: str) -> dict[int, _Sent]:
        ch = self._charger(cid)
        async with ch.lock:
            session = self.hub.sessions.get(cid)
            if session is None or not session.connected:
                return {}
            evses = {t.evse for t in ch.txs.values()} | ch.paused_evses | set(ch.limits) | set(ch.sent)
            if self.rule(cid) is not None and ch.level != D.NORMAL:
                evses.add(0)  # TxDefaultProfile on EVSE 0: every session that starts meanwhile is derated
            for evse in sorted(evses):
                want = self.want(cid, evse)
                sent = ch.sent.get(evse)
                if sent is not None and sent.want == want and sent.status != "unknown":
                    continue
                if sent is None and want.limit is None:
                    continue
                await self._apply(session, cid, ch, evse, want, sent)
            self._touch()
            return dict(ch.sent)

    async def _call(self, session: Any, action: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """(status, response): status is the response's `status`, a CALLERROR code or `timeout`."""
        try:
            response = await session.call_charger(action, payload, timeout=self.control.call_timeout)
        except CallFailed as exc:
            return exc.code, None
        except CallTimeout:
            return "timeout", None
        except (NotConnected, Busy) as exc:
            return type(exc).__name__, None
        return str(response.get("status", "")), response

    async def _apply(self, session: Any, cid: str, ch: _Charger, evse: int, want: D.Want, sent: _Sent | None) -> None:
        version, ctl = ch.version, self.control
        status, mechanism, new_pid = ACCEPTED, "profile", None
        inoperative = bool(sent and sent.inoperative)
        if want.limit is not None and sent is not None and sent.mechanism != "profile" and want.limit == 0 \
                and sent.want.limit == 0 and sent.status != "unknown":
            # paused by the fallback already: nothing a profile could add
            ch.sent[evse] = _Sent(want, None, sent.mechanism, inoperative, sent.status)
            return
        if want.limit is not None:
            pid = D.profile_id(ctl.profile_id_base, evse, want.purpose or D.TX_PROFILE)
            unit, phases, stack_level = self.charger_limits(cid)
            request = D.set_profile_request(version, evse, want, pid, stack_level, phases, unit,
                                            self.settings.site.voltage)
            status, _ = await self._call(session, "SetChargingProfile", request)
            if status == ACCEPTED:
                new_pid = pid
            elif status in TRANSIENT:
                # not answered (timeout, gone, queue full): nothing changed on the charger; try again later
                self._unanswered(cid, ch, evse, want, status)
                return
            elif want.limit == 0:
                mechanism, status, inoperative = await self._fallback(session, ch, evse, want, status)
            else:
                mechanism = "none"
        # our earlier profile, if it is another one (or none is wanted now): clear it by its id
        if sent is not None and sent.pid is not None and sent.pid != new_pid:
            clear_status, _ = await self._call(session, "ClearChargingProfile", D.clear_profile_request(version, sent.pid))
            if want.limit is None and clear_status in TRANSIENT:
                sent.status = "unknown"  # ours may still be there: clear it again later
                self._unanswered(cid, ch, evse, want, clear_status)
                return
            if want.limit is None:
                status = clear_status
        if inoperative and (want.limit is None or want.limit > 0 or mechanism == "profile"):
            st, _ = await self._call(session, "ChangeAvailability", D.availability_request(version, evse, True))
            inoperative = False
            if want.limit is None:
                mechanism, status = "availability", st
        if want.limit is None and sent is not None and sent.mechanism == "stop":
            mechanism = "stop"
        ch.sent[evse] = _Sent(want, new_pid, mechanism, inoperative, status)
        if want.limit is None and not inoperative:
            ch.sent.pop(evse, None)
        ch.failing.pop(evse, None)
        released_tx = sent.want.transaction_id if sent is not None else None
        self._changed(cid, ch, evse, want, mechanism, status, want.transaction_id or released_tx)

    def _unanswered(self, cid: str, ch: _Charger, evse: int, want: D.Want, status: str) -> None:
        """A call got no answer: retry later; the first failure in a row is published."""
        self._retry(cid)
        if evse not in ch.failing:
            self._changed(cid, ch, evse, want, "none", status, want.transaction_id)
        ch.failing[evse] = status

    async def _fallback(self, session: Any, ch: _Charger, evse: int, want: D.Want,
                        refused: str) -> tuple[str, str, bool]:
        """The charger refused the pause profile: (mechanism, status, inoperative)."""
        how = self.control.fallback
        log.warning("control: %s refused a charging profile on EVSE %d (%s); fallback: %s", session.charger_id,
                    evse, refused, how, extra={"charger_id": session.charger_id})
        if how == "availability":
            status, _ = await self._call(session, "ChangeAvailability",
                                         D.availability_request(ch.version, evse, False))
            return "availability", status, status in (ACCEPTED, "Scheduled")
        if how == "stop" and want.transaction_id is not None:
            action, payload = D.stop_request(ch.version, want.transaction_id)
            status, _ = await self._call(session, action, payload)
            return "stop", status, False
        return "none", refused, False

    def _changed(self, cid: str, ch: _Charger, evse: int, want: D.Want, mechanism: str, status: str,
                 tid: str | None) -> None:
        state = "released" if want.limit is None else ("paused" if want.limit == 0 else "limited")
        change = ControlChange(charger_id=cid, evse=evse, transaction_id=tid, state=state,
                               limit_a=want.limit, reason=want.reason, mechanism=mechanism, status=status,
                               ts=datetime.now(timezone.utc), temperature=ch.temperature)
        log.info("control: %s EVSE %d %s%s (reason: %s; %s %s)", cid, evse, state,
                 "" if want.limit is None else f" at {want.limit:g} A", want.reason or "none left", mechanism, status,
                 extra={"charger_id": cid})
        self.changes.append(change)
        del self.changes[:-1000]
        if self.publish is not None:
            try:
                self.publish((change,))
            except Exception:  # noqa: BLE001 - telemetry must never stop local control
                log.exception("control: the telemetry plane refused a change")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in self._workers.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)
        if self.state_file is not None:
            await asyncio.to_thread(state.write_json, self.state_file, self._snapshot())

    # -- what survives a restart ----------------------------------------------------------------

    def _touch(self) -> None:
        if self.state_file is None or self._closed:
            return
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save())
        else:
            self._save_again = True

    async def _save(self) -> None:
        path = self.state_file
        if path is None:
            return
        while True:
            self._save_again = False
            try:
                await asyncio.to_thread(state.write_json, path, self._snapshot())
            except OSError as exc:
                log.error("control: could not save %s: %s", self.state_file, exc)
            if not self._save_again or self._closed:
                return

    def _snapshot(self) -> dict[str, Any]:
        return state.snapshot(self.chargers, self.site_overridden, self.site_override)

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.is_file():
            return
        try:
            self._order, site = state.restore(json.loads(self.state_file.read_text(encoding="utf-8")), self._charger)
            if site is not None:
                self.site_overridden, self.site_override = True, site[0]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("control: %s unreadable (%s); starting without it", self.state_file, exc)
            self.chargers.clear()
