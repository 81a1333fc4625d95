"""The 1.6 transaction-id map: ids the gateway issued while the CSMS was away, and the CSMS's ids
for them once their StartTransaction was replayed.

A 1.6 charger that starts a transaction offline gets a local id from the gateway (from
`[offline].transaction_id_min/max`). It keeps using that id in MeterValues and StopTransaction;
the CSMS knows the transaction by the id it answered the replayed StartTransaction with. Every
place where a 1.6 id crosses the gateway asks this map (charger -> CSMS: `for_csms`; CSMS ->
charger: `for_charger`), so the rewrite is written once. Pure data: no clock, no I/O; the store
keeps a durable copy (`Store.tx_map`), loaded with `bind`.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol import transactions as T

# what `lookup` returns for an id that is mapped but whose StartTransaction has not reached the CSMS
UNSTARTED = -1


class TxIdMap:
    """Local 1.6 transaction ids <-> the CSMS's. `local_to_csms` maps each local id the gateway
    issued to the CSMS's id, or None while its StartTransaction waits in the outbox."""

    __slots__ = ("local_to_csms", "csms_to_local", "stopped", "retired", "max_retired")

    def __init__(self, max_retired: int = 10_000) -> None:
        self.local_to_csms: dict[int, int | None] = {}
        self.csms_to_local: dict[int, int] = {}
        self.stopped: set[int] = set()  # local ids whose StopTransaction has been seen
        # finished mappings (the CSMS acknowledged the stop), oldest first: kept so that a late
        # MeterValues or a retried StopTransaction still goes out with the CSMS's id; at most
        # `max_retired` ([offline].id_map_max; the store also drops them after id_map_grace)
        self.retired: dict[int, None] = {}
        self.max_retired = max_retired

    def __bool__(self) -> bool:
        return bool(self.local_to_csms)

    def __len__(self) -> int:
        return len(self.local_to_csms)

    def __contains__(self, local_id: object) -> bool:
        return local_id in self.local_to_csms

    def bind(self, local_id: int, csms_id: int | None) -> None:
        """`local_id` was issued by the gateway; `csms_id` is the CSMS's id for it (None: not yet)."""
        self.local_to_csms[local_id] = csms_id
        if csms_id is not None:
            self.csms_to_local[csms_id] = local_id

    def retire(self, local_id: int) -> None:
        """The CSMS acknowledged the transaction's stop: keep the mapping (bounded), as finished."""
        if local_id not in self.local_to_csms:
            return
        self.stopped.add(local_id)
        self.retired.pop(local_id, None)
        self.retired[local_id] = None
        while len(self.retired) > self.max_retired:
            oldest = next(iter(self.retired))
            del self.retired[oldest]
            self.unbind(oldest)

    def unbind(self, local_id: int) -> None:
        """The CSMS acknowledged the transaction's stop (or it was set aside): forget it."""
        csms_id = self.local_to_csms.pop(local_id, None)
        if csms_id is not None:
            self.csms_to_local.pop(csms_id, None)
        self.stopped.discard(local_id)
        self.retired.pop(local_id, None)

    def running(self, local_id: int) -> bool:
        """No StopTransaction seen for this local id."""
        return local_id not in self.stopped

    def note_stop(self, action: str, payload: dict[str, Any]) -> None:
        """A charger StopTransaction passed the gateway: remember that its local id has stopped."""
        if action == "StopTransaction":
            tid = payload.get("transactionId")
            if isinstance(tid, int) and tid in self.local_to_csms:
                self.stopped.add(tid)

    # -- charger -> CSMS --------------------------------------------------------------------------

    def lookup(self, action: str, payload: dict[str, Any]) -> tuple[int, int] | None:
        """(local id, CSMS id) for a charger message naming a mapped local id; the CSMS id is
        `UNSTARTED` while the transaction's start waits in the outbox. None: not a mapped id."""
        local_to_csms = self.local_to_csms
        if not local_to_csms:
            return None
        tid = T.charger_tx_id(action, payload)
        if tid is None or tid not in local_to_csms:
            return None
        csms_id = local_to_csms[tid]
        return tid, UNSTARTED if csms_id is None else csms_id

    @staticmethod
    def for_csms(action: str, payload: dict[str, Any], csms_id: int) -> dict[str, Any]:
        """The charger message's payload with the CSMS's transaction id (from `lookup`)."""
        return T.with_charger_tx_id(action, payload, csms_id)

    # -- CSMS -> charger --------------------------------------------------------------------------

    def for_charger(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A CSMS command naming a transaction the charger knows by a local id, rewritten to that
        id; None when it names no mapped id (send it as it came)."""
        csms_to_local = self.csms_to_local
        if not csms_to_local:
            return None
        tid = T.csms_tx_id(action, payload)
        if tid is None or tid not in csms_to_local:
            return None
        return T.with_csms_tx_id(action, payload, csms_to_local[tid])
