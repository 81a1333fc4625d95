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

import asyncio
from datetime import datetime, timezone
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.ports import Exchange, GatewayView, SessionView, SinkFigures, StoreWriteHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPSTREAM_STATES = ("standalone", "connecting", "online", "offline")
LOST_REASONS = ("silent", "closed", "lost")
# Round trips: a charger on a site LAN answers in milliseconds; a CSMS over a mobile uplink in
# tens to hundreds; timeouts are 30 s by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LiveCollector:
    """Gauges read from the hub at scrape time; the outbox summary the API fetched from the store
    for this scrape; the telemetry sinks' queues and spools; the sessions' offline counters (plus
    those of sessions already ended, kept by `Metrics`, so the totals never go down)."""

    def __init__(self, hub: GatewayView, owner: "Metrics") -> None:
        self.hub = hub
        self.owner = owner

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
        yield from self._offline(sessions)
        blocked = GaugeMetricFamily("ocppgw_outbox_blocked", "1 while a charger's backlog stored in another OCPP "
                                    "version waits because the CSMS refuses that version (or cannot be reached in it)",
                                    labels=["charger", "protocol"])
        for cid, why in sorted(self.hub.blocked.items()):
            blocked.add_metric([cid, str(why.get("protocol"))], 1)
        yield blocked
        yield from self._store()
        yield from self._sinks()
        yield from self._tasks()

    @staticmethod
    def _tasks() -> Iterable[Any]:
        """Tasks alive on the gateway's event loop: flat over days when nothing leaks (bench/soak.py)."""
        try:
            n = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop (a test's collector call): no figure
            return
        tasks = GaugeMetricFamily("ocppgw_event_loop_tasks", "asyncio tasks alive on the gateway's event loop")
        tasks.add_metric([], n)
        yield tasks

    def _store(self) -> Iterable[Any]:
        """Whether the store can write (a full disk: 0) and the writes it refused since start."""
        store = self.hub.store
        if not isinstance(store, StoreWriteHealth):
            return
        writable = GaugeMetricFamily("ocppgw_store_writable", "1 while the store can write, 0 while its writes fail "
                                     "(disk full, I/O error): messages to keep for the CSMS are refused meanwhile")
        writable.add_metric([], 1 if store.write_failure is None else 0)
        yield writable
        failures = CounterMetricFamily("ocppgw_store_write_failures", "Store writes that could not be kept (disk full, "
                                       "I/O error) since start")
        failures.add_metric([], int(store.write_failures))
        yield failures

    def _offline(self, sessions: list[SessionView]) -> Iterable[Any]:
        totals = dict(self.owner.retired)
        for s in sessions:
            for name, n in s.counters.items():
                totals[name] = totals.get(name, 0) + n
        events = CounterMetricFamily("ocppgw_outbox_messages", "Offline store-and-forward events: buffered "
                                     "(stored for the CSMS), dropped, replayed, dead_letters, possible_duplicates, "
                                     "invalid_replayed_starts", labels=["event"])
        for name in sorted(totals):
            events.add_metric([name], totals[name])
        yield events
        summary = self.owner.outbox_summary
        if summary is None:
            return
        now = datetime.now(timezone.utc)
        depth = GaugeMetricFamily("ocppgw_outbox_depth", "Messages waiting for the CSMS, by charger", labels=["charger"])
        age = GaugeMetricFamily("ocppgw_outbox_oldest_age_seconds", "Age of the oldest message waiting for the CSMS",
                                labels=["charger"])
        dead = GaugeMetricFamily("ocppgw_outbox_dead_letters", "Messages the CSMS refused for good, by charger",
                                 labels=["charger"])
        for row in summary:
            cid = str(row.get("charger_id"))
            depth.add_metric([cid], row.get("depth") or 0)
            dead.add_metric([cid], row.get("dead_letters") or 0)
            oldest = _parse_time(row.get("oldest"))
            if oldest is not None:
                age.add_metric([cid], max(0.0, (now - oldest).total_seconds()))
        yield depth
        yield age
        yield dead

    def _sinks(self) -> Iterable[Any]:
        sinks = self.owner.sinks
        if not sinks:
            return
        backlog = GaugeMetricFamily("ocppgw_sink_backlog", "Telemetry items waiting for a sink (memory and disk)",
                                    labels=["sink"])
        spool = GaugeMetricFamily("ocppgw_sink_spool_depth", "Telemetry items spooled to disk while a sink is away",
                                  labels=["sink"])
        dropped = CounterMetricFamily("ocppgw_sink_dropped", "Telemetry items dropped (queue or spool full)",
                                      labels=["sink"])
        delivered = CounterMetricFamily("ocppgw_sink_delivered", "Telemetry items delivered", labels=["sink"])
        for sink in sinks:
            name = sink.name
            try:
                backlog.add_metric([name], sink.backlog)
                spool.add_metric([name], sink.spool.count)
                dropped.add_metric([name], sink.dropped + sink.spool.dropped)
                delivered.add_metric([name], sink.delivered)
            except Exception:  # noqa: BLE001 - a sink's internals changing must not break /metrics
                continue
        yield from (backlog, spool, dropped, delivered)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Metrics:
    """The gateway's metrics; a session observer (append it to `hub.observers`). `sinks`: the
    telemetry sinks whose figures it shows, set by gateway/app.py once they run."""

    def __init__(self, hub: GatewayView) -> None:
        self.sinks: Sequence[SinkFigures] = ()
        self._call_children: dict[tuple[str, str, str, str], Any] = {}
        self._rtt_children: dict[tuple[str, str], Any] = {}
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self.retired: dict[str, int] = {}  # offline counters of sessions that ended
        self.outbox_summary: list[dict[str, Any]] | None = None  # set by the API before each scrape
        registry.register(_LiveCollector(hub, self))
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
        self.links_lost = Counter("ocppgw_upstream_links_lost", "Upstream links declared dead, by why: silent (no pong "
                                  "within [upstream].ping_timeout), closed (by the CSMS), lost (the connection broke)",
                                  ["reason"], registry=registry)
        for reason in LOST_REASONS:
            self.links_lost.labels(reason)
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
        # label children are cached: prometheus_client's labels() costs ~1.5 us per call uncached,
        # which shows on the relay path (bench/relay.py, py-spy)
        key = (ex.origin, ex.action, ex.answered_by or "none", outcome)
        counter = self._call_children.get(key)
        if counter is None:
            counter = self._call_children[key] = self.calls.labels(*key)
        counter.inc()
        if ex.error is not None:
            self.errors.labels(ex.origin, ex.action, ex.error).inc()
        if outcome != "none":
            elapsed = (datetime.now(timezone.utc) - ex.received_at).total_seconds()
            rkey = (ex.origin, ex.answered_by or "none")
            histogram = self._rtt_children.get(rkey)
            if histogram is None:
                histogram = self._rtt_children[rkey] = self.round_trip.labels(*rkey)
            histogram.observe(max(0.0, elapsed))

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
            for name, n in (getattr(session, "counters", None) or {}).items():
                self.retired[name] = self.retired.get(name, 0) + n
        elif event == "upstream_lost":
            lost = getattr(session, "last_lost", None)
            why = str(lost[1]) if lost else ""
            self.links_lost.labels("silent" if "silent" in why else "closed" if why.startswith("closed") else "lost").inc()
        elif event == "upstream":
            state = session.upstream_state.value
            self.upstream_changes.labels(state).inc()
            if state == "online":
                if cid in self._was_online:
                    self.upstream_reconnects.inc()
                self._was_online.add(cid)
