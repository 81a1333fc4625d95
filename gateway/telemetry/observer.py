"""The session observer that turns every finished exchange into records and hands them to the sinks.

Runs on the event loop inside the relay's call path. With `gather` (the gateway uses GATHER) it only
keeps the exchange there, and once per interval normalises everything kept, in arrival order, and
hands each sink the records of the whole interval at once (`offer_all`: encoded and put on the
sink's own bounded queue with put_nowait; a full queue drops them and counts them; ARCHITECTURE.md
invariant 6). Without `gather` every exchange is normalised and handed off at once. It never
raises into the relay.

Why gather: inside a busy relay, the normaliser and the encoders run between frames with cold
caches, and cost four to five times what they cost in a tight loop (bench/README.md "Telemetry
cost"); run over a few dozen exchanges at a time they stay warm. The records keep the charger's
timestamps; what gathering adds is at most GATHER of latency on MQTT and InfluxDB.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from gateway.ports import Exchange
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import ChargerForgotten, ChargerState, Record

log = logging.getLogger("gateway.telemetry")

GATHER = 0.05  # s: exchanges kept before they are normalised and handed to the sinks together
GATHER_MAX = 500  # exchanges: handed off at once when this many are kept


class TelemetrySink(Protocol):
    """A destination for records (MQTT, InfluxDB). `offer` must return at once and never raise; a
    sink may also have `offer_all(records)`, which takes the records of one exchange at once."""

    def offer(self, record: Record) -> None: ...


class TelemetryObserver:
    def __init__(self, sinks: Sequence[TelemetrySink], normaliser: Normaliser | None = None,
                 gather: float = 0.0) -> None:
        self.sinks = list(sinks)
        self._handoffs = [(sink, getattr(sink, "offer_all", None)) for sink in self.sinks]
        self.normaliser = normaliser or Normaliser()
        self.failures = 0
        self.gather = gather  # s; 0: hand off every exchange as it finishes
        # exchanges, and (charger to forget or None, records) of session events, in arrival order
        self._pending: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        """Normalise what was kept and hand it to every sink in one go (the gateway also calls this
        on its way down, before the sinks stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        records: list[Record] = []
        for item in pending:
            if type(item) is tuple:
                forget, events = item
                if forget is not None:
                    self.normaliser.forget(forget)
                records += events
            else:
                records += self._normalise(item)
        if records:
            self._offer(records)

    def _keep(self, item: Any) -> None:
        """Queue an exchange or a session event's records; without `gather` they go out at once."""
        self._pending.append(item)
        if not self.gather or len(self._pending) >= GATHER_MAX:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.gather, self.flush)

    def _normalise(self, exchange: Exchange) -> list[Record]:
        try:
            return self.normaliser.records(exchange.charger_id, exchange.version, exchange.action,
                                           exchange.request, exchange.response, exchange.received_at,
                                           exchange.origin)
        except Exception:  # noqa: BLE001 - a payload the normaliser did not foresee
            self.failures += 1
            log.exception("could not normalise %s from %s", exchange.action, exchange.charger_id)
            return []

    def _offer(self, records: list[Record]) -> None:
        for sink, offer_all in self._handoffs:
            try:
                if offer_all is not None:  # the records of one exchange in one hand-off
                    offer_all(records)
                else:
                    for record in records:
                        sink.offer(record)
            except Exception:  # noqa: BLE001 - a sink bug must never reach the relay
                self.failures += 1
                log.exception("telemetry sink %r refused a record", sink)

    def records(self, records: Sequence[Record]) -> None:
        """Records made elsewhere in the core (local control's changes): kept and handed to the
        sinks in order with the exchanges kept before them. Never raises."""
        try:
            self._keep((None, list(records)))
        except Exception:  # noqa: BLE001
            self.failures += 1
            log.exception("telemetry: could not keep %d records", len(records))

    def exchange(self, session: Any, exchange: Exchange) -> None:
        if exchange.error is not None:
            return  # refused or unanswered: the charger will send it again
        self._keep(exchange)

    def session_event(self, session: Any, event: str) -> None:
        now = datetime.now(timezone.utc)
        try:
            # the state is read now; the records go out in order with the exchanges kept before them
            records: list[Record]
            if event == "forgotten":
                forget, records = session.charger_id, [ChargerForgotten(charger_id=session.charger_id, ts=now)]
            else:
                connected = bool(session.connected) and event != "disconnected"
                forget, records = None, [ChargerState(charger_id=session.charger_id, connected=connected,
                                                      upstream=session.upstream_state.value,
                                                      protocol=session.version.value, ts=now)]
            self._keep((forget, records))
        except Exception:  # noqa: BLE001
            self.failures += 1
            log.exception("telemetry: session event %s of %s", event, getattr(session, "charger_id", "?"))
