"""Records into MQTT messages: the topic layout (README "MQTT") as pure code, no broker, no paho.

`Encoder.encode(record)` returns the messages a record becomes, `(topic, payload, retain)`; it keeps
what it published per charger (to clear it when the charger is forgotten, and to say that a
reading ended) and announces Home Assistant entities (adapters/mqtt/discovery.py) the first time
their topic appears.
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
    MeterSample, Record, TransactionEvent,
)
from gateway.variables.model import VariablesChanged

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@functools.lru_cache(maxsize=16384)
def topic_level(text: str) -> str:
    """`text` as one topic level: characters outside A-Z a-z 0-9 . _ - percent-encoded (UTF-8), so no
    value can add a level (`/`), match as a wildcard (`+`, `#`) or start a `$` topic."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


@functools.lru_cache(maxsize=1024)  # the records of one exchange share their timestamp
def iso(ts: datetime) -> str:
    if ts.tzinfo is not timezone.utc:
        ts = ts.astimezone(timezone.utc)
    return ts.isoformat(timespec="milliseconds")[:-6] + "Z"  # records carry aware UTC times: "+00:00" -> "Z"


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
    """The retained topic of one reading identity: measurand, then the phase if any."""
    return (f"{root}/evse/{evse}/meter/{topic_level(sample.measurand)}"
            + (f"/{topic_level(sample.phase)}" if sample.phase else ""))


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
    discovery: dict[str, dict[str, Any]] = field(default_factory=dict)  # HA config topic -> config (without device)
    device: dict[str, Any] = field(default_factory=dict)
    state: ChargerState | None = None  # the last state published


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

    @property
    def gateway_state(self) -> str:
        return f"{self.base}/gateway/state"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/chargers/+/cmd/+"

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
        if kind is MeterReading:  # the hot path: every MeterValues of every charger
            assert isinstance(record, MeterReading)
            return self._meter(record, self.chargers.get(record.charger_id) or self.charger(record.charger_id))
        if kind is EnvironmentReading:  # with most 1.6 MeterValues (a temperature sample)
            assert isinstance(record, EnvironmentReading)
            return self._environment(record, self.chargers.get(record.charger_id) or self.charger(record.charger_id))
        if isinstance(record, ChargerForgotten):
            return self._forget(record.charger_id)
        ch = self.charger(record.charger_id)
        root = ch.root
        out: list[Message] = []
        if isinstance(record, ConnectorStatus):
            topic = f"{root}/evse/{record.evse}/status"
            out.append(self._retained(ch, topic, _json({"status": record.status, "error_code": record.error_code,
                                                        "connector": record.connector, "ts": iso(record.ts)})))
            if self.cfg.ha_discovery:
                out += self._discover(ch, ha.evse_status(record.evse, topic))
        elif isinstance(record, TransactionEvent):
            out.append((f"{root}/transactions", _json({
                "event": record.event, "transaction_id": record.transaction_id, "evse": record.evse,
                "meter_start": record.meter_start, "meter_stop": record.meter_stop, "energy_wh": record.energy_wh,
                "reason": record.reason, "offline": record.offline, "ts": iso(record.ts)}), False))
        elif isinstance(record, ChargerState):
            ch.state = record
            out.append(self._retained(ch, f"{root}/state", _json({
                "connected": record.connected, "upstream": record.upstream, "protocol": record.protocol,
                "ts": iso(record.ts)})))
            if self.cfg.ha_discovery:
                out += self._discover(ch, ha.connected(f"{root}/state"))
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
                out += [(t, self._ha_payload(ch, c), True) for t, c in ch.discovery.items()]
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

    def _discover(self, ch: ChargerTopics, entity: ha.Entity) -> list[Message]:
        node = ha.node_id(self.site_id, topic_level(ch.charger_id))
        topic, config = ha.config(self.cfg.ha_prefix, node, entity)
        if topic in ch.discovery:
            return []
        ch.discovery[topic] = config
        return [(topic, self._ha_payload(ch, config), True)]

    def _ha_payload(self, ch: ChargerTopics, config: dict[str, Any]) -> bytes:
        node = ha.node_id(self.site_id, topic_level(ch.charger_id))
        return _json(ha.complete(config, node, ch.charger_id, ch.device, self.gateway_state))

    def _forget(self, charger_id: str) -> list[Message]:
        ch = self.chargers.pop(charger_id, None)
        if ch is None:
            return []
        for topic in list(self._last):
            if topic in ch.retained:
                del self._last[topic]
        return [(t, b"", True) for t in sorted(ch.retained) + sorted(ch.discovery)]
