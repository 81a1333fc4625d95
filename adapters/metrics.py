"""Prometheus metrics (prometheus_client), fed by a session observer and read at scrape time.

Why prometheus_client: it writes the exposition format exactly as Prometheus parses it (escaping,
histogram `_bucket`/`_sum`/`_count`, `# HELP`/`# TYPE`), is pure Python with no dependencies, and
other parts of the gateway (the offline store, the telemetry sinks) can register their own
collectors on the same registry (`Metrics.registry`) without knowing about HTTP.

Two kinds of numbers:
- counters and histograms updated by `exchange()`/`session_event()` (calls by origin and action,
  CALLERRORs by code, round trips, connects, reconnects, upstream state changes);
- gauges computed when scraped from the hub's live sessions (connected chargers by transport and
  protocol, upstream links by state, calls waiting), so they can never drift from the truth.

Each gateway has its own CollectorRegistry (tests run several gateways in one process).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.ports import Exchange

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPSTREAM_STATES = ("standalone", "connecting", "online", "offline")
# Round trips: a charger on a site LAN answers in milliseconds; a CSMS over a mobile uplink in
# tens to hundreds; timeouts are 30 s by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LiveCollector:
    """Gauges read from the hub at scrape time."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        sessions = list(self.hub.sessions.values())
        connected = GaugeMetricFamily("ocppgw_chargers_connected", "Chargers with a live connection",
                                      labels=["transport", "protocol"])
        counts: dict[tuple[str, str], int] = {}
        for s in sessions:
            if s.link is not None:
                key = (s.link.transport, s.version.value)
                counts[key] = counts.get(key, 0) + 1
        for (transport, protocol), n in sorted(counts.items()):
            connected.add_metric([transport, protocol], n)
        yield connected
        links = GaugeMetricFamily("ocppgw_upstream_links", "Chargers' upstream links by state", labels=["state"])
        states = dict.fromkeys(UPSTREAM_STATES, 0)
        for s in sessions:
            states[s.upstream_state.value] = states.get(s.upstream_state.value, 0) + 1
        for state, n in states.items():
            links.add_metric([state], n)
        yield links
        queued = GaugeMetricFamily("ocppgw_calls_queued", "CALLs waiting or in flight, by direction",
                                   labels=["direction"])
        queued.add_metric(["to_charger"], sum(len(s.to_charger) for s in sessions))
        queued.add_metric(["to_csms"], sum(len(s.to_upstream) for s in sessions))
        yield queued


class Metrics:
    """The gateway's metrics; a session observer (append it to `hub.observers`)."""

    def __init__(self, hub: Any) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        registry.register(_LiveCollector(hub))
        Gauge("ocppgw_build_info", "The gateway's version", ["version"], registry=registry).labels(__version__).set(1)
        Gauge("ocppgw_start_time_seconds", "When the gateway started (Unix time)",
              registry=registry).set(datetime.now(timezone.utc).timestamp())
        self.calls = Counter("ocppgw_calls", "Finished CALLs by who sent them (charger, csms, gateway), "
                             "action, who answered and outcome (result, error, timeout, none for a 2.1 SEND)",
                             ["origin", "action", "answered_by", "outcome"], registry=registry)
        self.errors = Counter("ocppgw_call_errors", "CALLERRORs (and timeouts) by origin, action and error code",
                              ["origin", "action", "code"], registry=registry)
        self.round_trip = Histogram("ocppgw_call_round_trip_seconds",
                                    "Time from a CALL's arrival at the gateway to its answer, by origin and "
                                    "the peer that answered (csms: upstream round trip; charger: towards chargers)",
                                    ["origin", "peer"], buckets=BUCKETS, registry=registry)
        self.connects = Counter("ocppgw_charger_connects", "Charger connections accepted", registry=registry)
        self.disconnects = Counter("ocppgw_charger_disconnects", "Charger sessions ended", registry=registry)
        self.reconnects = Counter("ocppgw_charger_reconnects",
                                  "Connections from a charger id already seen since the gateway started",
                                  registry=registry)
        self.upstream_changes = Counter("ocppgw_upstream_state_changes", "Upstream link state changes, by new state",
                                        ["state"], registry=registry)
        self.upstream_reconnects = Counter("ocppgw_upstream_reconnects",
                                           "Upstream links back online after being lost within a session",
                                           registry=registry)
        for state in UPSTREAM_STATES:
            self.upstream_changes.labels(state)
        self._seen: set[str] = set()
        self._was_online: set[str] = set()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- SessionObserver ------------------------------------------------------------------------

    def exchange(self, session: Any, ex: Exchange) -> None:
        if ex.response is not None:
            outcome = "result"
        elif ex.error == "timeout":
            outcome = "timeout"
        elif ex.error is not None:
            outcome = "error"
        else:
            outcome = "none"
        self.calls.labels(ex.origin, ex.action, ex.answered_by or "none", outcome).inc()
        if ex.error is not None:
            self.errors.labels(ex.origin, ex.action, ex.error).inc()
        if outcome != "none":
            elapsed = (datetime.now(timezone.utc) - ex.received_at).total_seconds()
            self.round_trip.labels(ex.origin, ex.answered_by or "none").observe(max(0.0, elapsed))

    def session_event(self, session: Any, event: str) -> None:
        cid = session.charger_id
        if event == "connected":
            self.connects.inc()
            if cid in self._seen:
                self.reconnects.inc()
            elif len(self._seen) < 100_000:
                self._seen.add(cid)
        elif event == "disconnected":
            self.disconnects.inc()
            self._was_online.discard(cid)
        elif event == "upstream":
            state = session.upstream_state.value
            self.upstream_changes.labels(state).inc()
            if state == "online":
                if cid in self._was_online:
                    self.upstream_reconnects.inc()
                self._was_online.add(cid)
