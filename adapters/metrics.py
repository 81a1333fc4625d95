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
import time
from bisect import bisect_left
from datetime import datetime, timezone
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway.ports import Exchange, GatewayView, SessionView, SinkFigures, StoreWriteHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPSTREAM_STATES = ("standalone", "connecting", "online", "offline")
LOST_REASONS = ("silent", "closed", "lost")
# Round trips: a charger on a site LAN answers in milliseconds; a CSMS over a mobile uplink in
# tens to hundreds; timeouts are 30 s by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS = (*BUCKETS, float("inf"))
_LE = tuple(floatToGoString(b) for b in _BOUNDS)
CALLS_HELP = ("Finished CALLs by who sent them (charger, csms, gateway), action, who answered and outcome (result, "
              "error, timeout, none for a 2.1 SEND)")
ERRORS_HELP = "CALLERRORs (and timeouts) by origin, action and error code"
ROUND_TRIP_HELP = ("Time from a CALL's arrival at the gateway to its answer, by origin and the peer that answered "
                   "(csms: upstream round trip; charger: towards chargers)")


class _CallFigures:
    """The per-call figures (`ocppgw_calls`, `ocppgw_call_errors`, `ocppgw_call_round_trip_seconds`),
    kept as plain numbers by `Metrics.exchange` and written out when scraped, with the names, labels
    and samples prometheus_client's Counter and Histogram give (`_total` and `_created`; `_bucket`,
    `_count`, `_sum` and `_created`). Every finished call updates them, on the relay's path:
    Counter.inc and Histogram.observe take a lock and walk the buckets in Python each time; here a
    call costs a dict look-up, a bisect and a few additions."""

    def __init__(self) -> None:
        # label values -> [count, created]; (origin, peer) -> [per-bucket counts..., sum, created]
        self.calls: dict[tuple[str, str, str, str], list[float]] = {}
        self.errors: dict[tuple[str, str, str], list[float]] = {}
        self.round_trips: dict[tuple[str, str], list[float]] = {}

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        calls = CounterMetricFamily("ocppgw_calls", CALLS_HELP, labels=["origin", "action", "answered_by", "outcome"])
        for key, (n, created) in list(self.calls.items()):
            calls.add_metric(key, n, created=created)
        yield calls
        errors = CounterMetricFamily("ocppgw_call_errors", ERRORS_HELP, labels=["origin", "action", "code"])
        for ekey, (n, created) in list(self.errors.items()):
            errors.add_metric(ekey, n, created=created)
        yield errors
        name = "ocppgw_call_round_trip_seconds"
        histogram = Metric(name, ROUND_TRIP_HELP, "histogram")
        created_at = []
        for (origin, peer), figures in list(self.round_trips.items()):
            labels = {"origin": origin, "peer": peer}
            total = 0.0
            for le, n in zip(_LE, figures):
                total += n
                histogram.add_sample(name + "_bucket", {**labels, "le": le}, total)
            histogram.add_sample(name + "_count", labels, total)
            histogram.add_sample(name + "_sum", labels, figures[-2])
            created_at.append((labels, figures[-1]))
        for labels, created in created_at:
            histogram.add_sample(name + "_created", labels, created)
        yield histogram


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
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self.retired: dict[str, int] = {}  # offline counters of sessions that ended
        self.outbox_summary: list[dict[str, Any]] | None = None  # set by the API before each scrape
        registry.register(_LiveCollector(hub, self))
        Gauge("ocppgw_build_info", "The gateway's version", ["version"], registry=registry).labels(__version__).set(1)
        Gauge("ocppgw_start_time_seconds", "When the gateway started (Unix time)",
              registry=registry).set(datetime.now(timezone.utc).timestamp())
        self.figures = figures = _CallFigures()  # ocppgw_calls, ocppgw_call_errors, ocppgw_call_round_trip_seconds
        registry.register(figures)
        self._calls, self._errors, self._round_trips = figures.calls, figures.errors, figures.round_trips
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
        error = ex.error
        if ex.response is not None:
            outcome = "result"
        elif error is None:
            outcome = "none"
        else:
            outcome = "timeout" if error == "timeout" else "error"
        origin, action, answered_by = ex.origin, ex.action, ex.answered_by or "none"
        now = time.time()
        key = (origin, action, answered_by, outcome)
        counted = self._calls.get(key)
        if counted is None:
            self._calls[key] = [1.0, now]
        else:
            counted[0] += 1
        if error is not None:
            ekey = (origin, action, error)
            counted = self._errors.get(ekey)
            if counted is None:
                self._errors[ekey] = [1.0, now]
            else:
                counted[0] += 1
        if outcome != "none":
            elapsed = max(0.0, now - ex.received_at.timestamp())
            rkey = (origin, answered_by)
            figures = self._round_trips.get(rkey)
            if figures is None:
                figures = self._round_trips[rkey] = [0.0] * len(_BOUNDS) + [0.0, now]
            figures[bisect_left(_BOUNDS, elapsed)] += 1
            figures[-2] += elapsed

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
