"""Local control's operator commands: pause, resume, an EVSE's current limit and the site limit
(REST and MQTT reach them through gateway/operator.py), and `view`, what local control knows of a
charger. A mixin for gateway.control.engine.ControlEngine: it changes the engine's per-charger
state, then lets the engine reconcile and reports what was applied."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from gateway.control import decide as D
from gateway.control.state import ACCEPTED, ChargerControl as _Charger, Sent as _Sent
from gateway.errors import GatewayError
from gateway.telemetry.records import Record, SiteLimit

log = logging.getLogger("gateway.control")


class ControlError(GatewayError):
    """A pause or resume that cannot be done; `code` names why (not_connected, unknown_transaction,
    disabled, bad_request)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OperatorCommands:
    """Mixin for ControlEngine (needs its state and its reconciling; see the engine)."""

    hub: Any
    chargers: dict[str, _Charger]
    publish: Callable[[Sequence[Record]], None] | None
    site_override: float | None
    site_overridden: bool
    _charger: Callable[[str], _Charger]
    _kick: Callable[[str], None]
    _touch: Callable[[], None]
    _recompute_site: Callable[..., None]
    reconcile: Callable[[str], Any]
    settled: Callable[..., Any]
    site_limit: Callable[[], float | None]
    want: Callable[[str, int], D.Want]

    @property
    def control(self) -> Any:  # ControlEngine's own property comes first in the MRO
        raise NotImplementedError

    def _target(self, cid: str, body: dict[str, Any]) -> tuple[_Charger, int, str | None]:
        if not self.control.pause_enabled:
            raise ControlError("disabled", "pause and resume are switched off ([control].pause_enabled)")
        session = self.hub.sessions.get(cid)
        if session is None or not session.connected:
            raise ControlError("not_connected", f"charger {cid!r} is not connected")
        ch = self._charger(cid)
        ch.version = session.version.value
        evse, tid = body.get("evse"), body.get("transaction_id")
        if evse is None and tid is None:
            evse = 0  # {}: the whole charger
        if tid is not None:
            tx = ch.txs.get(str(tid))
            if tx is None:
                raise ControlError("unknown_transaction", f"no active transaction {tid!r} on {cid!r}")
            return ch, tx.evse, tx.transaction_id
        if isinstance(evse, bool) or not isinstance(evse, int) or evse < 0:
            raise ControlError("bad_request",
                               'the body needs {"evse": n} (n >= 0), {"transaction_id": ...} or {} (the whole charger)')
        return ch, evse, None

    async def pause(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        ch, evse, tid = self._target(cid, body)
        if tid is not None:
            ch.paused_txs.add(tid)
        else:
            ch.paused_evses.add(evse)
        log.info("control: operator pause of %s EVSE %d%s", cid, evse, f" transaction {tid}" if tid else "",
                 extra={"charger_id": cid})
        return await self._result(cid, ch, evse)

    async def resume(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        ch, evse, tid = self._target(cid, body)
        # either form lifts the operator pauses of that EVSE and of its transaction (a pause of the
        # whole charger, EVSE 0, is lifted only by resuming EVSE 0)
        ch.paused_evses.discard(evse)
        if tid is not None:
            ch.paused_txs.discard(tid)
        else:
            tx = next((t for t in ch.txs.values() if t.evse == evse), None)
            if tx is not None:
                ch.paused_txs.discard(tx.transaction_id)
        log.info("control: operator resume of %s EVSE %d", cid, evse, extra={"charger_id": cid})
        return await self._result(cid, ch, evse)

    async def limit(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        """An operator current limit on an EVSE (`{"evse": n, "limit_a": A}`, EVSE 0 or no EVSE = every
        EVSE of the charger); `"limit_a": null` lifts it. A limit of 0 pauses."""
        limit = _amperes(body)
        ch, evse, _ = self._target(cid, {"evse": body.get("evse", 0)})
        if limit is None:
            ch.limits.pop(evse, None)
        else:
            ch.limits[evse] = limit
        log.info("control: operator limit of %s EVSE %d: %s", cid, evse, "none" if limit is None else f"{limit:g} A",
                 extra={"charger_id": cid})
        return await self._result(cid, ch, evse)

    async def set_site_limit(self, body: dict[str, Any]) -> dict[str, Any]:
        """The operator's site limit (`{"limit_a": A}`; null: no site limit). It replaces `[site]`'s
        (kept across restarts with the rest of control's state)."""
        if not self.control.pause_enabled:
            raise ControlError("disabled", "operator control is switched off ([control].pause_enabled)")
        self.site_override, self.site_overridden = _amperes(body), True
        log.info("control: operator site limit: %s",
                 "none" if self.site_override is None else f"{self.site_override:g} A")
        self._site_changed()
        self._touch()
        for cid, ch in self.chargers.items():
            if ch.txs or ch.sent:
                self._kick(cid)
        await self.settled()
        return {"limit_a": self.site_limit(), "source": "operator"}

    def _site_changed(self) -> None:
        if self.publish is None:
            return
        record = SiteLimit(limit_a=self.site_limit(), source="operator" if self.site_overridden else "config",
                           ts=datetime.now(timezone.utc))
        try:
            self.publish((record,))
        except Exception:  # noqa: BLE001 - telemetry must never stop local control
            log.exception("control: the telemetry plane refused the site limit")

    async def _result(self, cid: str, ch: _Charger, evse: int) -> dict[str, Any]:
        self._recompute_site(except_for=cid)
        await self.reconcile(cid)
        sent = ch.sent.get(evse)
        want = sent.want if sent is not None else D.NOTHING
        if evse in ch.failing:  # not applied: the charger did not answer (it is tried again)
            want = self.want(cid, evse)
            sent = _Sent(want, None, "none", False, ch.failing[evse])
        return {
            "charger_id": cid, "evse": evse, "transaction_id": want.transaction_id,
            "state": "released" if want.limit is None else ("paused" if want.limit == 0 else "limited"),
            "limit_a": want.limit, "reason": want.reason or None,
            "mechanism": sent.mechanism if sent is not None else "profile",
            "status": sent.status if sent is not None else ACCEPTED,
        }

    def view(self, cid: str) -> dict[str, Any]:
        """What local control knows and applies for one charger (REST GET .../control)."""
        ch = self.chargers.get(cid)
        if ch is None:
            return {"charger_id": cid, "transactions": [], "evses": [], "temperature": None, "derating": "normal",
                    "paused_evses": []}
        return {
            "charger_id": cid,
            "transactions": [{"transaction_id": t.transaction_id, "evse": t.evse} for t in ch.txs.values()],
            "evses": [{"evse": e, "transaction_id": s.want.transaction_id, "limit_a": s.want.limit,
                       "reason": s.want.reason or None, "mechanism": s.mechanism, "status": s.status}
                      for e, s in sorted(ch.sent.items())],
            "temperature": ch.temperature, "derating": D.LEVEL_NAMES[ch.level],
            "paused_evses": sorted(ch.paused_evses),
            "limits": {str(e): a for e, a in sorted(ch.limits.items())},
        }


def _amperes(body: dict[str, Any]) -> float | None:
    """`limit_a` of a limit command: a number >= 0 (A per phase) or null."""
    if "limit_a" not in body:
        raise ControlError("bad_request", 'the body needs "limit_a": a number of amperes >= 0, or null to lift it')
    value = body["limit_a"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10_000:
        raise ControlError("bad_request", '"limit_a" must be a number of amperes >= 0, or null')
    return float(value)
