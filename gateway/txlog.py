"""The transaction log: every transaction the site's chargers report, kept in the store for
`GET /api/v1/transactions`, whatever answered them (the CSMS, or the gateway while offline or
standalone).

An observer: it turns exchanges into transaction events with the telemetry normaliser and hands
them to one writer task through a bounded queue, so the relay never waits for the disk. When the
queue is full an event is dropped with a warning (counted in `dropped`). `events` counts the
events taken in; `flush()` returns once every one of them is written.

A session shows an exchange to its observers after the charger has its answer, so a charger that
got its answer does not mean the log has the event yet: wait for `events`, then `flush()`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import StoreWriteFailed
from gateway.ports import Exchange
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import TransactionEvent

log = logging.getLogger("gateway.txlog")


class TransactionLog:
    def __init__(self, store: Any, max_queue: int = 10_000) -> None:
        self.store = store
        self.normaliser = Normaliser()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.dropped = 0
        self.events = 0  # transaction events taken in (written, queued, or dropped)
        self._task: asyncio.Task[None] | None = None

    def exchange(self, session: Any, exchange: Exchange) -> None:
        if exchange.error is not None or exchange.origin != "charger":
            return
        if exchange.action not in ("StartTransaction", "StopTransaction", "TransactionEvent"):
            return
        # `offline`: the charger said so (2.x), or the gateway answered the start or stop itself
        # while relaying (the CSMS was away, or late beyond [upstream].answer_within)
        by_gateway = exchange.answered_by == "gateway" and getattr(
            getattr(session, "upstream_state", None), "value", "standalone") != "standalone"
        for rec in self.normaliser.records(exchange.charger_id, exchange.version.value, exchange.action,
                                           exchange.request, exchange.response, exchange.received_at):
            if isinstance(rec, TransactionEvent) and rec.transaction_id is not None:
                self._put(rec, by_gateway and rec.event in ("started", "ended"))

    def session_event(self, session: Any, event: str) -> None:
        return

    def _put(self, rec: TransactionEvent, offline: bool = False) -> None:
        self.events += 1
        if rec.ts_clamped:
            log.warning("transaction %s of %s: the charger's time is out of range; logged as %s",
                        rec.transaction_id, rec.charger_id, rec.ts.isoformat())
        ts = rec.ts.isoformat()
        row = {"charger_id": rec.charger_id, "transaction_id": str(rec.transaction_id), "evse": rec.evse,
               "connector": rec.connector, "started_at": ts if rec.event == "started" else None,
               "ended_at": ts if rec.event == "ended" else None, "meter_start": rec.meter_start,
               "meter_stop": rec.meter_stop, "energy_wh": rec.energy_wh, "reason": rec.reason,
               "offline": int(rec.offline or offline), "ts_clamped": int(rec.ts_clamped), "ts": ts}
        try:
            self.queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("transaction log queue full; event for %s dropped", rec.charger_id)

    async def _run(self) -> None:
        while True:
            row = await self.queue.get()
            try:
                await self.store.transaction_event(row)
            except StoreWriteFailed as exc:  # the store logs the episode once
                self.dropped += 1
                log.debug("transaction event for %s not recorded: %s", row["charger_id"], exc)
            except Exception:  # noqa: BLE001 - the log is informative; keep going
                log.exception("could not record a transaction event")
            finally:
                self.queue.task_done()

    async def flush(self) -> None:
        """Return once every event taken in so far is in the store (or failed to be)."""
        if self._task is None or self._task.done():
            await self._drain()
        else:
            await self.queue.join()

    async def _drain(self) -> None:
        while not self.queue.empty():
            row = self.queue.get_nowait()
            try:
                await self.store.transaction_event(row)
            except Exception:  # noqa: BLE001
                log.exception("could not record a transaction event")
            finally:
                self.queue.task_done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="txlog")

    async def stop(self) -> None:
        """Write what is queued (the row being written finishes first), then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
