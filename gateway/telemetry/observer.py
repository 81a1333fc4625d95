"""The session observer that turns every finished exchange into records and hands them to the sinks.

Runs on the event loop inside the relay's call path, so it only normalises (pure, microseconds) and
calls `sink.offer(record)`, which puts the record on the sink's own bounded queue with put_nowait
and returns (a full queue drops the record and counts it; ARCHITECTURE.md invariant 6). It never
raises into the relay.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from gateway.ports import Exchange
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.records import ChargerForgotten, ChargerState, Record

log = logging.getLogger("gateway.telemetry")


class TelemetrySink(Protocol):
    """A destination for records (MQTT, InfluxDB). `offer` must return at once and never raise; a
    sink may also have `offer_all(records)`, which takes the records of one exchange at once."""

    def offer(self, record: Record) -> None: ...


class TelemetryObserver:
    def __init__(self, sinks: Sequence[TelemetrySink], normaliser: Normaliser | None = None) -> None:
        self.sinks = list(sinks)
        self._handoffs = [(sink, getattr(sink, "offer_all", None)) for sink in self.sinks]
        self.normaliser = normaliser or Normaliser()
        self.failures = 0

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

    def exchange(self, session: Any, exchange: Exchange) -> None:
        if exchange.error is not None:
            return  # refused or unanswered: the charger will send it again
        try:
            records = self.normaliser.records(exchange.charger_id, exchange.version.value, exchange.action,
                                              exchange.request, exchange.response, exchange.received_at,
                                              exchange.origin)
        except Exception:  # noqa: BLE001 - a payload the normaliser did not foresee
            self.failures += 1
            log.exception("could not normalise %s from %s", exchange.action, exchange.charger_id)
            return
        if records:
            self._offer(records)

    def session_event(self, session: Any, event: str) -> None:
        now = datetime.now(timezone.utc)
        try:
            if event == "forgotten":
                self.normaliser.forget(session.charger_id)
                self._offer([ChargerForgotten(charger_id=session.charger_id, ts=now)])
                return
            connected = bool(session.connected) and event != "disconnected"
            self._offer([ChargerState(charger_id=session.charger_id, connected=connected,
                                      upstream=session.upstream_state.value, protocol=session.version.value,
                                      ts=now)])
        except Exception:  # noqa: BLE001
            self.failures += 1
            log.exception("telemetry: session event %s of %s", event, getattr(session, "charger_id", "?"))
