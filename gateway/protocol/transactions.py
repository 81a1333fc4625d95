"""What the offline rules need to know about a message, and the 1.6 transaction-id rewrites.

Pure functions over parsed payloads: which charger messages are transaction-related (and so must
be stored before they are answered and replayed in order), which ones are coalesced, and where
1.6 transaction ids sit in each direction.
"""

from __future__ import annotations

import enum
from typing import Any

from gateway.protocol.frames import OcppVersion


class Kind(str, enum.Enum):
    """How the gateway treats a charger CALL while it answers for the CSMS."""

    START = "start"  # 1.6 StartTransaction, 2.x TransactionEvent Started: stored, never dropped
    STOP = "stop"  # 1.6 StopTransaction, 2.x TransactionEvent Ended: stored, never dropped
    TRANSACTION = "transaction"  # other transaction messages: stored in order
    STATUS = "status"  # StatusNotification: stored, coalesced to the latest per connector
    METER = "meter"  # meter values outside a transaction: stored or dropped per configuration
    OTHER = "other"  # configured extra actions (e.g. SecurityEventNotification): stored
    BOOT = "boot"  # BootNotification: answered locally, the latest replayed first
    LIVE = "live"  # everything else: answered locally while offline, relayed live when online

    @property
    def stored(self) -> bool:
        return self not in (Kind.BOOT, Kind.LIVE)


def classify(version: OcppVersion, action: str, payload: dict[str, Any], *, replay_actions: frozenset[str],
             meter_values_without_transaction: str) -> Kind:
    if action == "BootNotification":
        return Kind.BOOT
    if action == "StatusNotification":
        return Kind.STATUS
    if version is OcppVersion.V16:
        if action == "StartTransaction":
            return Kind.START
        if action == "StopTransaction":
            return Kind.STOP
        if action == "MeterValues":
            if "transactionId" in payload:
                return Kind.TRANSACTION
            return Kind.METER if meter_values_without_transaction == "replay" else Kind.LIVE
    else:
        if action == "TransactionEvent":
            event = payload.get("eventType")
            return Kind.START if event == "Started" else Kind.STOP if event == "Ended" else Kind.TRANSACTION
        if action == "MeterValues":
            return Kind.METER if meter_values_without_transaction == "replay" else Kind.LIVE
    if action in replay_actions:
        return Kind.OTHER
    return Kind.LIVE


def status_key(version: OcppVersion, payload: dict[str, Any]) -> int | None:
    """The connector a StatusNotification is about (the coalescing key)."""
    if version is OcppVersion.V16:
        c = payload.get("connectorId")
        return c if isinstance(c, int) else None
    evse, conn = payload.get("evseId"), payload.get("connectorId")
    if isinstance(evse, int) and isinstance(conn, int):
        return evse * 1000 + conn
    return None


# -- 1.6 transaction ids --------------------------------------------------------------------------

CHARGER_TX_ACTIONS = frozenset({"MeterValues", "StopTransaction"})
CSMS_TX_ACTIONS = frozenset({"RemoteStopTransaction", "SetChargingProfile"})


def charger_tx_id(action: str, payload: dict[str, Any]) -> int | None:
    """The transaction id in a 1.6 charger message that carries one."""
    if action in CHARGER_TX_ACTIONS:
        t = payload.get("transactionId")
        return t if type(t) is int else None
    return None


def with_charger_tx_id(action: str, payload: dict[str, Any], tx_id: int) -> dict[str, Any]:
    return {**payload, "transactionId": tx_id}


def csms_tx_id(action: str, payload: dict[str, Any]) -> int | None:
    """The transaction id in a 1.6 CSMS command that carries one (RemoteStopTransaction; a
    SetChargingProfile TxProfile's csChargingProfiles.transactionId)."""
    if action == "RemoteStopTransaction":
        t = payload.get("transactionId")
        return t if type(t) is int else None
    if action == "SetChargingProfile":
        profile = payload.get("csChargingProfiles")
        if isinstance(profile, dict):
            t = profile.get("transactionId")
            return t if type(t) is int else None
    return None


def with_csms_tx_id(action: str, payload: dict[str, Any], tx_id: int) -> dict[str, Any]:
    if action == "RemoteStopTransaction":
        return {**payload, "transactionId": tx_id}
    profile = dict(payload["csChargingProfiles"])
    profile["transactionId"] = tx_id
    return {**payload, "csChargingProfiles": profile}


def mark_offline(payload: dict[str, Any]) -> dict[str, Any]:
    """A 2.x TransactionEvent the gateway delayed carries `offline: true` (seqNo, timestamps and the
    station's transactionId untouched)."""
    return payload if payload.get("offline") is True else {**payload, "offline": True}
