"""Records into MQTT messages: the topic layout (docs/mqtt-and-influxdb.md "MQTT") as pure code,
no broker, no paho.

`Encoder.encode(record)` returns the messages a record becomes, `(topic, payload, retain)`; it keeps
what it published per charger (to clear it when the charger is forgotten, and to say that a
reading ended) and announces Home Assistant entities (adapters/mqtt/discovery.py) the first time
their topic appears.

Readings that end: power and current (measurands `Power.*` but `Power.Factor`, and `Current.*`)
describe a flow. When a transaction ends, the retained topics of its EVSE's flows are set to 0 (at
the time the transaction ended); when the charger disconnects, those of all its EVSEs are cleared
(an empty retained payload: the gateway no longer knows) and `.../availability` says offline.
Energy registers, voltage, temperatures, SoC and the statuses keep their last value.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from adapters.mqtt import discovery as ha
from adapters.mqtt import variables as mv
from adapters.mqtt.framing import Message
from gateway.telemetry.records import (
    ChargerForgotten, ChargerInfo, ChargerState, ConnectorStatus, ControlChange, EnvironmentReading, MeterReading,
    MeterSample, Record, SiteLimit, TransactionEvent,
)
from gateway.variables.model import VariablesChanged

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@functools.lru_cache(maxsize=16384)
def topic_level(text: str) -> str:
    """`text` as one topic level: characters outside A-Z a-z 0-9 . _ - percent-encoded (UTF-8), so no
    value can add a level (`/`), match as a wildcard (`+`, `#`) or start a `$` topic."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


_SECONDS: dict[int, str] = {}  # whole seconds since 1970 -> "YYYY-MM-DDTHH:MM:SS" (UTC)
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # what follows the second
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_last: tuple[datetime | None, str] = (None, "")  # the last instant written and its text


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and "Z". `isoformat(timespec=...)` costs about a
    microsecond, once per MeterValues; the text up to the second is kept per second instead (the
    readings of a site's chargers fall in few of them), and the last instant's whole text is kept
    (a MeterValues' meter and environment records share theirs)."""
    global _last
    last = _last
    if ts is last[0]:
        return last[1]
    given = ts
    if ts.tzinfo is not timezone.utc:
        ts = ts.astimezone(timezone.utc)
    delta = ts - _EPOCH
    second = delta.days * 86_400 + delta.seconds
    if not 0 <= second < 4_000_000_000:  # 1970-2096: the table's range
        text = ts.isoformat(timespec="milliseconds")[:-6] + "Z"  # records carry aware UTC times: "+00:00" -> "Z"
    else:
        head = _SECONDS.get(second)
        if head is None:
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            head = _SECONDS[second] = ts.isoformat()[:19]
        text = head + _MILLIS[delta.microseconds // 1000]
    _last = (given, text)  # one assignment: a reader in another thread sees a whole pair
    return text


def _json(data: Any) -> bytes:
    return orjson.dumps(data)


def _text(value: Any) -> str:
    """A value as JSON text (strings escaped as orjson escapes them)."""
    return orjson.dumps(value).decode()


def control_json(change: ControlChange) -> dict[str, Any]:
    """A ControlChange as the JSON of `.../chargers/{id}/control` and `.../evse/{n}/control`."""
    return {"evse": change.evse, "transaction_id": change.transaction_id, "state": change.state,
            "limit_a": change.limit_a, "reason": change.reason or None, "mechanism": change.mechanism,
            "status": change.status, "temperature": change.temperature, "ts": iso(change.ts)}


def meter_topic(root: str, evse: int, sample: MeterSample) -> str:
    """The retained topic of one reading identity (EVSE, measurand, phase, location): the
    measurand, then the phase if any, then the location unless it is the default (Outlet). Phase
    names (L1, L2-N, N, ...) and locations (Body, Cable, EV, Inlet, Upstream) never coincide."""
    location = sample.location
    return (f"{root}/evse/{evse}/meter/{topic_level(sample.measurand)}"
            + (f"/{topic_level(sample.phase)}" if sample.phase else "")
            + (f"/{topic_level(location)}" if location and location != "Outlet" else ""))


def is_flow(measurand: str) -> bool:
    """Power and current: what stops when charging stops (see the module docstring)."""
    return measurand.startswith(("Power.", "Current.")) and measurand != "Power.Factor"


@dataclass
class ChargerTopics:
    """What was published for one charger (to clear it when the charger is forgotten)."""

    charger_id: str
    root: str  # {base}/chargers/{topic-safe id}
    retained: set[str] = field(default_factory=set)
    # (evse, measurand, unit, phase, location, context) -> (retained topic, JSON before the value, after it)
    meter_topics: dict[tuple[Any, ...], tuple[str, str, str]] = field(default_factory=dict)
    meter_root: dict[int, str] = field(default_factory=dict)  # evse -> {root}/evse/{evse}/meter
    # (name, unit, source) -> (retained topic, JSON before the value, after it up to the time, after the time)
    environment: dict[tuple[str, str, str], tuple[str, str, str, str]] = field(default_factory=dict)
    # HA config topic -> (config without device and availability, whether it follows the charger's availability)
    discovery: dict[str, tuple[dict[str, Any], bool]] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)  # from BootNotification
    state: ChargerState | None = None  # the last state published
    evses: dict[int, int | None] = field(default_factory=dict)  # EVSE -> a connector, from statuses
    # EVSE -> retained flow topics (power, current) -> (JSON before the value, after it)
    flows: dict[int, dict[str, tuple[str, str]]] = field(default_factory=dict)

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def protocol(self) -> str:
        return self.state.protocol if self.state is not None else "ocpp1.6"


class Encoder:
    """Records into messages for one site. `settings` is `[mqtt]` (topic_prefix, ha_discovery,
    ha_prefix, retained_min_interval, retained_deadband, retained_max_interval)."""

    def __init__(self, settings: Any, site_id: str) -> None:
        self.cfg = settings
        self.site_id = site_id
        self.base = f"{settings.topic_prefix}/{site_id}"
        self.chargers: dict[str, ChargerTopics] = {}
        self._last: dict[str, tuple[float, float]] = {}  # retained meter topic -> (value, monotonic time)
        self._thin = settings.retained_min_interval > 0 or settings.retained_deadband > 0  # see _due
        self.gateway_discovery: dict[str, dict[str, Any]] = {}  # HA config topic -> config (the gateway's device)

    @property
    def gateway_state(self) -> str:
        return f"{self.base}/gateway/state"

    @property
    def command_filter(self) -> str:
        """The OCPP command topics (adapters/mqtt/commands.py has the set topics too)."""
        return f"{self.base}/chargers/+/cmd/+"

    @property
    def site_limit(self) -> str:
        return f"{self.base}/site/limit"

    def charger(self, charger_id: str) -> ChargerTopics:
        ch = self.chargers.get(charger_id)
        if ch is None:
            ch = self.chargers[charger_id] = ChargerTopics(charger_id, f"{self.base}/chargers/{topic_level(charger_id)}")
        return ch

    def connected_states(self) -> list[ChargerState]:
        """The last published state of each charger that is connected."""
        return [ch.state for ch in self.chargers.values() if ch.state is not None and ch.state.connected]

    @staticmethod
    def _retained(ch: ChargerTopics, topic: str, payload: bytes) -> Message:
        ch.retained.add(topic)
        return (topic, payload, True)

    def encode(self, record: Record) -> list[Message]:
        kind = type(record)
        # (the type tests narrow `record`, which mypy does not see; an assert would cost a call per record)
        if kind is MeterReading:  # the hot path: every MeterValues of every charger
            meter: MeterReading = record  # type: ignore[assignment]
            return self._meter(meter, self.chargers.get(meter.charger_id) or self.charger(meter.charger_id))
        if kind is EnvironmentReading:  # with most 1.6 MeterValues (a temperature sample)
            env: EnvironmentReading = record  # type: ignore[assignment]
            return self._environment(env, self.chargers.get(env.charger_id) or self.charger(env.charger_id))
        if isinstance(record, ChargerForgotten):
            return self._forget(record.charger_id)
        if isinstance(record, SiteLimit):
            return self._site(record)
        ch = self.charger(record.charger_id)
        root = ch.root
        out: list[Message] = []
        if isinstance(record, ConnectorStatus):
            topic = f"{root}/evse/{record.evse}/status"
            out.append(self._retained(ch, topic, _json({"status": record.status, "error_code": record.error_code,
                                                        "connector": record.connector, "ts": iso(record.ts)})))
            out += self._evse_seen(ch, record.evse, record.connector)
            if self.cfg.ha_discovery:
                out += self._discover(ch, ha.evse_status(record.evse, topic))
        elif isinstance(record, TransactionEvent):
            out.append((f"{root}/transactions", _json({
                "event": record.event, "transaction_id": record.transaction_id, "evse": record.evse,
                "meter_start": record.meter_start, "meter_stop": record.meter_stop, "energy_wh": record.energy_wh,
                "reason": record.reason, "offline": record.offline, "ts": iso(record.ts)}), False))
            if record.evse is not None:
                out += self._evse_seen(ch, record.evse, record.connector)
            if record.event == "ended":
                out += self._flows_end(ch, record)
        elif isinstance(record, ChargerState):
            ch.state = record
            out.append(self._retained(ch, f"{root}/state", _json({
                "connected": record.connected, "upstream": record.upstream, "protocol": record.protocol,
                "ts": iso(record.ts)})))
            out.append(self._retained(ch, ch.availability, ha.ONLINE.encode() if record.connected
                                      else ha.OFFLINE.encode()))
            if not record.connected:
                out += self._flows_cleared(ch)
            if self.cfg.ha_discovery:
                out += self._discover(ch, ha.connected(f"{root}/state"))
                out += self._discover(ch, ha.reset_button(root, record.protocol))
                out += self._discover(ch, ha.availability_select(root, record.protocol))
                out += self._evse_seen(ch, 0, None)  # the whole charger's pause switch and limit (2.x has no EVSE 0 status)

        elif isinstance(record, ControlChange):  # local control: every change, and the latest per EVSE
            body = _json(control_json(record))
            out.append((f"{root}/control", body, False))
            out.append(self._retained(ch, f"{root}/evse/{record.evse}/control", body))
        elif isinstance(record, VariablesChanged):  # the variables mirror (adapters/mqtt/variables.py)
            command_topic = f"{root}/cmd/{mv.COMMAND}"
            for value in record.values:
                topic = f"{root}/variables/{topic_level(value['name'])}"
                out.append(self._retained(ch, topic, _json(mv.payload(value))))
                shown_as = record.ha.get(value["name"])
                if shown_as is not None and self.cfg.ha_discovery:
                    out += self._discover(ch, mv.entity(shown_as, value, topic, command_topic))
        elif isinstance(record, ChargerInfo):
            ch.device = ha.device_info(record)
            if self.cfg.ha_discovery:  # the device details changed: publish every config again
                out += [(t, self._ha_payload(ch, c, follows), True) for t, (c, follows) in ch.discovery.items()]
        return out

    def _site(self, record: SiteLimit) -> list[Message]:
        out: list[Message] = [(self.site_limit, _json({"limit_a": record.limit_a, "source": record.source,
                                                       "ts": iso(record.ts)}), True)]
        if self.cfg.ha_discovery:
            out += self._discover_gateway(ha.site_limit_number(self.base))
            out += self._discover_gateway(ha.gateway_online(self.gateway_state))
        return out

    def _meter(self, record: MeterReading, ch: ChargerTopics) -> list[Message]:
        """`.../evse/{n}/meter` (every sample) and a retained `.../meter/{measurand}[/{phase}]` per
        sample. The JSON is put together from text worked out once per sample shape (the part
        before the value and the part after it, escaped by orjson), so a reading costs a few string
        joins instead of a dict and an orjson call per message. Same documents as
        `orjson.dumps` of the dicts in PRODUCT.md, keys in the same order; a float value is written
        by `repr` (shortest round-trip form, as orjson; an exponent may read `1e+16` for `1e16`)."""
        evse = record.evse
        tx = record.transaction_id
        head = f'"ts":"{iso(record.ts)}","transaction_id":{"null" if tx is None else _text(tx)}'
        tail = f",{head}}}"
        topics = ch.meter_topics
        thin = self._thin
        now = time.monotonic() if thin else 0.0
        bodies: list[str] = []
        rest: list[Message] = []
        for s in record.samples:
            measurand, value, unit, phase, location, context = s
            shape = topics.get((evse, measurand, unit, phase, location, context))
            if shape is None:
                shape = self._meter_shape(ch, evse, s, rest)
            body = f"{shape[1]}{value!r}{shape[2]}"
            bodies.append(body)
            if thin and not self._due(shape[0], value, now):
                continue
            rest.append((shape[0], f"{body}{tail}".encode(), True))
        topic = ch.meter_root.get(evse)
        if topic is None:
            topic = ch.meter_root[evse] = f"{ch.root}/evse/{evse}/meter"
        joined = "},".join(bodies)
        return [(topic, f'{{{head},"samples":[{joined}}}]}}'.encode(), False), *rest]

    def _meter_shape(self, ch: ChargerTopics, evse: int, s: MeterSample, out: list[Message]) -> tuple[str, str, str]:
        """The retained topic of one reading identity of an EVSE and the JSON text around a
        sample's value, worked out once per charger and shape; its Home Assistant sensor is
        announced (into `out`) the first time."""
        topic = meter_topic(ch.root, evse, s)
        shape = (topic, f'{{"measurand":{_text(s.measurand)},"value":',
                 f',"unit":{_text(s.unit)},"phase":{_text(s.phase)},"location":{_text(s.location)},'
                 f'"context":{_text(s.context)}')
        ch.meter_topics[(evse, s.measurand, s.unit, s.phase, s.location, s.context)] = shape
        ch.retained.add(topic)
        if is_flow(s.measurand):
            ch.flows.setdefault(evse, {})[topic] = (shape[1], shape[2])
        out += self._evse_seen(ch, evse, None)
        if self.cfg.ha_discovery:
            entity = ha.meter_sensor(evse, s, topic)
            if entity is not None:
                out += self._discover(ch, entity)
        return shape

    def _environment(self, record: EnvironmentReading, ch: ChargerTopics) -> list[Message]:
        """`.../environment/{name}` (retained), its JSON put together like `_meter`'s; the Home
        Assistant sensor of a temperature or humidity is announced the first time."""
        shape = ch.environment.get((record.name, record.unit, record.source))
        out: list[Message] = []
        if shape is None:
            topic = f"{ch.root}/environment/{topic_level(record.name)}"
            ch.retained.add(topic)
            shape = (topic, '{"value":', f',"unit":{_text(record.unit)},"ts":"',
                     f'","source":{_text(record.source)}}}')
            ch.environment[(record.name, record.unit, record.source)] = shape
            if self.cfg.ha_discovery:
                entity = ha.environment_sensor(record, topic)
                if entity is not None:
                    out += self._discover(ch, entity)
        value = record.value
        if self._thin and not self._due(shape[0], value, time.monotonic()):
            return out
        out.append((shape[0], f'{shape[1]}{value!r}{shape[2]}{iso(record.ts)}{shape[3]}'.encode(), True))
        return out

    def _due(self, topic: str, value: float, now: float) -> bool:
        """The deadband / minimum interval of the retained per-measurand topics."""
        min_interval, deadband = self.cfg.retained_min_interval, self.cfg.retained_deadband
        if min_interval <= 0 and deadband <= 0:
            return True
        last = self._last.get(topic)
        if last is not None:
            elapsed = now - last[1]
            if elapsed < min_interval:
                return False
            if abs(value - last[0]) < deadband and elapsed < self.cfg.retained_max_interval:
                return False
        self._last[topic] = (value, now)
        return True

    # -- Home Assistant discovery ------------------------------------------------------------------

    def _evse_seen(self, ch: ChargerTopics, evse: int, connector: int | None) -> list[Message]:
        """The first status, transaction or reading of an EVSE: its Home Assistant controls."""
        if evse in ch.evses and (connector is None or ch.evses[evse] is not None):
            return []
        new = evse not in ch.evses
        ch.evses[evse] = connector
        return self._evse_controls(ch, evse, connector) if new and self.cfg.ha_discovery else []

    def _evse_controls(self, ch: ChargerTopics, evse: int, connector: int | None) -> list[Message]:
        """A pause switch and a current-limit number per EVSE (0: the whole charger), an unlock
        button per EVSE with connectors."""
        out = self._discover(ch, ha.pause_switch(evse, ch.root))
        out += self._discover(ch, ha.limit_number(evse, ch.root, self.cfg.ha_max_current_a))
        if evse > 0:
            out += self._discover(ch, ha.unlock_button(evse, connector, ch.root, ch.protocol))
        return out

    def _discover(self, ch: ChargerTopics, entity: ha.Entity) -> list[Message]:
        node = ha.node_id(self.site_id, topic_level(ch.charger_id))
        topic, config = ha.config(self.cfg.ha_prefix, node, entity)
        if topic in ch.discovery:
            return []
        ch.discovery[topic] = (config, entity.follows_charger)
        return [(topic, self._ha_payload(ch, config, entity.follows_charger), True)]

    def _ha_payload(self, ch: ChargerTopics, config: dict[str, Any], follows_charger: bool) -> bytes:
        node = ha.node_id(self.site_id, topic_level(ch.charger_id))
        device = ha.charger_device(node, ch.charger_id, ch.device, self.site_id)
        topics = (self.gateway_state, ch.availability) if follows_charger else (self.gateway_state,)
        return _json(ha.complete(config, device, topics, self.cfg.qos))

    def _discover_gateway(self, entity: ha.Entity) -> list[Message]:
        topic, config = ha.config(self.cfg.ha_prefix, ha.gateway_node(self.site_id), entity)
        if topic in self.gateway_discovery:
            return []
        self.gateway_discovery[topic] = config
        # the gateway's own connectivity sensor must stay available to say "offline"
        topics = () if entity.key == "online" else (self.gateway_state,)
        return [(topic, _json(ha.complete(config, ha.gateway_device(self.site_id), topics, self.cfg.qos)), True)]

    # -- readings that end -------------------------------------------------------------------------

    def _flows_end(self, ch: ChargerTopics, record: TransactionEvent) -> list[Message]:
        """The transaction ended: its EVSE's power and current are 0 from then on (every EVSE's
        when the event names none)."""
        tx = record.transaction_id
        tail = f',"ts":"{iso(record.ts)}","transaction_id":{"null" if tx is None else _text(tx)}}}'
        evses = [record.evse] if record.evse is not None else list(ch.flows)
        out: list[Message] = []
        now = time.monotonic()
        for evse in evses:
            for topic, (head, after) in (ch.flows.get(evse) or {}).items():
                out.append((topic, f"{head}0.0{after}{tail}".encode(), True))
                if self._thin:
                    self._last[topic] = (0.0, now)
        return out

    def _flows_cleared(self, ch: ChargerTopics) -> list[Message]:
        """The charger disconnected: its retained power and current topics are cleared."""
        out: list[Message] = []
        for topics in ch.flows.values():
            for topic in topics:
                out.append((topic, b"", True))
                self._last.pop(topic, None)
        return out

    def _forget(self, charger_id: str) -> list[Message]:
        ch = self.chargers.pop(charger_id, None)
        if ch is None:
            return []
        for topic in list(self._last):
            if topic in ch.retained:
                del self._last[topic]
        return [(t, b"", True) for t in sorted(ch.retained) + sorted(ch.discovery)]

