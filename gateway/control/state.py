"""What local control keeps per charger, and how it survives a restart (`control-state.json`):
operator pauses and limits, open transactions, the derating step, the profiles of the gateway's a
charger holds (else a paused EVSE could never be resumed) and an operator's site limit."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gateway.control import decide as D

ACCEPTED = "Accepted"


@dataclass
class Tx:
    transaction_id: str
    evse: int
    order: int


@dataclass
class Sent:
    """What the gateway last asked for on one EVSE, and how."""

    want: D.Want
    pid: int | None = None  # our profile id on the charger (None: no profile of ours)
    mechanism: str = "profile"
    inoperative: bool = False  # fallback ChangeAvailability Inoperative in force
    status: str = ACCEPTED


@dataclass
class ChargerControl:
    version: str = "ocpp1.6"
    txs: dict[str, Tx] = field(default_factory=dict)  # transaction id (as text) -> tx
    paused_evses: set[int] = field(default_factory=set)  # operator pause of an EVSE
    paused_txs: set[str] = field(default_factory=set)  # operator pause of one transaction
    limits: dict[int, float] = field(default_factory=dict)  # operator current limit per EVSE (A; 0 = every EVSE)
    temps: dict[str, tuple[float, float]] = field(default_factory=dict)  # reading name -> (latest °C, monotonic time)
    level: int = D.NORMAL
    temperature: float | None = None
    csms_caps: dict[tuple[int, Any], tuple[str | None, float]] = field(default_factory=dict)  # (evse, pid) -> (purpose, A)
    sent: dict[int, Sent] = field(default_factory=dict)  # evse -> what we sent
    failing: dict[int, str] = field(default_factory=dict)  # EVSE -> why its last call got no answer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def snapshot(chargers: dict[str, ChargerControl], site_overridden: bool, site_limit: float | None) -> dict[str, Any]:
    out = {}
    for cid, ch in chargers.items():
        out[cid] = {
            "version": ch.version, "paused_evses": sorted(ch.paused_evses), "paused_txs": sorted(ch.paused_txs),
            "limits": [[e, a] for e, a in sorted(ch.limits.items())],
            "txs": [[t.transaction_id, t.evse, t.order] for t in ch.txs.values()], "level": ch.level,
            "sent": [{"evse": e, "pid": x.pid, "limit": x.want.limit, "purpose": x.want.purpose,
                      "transaction_id": x.want.transaction_id, "reason": x.want.reason, "mechanism": x.mechanism,
                      "inoperative": x.inoperative} for e, x in ch.sent.items()],
        }
    site = {"site_limit_a": site_limit} if site_overridden else {}
    return {"chargers": out, **site}


def restore(data: dict[str, Any], charger: Callable[[str], ChargerControl]) -> tuple[int, tuple[float | None] | None]:
    """Fill the chargers (`charger(id)` makes or finds one) from a snapshot; (the highest
    transaction order seen, (the operator's site limit,) or None when none was set)."""
    order = 0
    for cid, c in (data.get("chargers") or {}).items():
        ch = charger(cid)
        ch.version = str(c.get("version") or "ocpp1.6")
        ch.paused_evses = {int(e) for e in c.get("paused_evses") or []}
        ch.paused_txs = {str(t) for t in c.get("paused_txs") or []}
        ch.limits = {int(e): float(a) for e, a in c.get("limits") or []}
        for tid, evse, seq in c.get("txs") or []:
            ch.txs[str(tid)] = Tx(str(tid), int(evse), int(seq))
            order = max(order, int(seq))
        ch.level = int(c.get("level") or 0)
        for x in c.get("sent") or []:
            want = D.Want(x.get("limit"), x.get("purpose"), x.get("transaction_id"), x.get("reason") or "")
            # "unknown": set again (or cleared) when the charger connects
            ch.sent[int(x["evse"])] = Sent(want, x.get("pid"), x.get("mechanism") or "profile",
                                           bool(x.get("inoperative")), "unknown")
    if "site_limit_a" not in data:
        return order, None
    return order, (None if data["site_limit_a"] is None else float(data["site_limit_a"]),)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)
