"""MQTT sink and command channel (paho-mqtt), per PRODUCT.md "MQTT".

Driving paho: from the event loop, as Home Assistant does. paho's socket is registered with the
loop (`add_reader`, and `add_writer` while paho has bytes to send); `loop_read`, `loop_write` and
(every second) `loop_misc` run on the loop, so every paho callback runs there too and no gateway
state is shared with another thread. Only the blocking part of connecting (DNS, TCP, the TLS
handshake) runs in a worker thread. Writes are gathered into one `send` per loop callback and
reads come from one `recv` (`_BatchedSocket`). paho's own network thread (`loop_start`) was the
first version: it costs a thread wake-up and GIL hand-off per message and one system call per
packet; with the machine shared and noisy, the event-loop version measured about 15-20 % less
CPU per published message at QoS 1 (`bench/telemetry.py`, and a sink-only measurement).

Delivery: while connected, messages go straight to paho (QoS from config); paho keeps QoS 1/2
messages that were not acknowledged and sends them again after a reconnect. While disconnected,
messages are spooled to disk in order and drained, oldest first, after the next CONNACK.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import random
import re
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.spool import Spool
from adapters.telemetry_sink import SpooledSink
from gateway.config import ConfigError
from gateway.errors import Busy, CallFailed, CallTimeout, NotConnected
from adapters import control_api
from gateway.control.engine import ControlChange
from gateway.telemetry.records import (
    ChargerForgotten, ChargerInfo, ChargerState, ConnectorStatus, EnvironmentReading, MeterReading, Record,
    TransactionEvent,
)

log = logging.getLogger("gateway.telemetry.mqtt")

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ACTION = re.compile(r"[A-Za-z0-9]{1,64}")
_HA_ID = re.compile(r"[^A-Za-z0-9_-]")
MAX_OUTSTANDING = 40  # QoS 2 only: messages handed to paho and not yet acknowledged, before draining waits
WINDOW = 500  # QoS 1 PUBLISH packets sent and not yet acknowledged (lowered to the broker's Receive Maximum)
BACKLOG = 2000  # messages taken from the sink's queue, waiting for room in the window, before the worker waits
MAX_COMMANDS = 64  # commands running at once; more get an error result
# Records are gathered for up to this long and published together: one write (and one read of
# the acknowledgements) for many messages instead of one per message; 50 ms is invisible on a
# dashboard and much cheaper than publishing each reading alone while many chargers report.
GATHER = 0.05


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


@functools.lru_cache(maxsize=65536)
def _topic_field(topic: str) -> bytes:
    """A topic name as it goes in a PUBLISH packet: two length bytes, then UTF-8 (MQTT 3.1.1 §1.5.3)."""
    data = topic.encode("utf-8")
    if not data or len(data) > 65535 or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"not a topic name a client may publish to: {topic!r}")
    return len(data).to_bytes(2, "big") + data


@functools.lru_cache(maxsize=512)
def _pubacks_format(count: int) -> struct.Struct:
    """`count` PUBACKs with just a packet id each (4 bytes: 0x40, 0x02, id): their ids."""
    return struct.Struct(">" + "2xH" * count)


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1 to 4 bytes, 7 bits each, low bits first)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, mid: int, v5: bool) -> bytes:
    """One PUBLISH packet (QoS 0 or 1): fixed header, topic, packet id (QoS 1), an empty property
    list (MQTT 5), payload."""
    out = bytearray()
    write_publish(out, topic, payload, qos, retain, mid, v5)
    return bytes(out)


def write_publish(out: bytearray, topic: str, payload: bytes, qos: int, retain: bool, mid: int, v5: bool) -> None:
    """`publish_packet`, written straight onto the end of `out` (no packet object per message)."""
    tf = _topic_field(topic)
    size = len(tf) + len(payload) + (2 if qos else 0) + v5
    first = 0x30 | qos << 1 | retain
    if size < 128:
        out += bytes((first, size))
    elif size < 16384:  # the usual telemetry message: a two-byte remaining length
        out += bytes((first, size & 0x7F | 0x80, size >> 7))
    else:
        out.append(first)
        out += _remaining_length(size)
    out += tf
    if qos:
        out += mid.to_bytes(2, "big")
    if v5:
        out.append(0)
    out += payload


# One message to publish: (topic, payload, retain). A plain tuple, not a named tuple: thousands wait
# in the queue and the window at a time, and the garbage collector stops tracking a plain tuple of
# strings and bytes the first time it sees one (it keeps scanning a named tuple for as long as it lives).
Message = tuple[str, bytes, bool]


@dataclass
class _ChargerTopics:
    """What was published for one charger (to clear it when the charger is forgotten)."""

    root: str = ""  # {base}/chargers/{topic-safe id}
    retained: set[str] = field(default_factory=set)
    # (evse, measurand, unit, phase, location, context) -> (retained topic, JSON before the value, after it)
    meter_topics: dict[tuple[Any, ...], tuple[str, str, str]] = field(default_factory=dict)
    meter_root: dict[int, str] = field(default_factory=dict)  # evse -> {root}/evse/{evse}/meter
    # (name, unit, source) -> (retained topic, JSON before the value, after it up to the time, after the time)
    environment: dict[tuple[str, str, str], tuple[str, str, str, str]] = field(default_factory=dict)
    discovery: dict[str, bytes] = field(default_factory=dict)  # HA config topic -> config (without device)
    device: dict[str, Any] = field(default_factory=dict)


# (measurand, HA device_class, state_class, unit, name) for the per-measurand topics HA gets a sensor for
_HA_METER = {
    "Power.Active.Import": ("power", "measurement", "W", "Power"),
    "Energy.Active.Import.Register": ("energy", "total_increasing", "Wh", "Energy"),
    "Current.Import": ("current", "measurement", "A", "Current"),
    "Voltage": ("voltage", "measurement", "V", "Voltage"),
    "SoC": ("battery", "measurement", "%", "State of charge"),
}
_HA_ENV = {"Celsius": ("temperature", "°C"), "RH": ("humidity", "%")}


class _BatchedSocket:
    """paho's socket, with writes gathered and reads buffered.

    paho sends every MQTT packet with its own `send()` and reads each incoming packet in three or
    more `recv()` calls (command byte, length bytes, body). Behind a busy relay that is several
    system calls per message. This wrapper keeps what paho "sends" until the end of the event-loop
    callback (`flush`, one `send` for all of it) and serves paho's small reads from one large
    `recv`. Everything else is delegated to the real socket."""

    def __init__(self, sock: Any, take_puback: Any = None, take_pubacks: Any = None) -> None:
        self._sock = sock
        self._out = bytearray()
        self._in = bytearray()  # whole packets for paho
        self._raw = bytearray()  # read from the socket, not yet split into packets
        self._take_puback = take_puback  # (packet id, reason code) of a PUBACK -> True when it was the sink's
        self._take_pubacks = take_pubacks  # packet ids of successful PUBACKs -> the ids that were not the sink's

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self._out += data
        return len(data)

    def flush(self) -> bool:
        """Write what is gathered; True when all of it went. Raises OSError when the link is dead."""
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            del self._out[:sent]
        return True

    def fill(self) -> bool:
        """One `recv` from the socket, split into packets (the sink's PUBACKs taken at once, the
        rest kept for paho's `recv`). False: the peer closed the connection."""
        data = self._sock.recv(65536)
        if not data:
            return False
        self._split(data)
        return True

    def recv(self, size: int) -> bytes:
        if not self._in:
            data = self._sock.recv(65536)  # BlockingIOError / SSLWantReadError reach paho as before
            if not data:
                return b""
            self._split(data)
            if not self._in:  # only acknowledgements of the sink's own messages, or part of a packet
                raise BlockingIOError
        chunk = bytes(self._in[:size])
        del self._in[:size]
        return chunk

    def _split(self, data: bytes) -> None:
        """Cut what arrived into MQTT packets: a PUBACK of one of the sink's own PUBLISHes is
        consumed here (paho never sent it and would ignore it); everything else goes to paho whole."""
        raw = self._raw
        raw += data
        take = self._take_puback
        n, i = len(raw), 0
        count = n >> 2
        if (not n & 3 and self._take_pubacks is not None and raw[0::4].count(0x40) == count
                and raw[1::4].count(2) == count):
            # nothing but successful PUBACKs, as behind a steady stream of QoS 1 telemetry: in one go
            for mid in self._take_pubacks(_pubacks_format(count).unpack(raw)):
                self._in += b"\x40\x02" + mid.to_bytes(2, "big")  # paho's own
            raw.clear()
            return
        while i + 2 <= n:
            if raw[i] == 0x40 and raw[i + 1] == 2 and i + 4 <= n and take is not None:
                # the common packet by far: a PUBACK with just its packet id (success)
                if not take(raw[i + 2] << 8 | raw[i + 3], 0):
                    self._in += raw[i:i + 4]
                i += 4
                continue
            length, start = raw[i + 1], i + 2
            if length > 127:  # a longer remaining length: up to three more bytes
                length, shift, j = length & 0x7F, 7, i + 2
                while True:
                    if j >= n:
                        start = -1
                        break
                    byte = raw[j]
                    length |= (byte & 0x7F) << shift
                    j += 1
                    if byte < 128 or shift >= 21:
                        break
                    shift += 7
                if start == -1:
                    break
                start = j
            end = start + length
            if end > n:
                break
            if not (raw[i] == 0x40 and take is not None and length >= 2
                    and take(raw[start] << 8 | raw[start + 1], raw[start + 2] if length > 2 else 0)):
                self._in += raw[i:end]
            i = end
        del raw[:i]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._in) + (inner() if inner else 0)

    def close(self) -> None:
        try:
            self.flush()  # e.g. a DISCONNECT paho queued just before closing
        except OSError:
            pass
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class MqttSink(SpooledSink[Message]):
    name = "mqtt"

    def __init__(self, settings: Any, data_dir: str, site_id: str) -> None:
        cfg = settings
        super().__init__(Spool(_spool_path(data_dir, "mqtt"), cfg.spool_max), queue_size=cfg.queue_size,
                         batch_size=500, flush_interval=GATHER)
        self.cfg = cfg
        self.base = f"{cfg.topic_prefix}/{site_id}"
        self.site_id = site_id
        self.qos = cfg.qos
        self.hub: Any = None  # set by attach_hub(): commands need the sessions
        self.connected = False
        self._closing = False
        self._was_up = False
        self._lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tasks: list[asyncio.Task[None]] = []
        self._sock: Any = None
        self._fd: int | None = None
        self._rng = random.Random()
        self._published = 0
        self._acked = 0
        self._window: dict[int, Message] = {}  # packet id -> QoS 1 message sent, not yet acknowledged
        self._backlog: collections.deque[Message] = collections.deque()  # waiting for room in the window
        self._unsent: list[Message] = []  # not acknowledged when the connection went: spooled, sent again
        self._limit = WINDOW
        self._refill = WINDOW // 4
        self._room = asyncio.Event()
        self.refused = 0  # PUBLISHes the broker acknowledged with an error reason code (MQTT 5)
        self._commands = 0
        self._chargers: dict[str, _ChargerTopics] = {}
        self._last: dict[str, tuple[float, float]] = {}  # retained meter topic -> (value, monotonic time)
        self._thin = cfg.retained_min_interval > 0 or cfg.retained_deadband > 0  # see _due
        self._states: dict[str, ChargerState] = {}  # the last state published per charger
        url = urlsplit(cfg.url.get_secret_value())
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError("mqtt.url: must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        self._tls = url.scheme in ("mqtts", "ssl")
        self._host = url.hostname or "127.0.0.1"
        try:
            self._port = url.port or (8883 if self._tls else 1883)
        except ValueError:
            raise ConfigError("mqtt.url: the port is not a number from 0 to 65535") from None
        self.v5 = cfg.protocol_version == 5
        client_id = cfg.client_id or f"ocpp-gateway-{site_id}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311)
        if url.username:
            self.client.username_pw_set(unquote(url.username), unquote(url.password) if url.password else None)
        if self._tls:
            try:
                ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"mqtt.ca_file: cannot load it ({getattr(exc, 'strerror', None) or exc})") from None
            self.client.tls_set_context(ctx)
        self.client.will_set(f"{self.base}/gateway/state", "offline", qos=self.qos, retain=True)
        self.client.max_inflight_messages_set(100)  # MQTT 5: the broker's Receive Maximum lowers it
        self.client.on_connect = self._paho_connect
        self.client.on_disconnect = self._paho_disconnect
        self.client.on_publish = self._paho_publish
        self.client.on_message = self._paho_message
        self.client.on_socket_open = self._socket_open
        self.client.on_socket_close = self._socket_close
        self.client.on_socket_register_write = self._socket_want_write
        self.client.on_socket_unregister_write = self._socket_no_write

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> "MqttSink":
        await self.start_worker()
        self._loop_thread = threading.get_ident()
        self._tasks = [asyncio.create_task(self._maintain(), name="mqtt:connection"),
                       asyncio.create_task(self._misc(), name="mqtt:keepalive")]
        log.info("MQTT: connecting to %s:%d (topics under %s/)", self._host, self._port, self.base)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # The gateway is stopping: no charger stays connected through it. Say so in the retained
        # state topics (the hub closes sessions without a "disconnected" event per charger).
        now = datetime.now(timezone.utc)
        for state in list(self._states.values()):
            if state.connected:
                self.offer(dataclasses.replace(state, connected=False, ts=now))
        deadline = time.monotonic() + 2.0  # what is queued goes out and is acknowledged, if the broker is quick
        while time.monotonic() < deadline and self.connected and (
                self.queue.qsize() or self._busy or self._backlog or self._window
                or self.qos == 2 and self._published > self._acked):
            await asyncio.sleep(0.01)
        self._requeue()  # not acknowledged in time: spooled, sent again after the next start
        await self.stop_worker()
        self._closing = True
        if self.connected:
            info = self.client.publish(f"{self.base}/gateway/state", "offline", qos=self.qos, retain=True)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connected and self.qos and not info.is_published():
                await asyncio.sleep(0.01)
            self.client.disconnect()  # a clean DISCONNECT: the broker does not publish the will
            deadline = time.monotonic() + 1.0
            while self.client.socket() is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._detach_socket()

    def attach_hub(self, hub: Any) -> None:
        self.hub = hub

    async def _maintain(self) -> None:
        """Connect, and reconnect with exponential backoff after every loss. The blocking part of a
        connection attempt (DNS, TCP, TLS handshake) runs in a worker thread."""
        attempt = 0
        first = True
        while not self._closing:
            self._lost.clear()
            try:
                if first:
                    await self._loop.run_in_executor(None, self.client.connect, self._host, self._port,
                                                     self.cfg.keepalive)
                    first = False
                else:
                    await self._loop.run_in_executor(None, self.client.reconnect)
            except (OSError, ssl.SSLError, ValueError) as exc:
                attempt += 1
                delay = self._backoff(attempt)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("MQTT: cannot connect to %s:%d (%s); retrying in %.1f s", self._host, self._port,
                                exc, delay)
                await asyncio.sleep(delay)
                continue
            await self._lost.wait()
            if self._closing:
                return
            attempt = 0 if self._was_up else attempt + 1
            self._was_up = False
            await asyncio.sleep(self._backoff(max(attempt, 1)))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.cfg.reconnect_max, self.cfg.reconnect_min * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.client.socket() is not None:
                self.client.loop_misc()  # keepalive PINGREQ, and a dead broker noticed

    # -- paho's socket on the event loop ----------------------------------------------------------

    def _on_loop(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:  # the socket opens in the connecting worker thread
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._attach_socket, sock)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._detach_socket)

    def _socket_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, True)

    def _socket_no_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, False)

    def _attach_socket(self, sock: Any) -> None:
        self._detach_socket()
        if self.client._sock is not sock:  # already closed again
            return
        wrapped = _BatchedSocket(sock, self._puback, self._pubacks)
        self.client._sock = wrapped  # paho keeps no other reference to the socket it writes to
        self._sock, self._fd = wrapped, sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        if self.client.want_write():
            self._want_write(True)

    def _detach_socket(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._sock = self._fd = None

    def _want_write(self, on: bool) -> None:
        if self._fd is None:
            return
        if on:
            self._loop.add_writer(self._fd, self._writable)
        elif not (self._sock is not None and self._sock._out):
            self._loop.remove_writer(self._fd)  # (with bytes gathered, _writable removes it after the flush)

    def _readable(self) -> None:
        """The socket has bytes. Behind a stream of QoS 1 telemetry they are nearly all PUBACKs of
        the sink's own messages, read and taken here; paho is run only when something is left for
        it (a command, a SUBACK, a PINGRESP, paho's own acknowledgements) or the link failed."""
        sock = self._sock
        if sock is None:
            self.client.loop_read(1000)
            return
        try:
            alive = sock.fill()
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            alive = True
        except OSError:
            alive = False
        if not alive or sock._in:
            self.client.loop_read(1000)  # paho reads its packets, or notices the closed link and reports it
        if sock is self._sock and sock.pending():
            self._loop.call_soon(self._readable)  # bytes already read (or decrypted) that select() cannot see
        if self._backlog and len(self._window) <= self._limit - self._refill:
            # acknowledgements made room: refill at once (one write for all of it). With a broker
            # that takes few messages in flight (Mosquitto: 20) the window's round trips bound the
            # throughput, so waiting for half of it to drain would halve that bound.
            self._pump()
        if self._sock is not None and self._sock._out:
            self._writable()  # acknowledgements paho queued while reading

    def _writable(self) -> None:
        if self.client._out_packet:  # paho's own packets (CONNECT, PINGREQ, its publishes, acknowledgements)
            self.client.loop_write()
        sock = self._sock
        if sock is None or sock is not self.client._sock:
            return
        try:
            done = sock.flush()
        except OSError as exc:
            log.warning("MQTT: write failed (%s)", exc)
            self.client.loop_read()  # paho notices the dead socket and reports the disconnect
            return
        if not done or self.client.want_write():
            self._loop.add_writer(self._fd, self._writable)  # the kernel buffer is full: wait
        else:
            self._loop.remove_writer(self._fd)

    # -- what paho reports (on the event loop, or from the connecting thread) ----------------------

    def _paho_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._on_loop(log.warning, "MQTT: broker refused the connection: %s", reason)
            return
        client.publish(f"{self.base}/gateway/state", "online", qos=self.qos, retain=True)
        client.subscribe(f"{self.base}/chargers/+/cmd/+", qos=self.qos)
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._on_loop(self._up, receive_maximum)

    def _paho_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._on_loop(self._down, str(reason))

    def _paho_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if self.qos == 2:
            self._acked += 1

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._on_loop(self._command, msg.topic, bytes(msg.payload), bool(msg.retain), response_topic, correlation)

    def _up(self, receive_maximum: int | None = None) -> None:
        if not self.connected:
            log.info("MQTT: connected to %s:%d", self._host, self._port)
        # MQTT 5: the broker says how many QoS 1/2 messages it takes unacknowledged; paho's own
        # (the gateway state, command results) share that room
        self._limit = max(1, min(WINDOW, (receive_maximum or WINDOW) - 4))
        # room that makes a refill worth a write: with a small window (Mosquitto by default) every
        # acknowledgement counts; waiting for four at a time dropped ~97 % of the records under
        # bench.telemetry (acknowledgements come one or two per read)
        self._refill = 1 if self._limit < 50 else self._limit // 4
        self.connected = True
        self._was_up = True
        self.wake()  # anything spooled goes out now

    def _down(self, reason: str) -> None:
        if self.connected:
            log.warning("MQTT: connection lost (%s); spooling until it is back", reason)
        self.connected = False
        self._requeue()
        self._lost.set()

    def _requeue(self) -> None:
        """What was sent and not acknowledged, and what waited for the window, is sent again after
        the next connection (spooled first, ahead of anything newer; at least once)."""
        if self._window or self._backlog:
            self._unsent += [*self._window.values(), *self._backlog]
            self._window.clear()
            self._backlog.clear()
            self.wake()
        self._published = self._acked
        self._room.set()

    def take_unsent(self) -> list[Message]:
        unsent, self._unsent = self._unsent, []
        return unsent

    def _puback(self, mid: int, reason: int) -> bool:
        """A PUBACK arrived: True if it was for one of the sink's messages."""
        message = self._window.pop(mid, None)
        if message is None:
            return False  # paho's own (or one given up on): paho handles it
        self._acked += 1
        if reason >= 0x80:  # MQTT 5 reason code: refused (not authorised, quota exceeded, ...)
            self.refused += 1
            log.warning("MQTT: the broker refused a message to %s (reason code 0x%02X)", message[0], reason)
        return True

    def _pubacks(self, mids: tuple[int, ...]) -> list[int]:
        """Successful PUBACKs, many at once: the ids that were not the sink's (paho's own)."""
        pop = self._window.pop
        others = [mid for mid in mids if pop(mid, None) is None]
        self._acked += len(mids) - len(others)
        return others

    def _next_mids(self, count: int) -> list[int]:
        """`count` packet ids from paho's own sequence (so they never clash with paho's messages),
        taken under its lock once rather than once per message."""
        client = self.client
        lock = getattr(client, "_mid_generate_mutex", None)
        if lock is None or not isinstance(getattr(client, "_last_mid", None), int):
            return [client._mid_generate() for _ in range(count)]  # paho changed: one at a time
        with lock:
            last = client._last_mid
            mids = [(last + j) % 65535 + 1 for j in range(count)]  # 1 .. 65535, never 0
            client._last_mid = mids[-1]
        return mids

    # -- delivery ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.connected

    async def deliver(self, items: list[Message]) -> bool:
        """QoS 0 and 1: the sink frames its PUBLISH packets itself and writes them on paho's socket,
        with packet ids from paho's own sequence, and takes their PUBACKs off the stream before paho
        reads it (`_BatchedSocket._split`). paho still runs the connection: CONNECT, keepalive,
        subscriptions, commands and the gateway state. Going through `Client.publish` cost about
        30 us per message (a message object with a lock and a condition, its queue scanned on each
        acknowledgement, an MQTT 5 properties object per PUBACK): several times the relay's own
        work per MeterValues. QoS 2 goes through paho."""
        if not self.connected:
            return False
        if self.qos == 2:
            return await self._deliver_paho(items)
        while len(self._backlog) > BACKLOG and self.connected:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._room.wait()
        if not self.connected:
            return False
        self._backlog.extend(items)
        self._pump()
        return True

    def _pump(self) -> None:
        """Send what waits, as far as the window allows, in one write."""
        sock = self._sock
        if sock is None or not self.connected:
            return
        backlog, window, v5, qos = self._backlog, self._window, self.v5, self.qos
        out = sock._out
        if qos == 0:
            while backlog:
                m = backlog.popleft()
                try:
                    write_publish(out, m[0], m[1], 0, m[2], 0, v5)
                except ValueError as exc:
                    log.warning("MQTT: not published: %s", exc)
                    continue
                self._published += 1
                self._acked += 1
        else:
            room = min(self._limit - len(self.client._out_messages) - len(window), len(backlog))
            if room > 0:
                sent = 0
                for mid in self._next_mids(room):
                    m = backlog.popleft()
                    try:
                        write_publish(out, m[0], m[1], 1, m[2], mid, v5)
                    except ValueError as exc:  # (that id goes unused)
                        log.warning("MQTT: not published: %s", exc)
                        continue
                    window[mid] = m
                    sent += 1
                self._published += sent
        if len(backlog) <= BACKLOG:
            self._room.set()
        if out:
            self._writable()

    async def _deliver_paho(self, items: list[Message]) -> bool:
        while self._published - self._acked > MAX_OUTSTANDING and self.connected:
            await asyncio.sleep(0.01)  # let paho catch up before handing it more
        if not self.connected:
            return False
        for m in items:
            info = self.client.publish(m[0], m[1], qos=self.qos, retain=m[2])
            self._published += 1
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                log.warning("MQTT: publish to %s refused: %s", m[0], paho.error_string(info.rc))
        # QoS 1/2 messages published as the connection dropped (rc NO_CONN) stay in paho's queue and are
        # sent after the reconnect, ahead of the spool.
        return True

    def pack(self, item: Message) -> bytes:
        return orjson.dumps([item[0], item[2], item[1].decode("utf-8")])

    def unpack(self, body: bytes) -> Message:
        topic, retain, payload = orjson.loads(body)
        return (topic, payload.encode("utf-8"), bool(retain))

    # -- records into messages --------------------------------------------------------------------

    def _charger(self, charger_id: str) -> tuple[str, _ChargerTopics]:
        ch = self._chargers.get(charger_id)
        if ch is None:
            ch = self._chargers[charger_id] = _ChargerTopics(root=f"{self.base}/chargers/{topic_level(charger_id)}")
        return ch.root, ch

    def _retained(self, charger: _ChargerTopics, topic: str, payload: bytes) -> Message:
        charger.retained.add(topic)
        return (topic, payload, True)

    def encode(self, record: Record) -> list[Message]:
        kind = type(record)
        if kind is MeterReading:  # the hot path: every MeterValues of every charger
            ch = self._chargers.get(record.charger_id) or self._charger(record.charger_id)[1]
            return self._meter(record, ch)
        if kind is EnvironmentReading:  # with most 1.6 MeterValues (a temperature sample)
            ch = self._chargers.get(record.charger_id) or self._charger(record.charger_id)[1]
            return self._environment(record, ch)
        out: list[Message] = []
        if isinstance(record, ChargerForgotten):
            return self._forget(record.charger_id)
        root, ch = self._charger(record.charger_id)
        if isinstance(record, ConnectorStatus):
            topic = f"{root}/evse/{record.evse}/status"
            out.append(self._retained(ch, topic, _json({"status": record.status, "error_code": record.error_code,
                                                        "connector": record.connector, "ts": iso(record.ts)})))
            if self.cfg.ha_discovery:
                name = "Status" if record.evse == 0 else f"EVSE {record.evse} status"
                out += self._discover(record.charger_id, "sensor", f"evse{record.evse}_status",
                                      {"name": name, "state_topic": topic, "value_template": "{{ value_json.status }}",
                                       "icon": "mdi:ev-station"})
        elif isinstance(record, TransactionEvent):
            out.append((f"{root}/transactions", _json({
                "event": record.event, "transaction_id": record.transaction_id, "evse": record.evse,
                "meter_start": record.meter_start, "meter_stop": record.meter_stop, "energy_wh": record.energy_wh,
                "reason": record.reason, "offline": record.offline, "ts": iso(record.ts)}), False))
        elif isinstance(record, ChargerState):
            self._states[record.charger_id] = record
            out.append(self._retained(ch, f"{root}/state", _json({
                "connected": record.connected, "upstream": record.upstream, "protocol": record.protocol,
                "ts": iso(record.ts)})))
            if self.cfg.ha_discovery:
                out += self._discover(record.charger_id, "binary_sensor", "connected", {
                    "name": "Connected", "state_topic": f"{root}/state", "device_class": "connectivity",
                    "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}"})
        elif isinstance(record, ControlChange):  # local control: every change, and the latest per EVSE
            body = _json(control_api.change_json(record))
            out.append((f"{root}/control", body, False))
            out.append(self._retained(ch, f"{root}/evse/{record.evse}/control", body))
        elif isinstance(record, ChargerInfo):
            ch.device = {k: v for k, v in {"manufacturer": record.vendor, "model": record.model,
                                           "sw_version": record.firmware, "serial_number": record.serial}.items() if v}
            if self.cfg.ha_discovery:  # the device details changed: publish every config again
                out += [(t, self._ha_payload(record.charger_id, c), True) for t, c in ch.discovery.items()]
        return out

    def _meter(self, record: MeterReading, ch: _ChargerTopics) -> list[Message]:
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
                shape = self._meter_shape(record.charger_id, ch, evse, s, rest)
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

    def _environment(self, record: EnvironmentReading, ch: _ChargerTopics) -> list[Message]:
        """`.../environment/{name}` (retained), its JSON put together like `_meter`'s; the Home
        Assistant sensor of a temperature or humidity is announced the first time."""
        shape = ch.environment.get((record.name, record.unit, record.source))
        out: list[Message] = []
        if shape is None:
            shape = self._environment_shape(record, ch, out)
        value = record.value
        if self._thin and not self._due(shape[0], value, time.monotonic()):
            return out
        out.append((shape[0], f'{shape[1]}{value!r}{shape[2]}{iso(record.ts)}{shape[3]}'.encode(), True))
        return out

    def _environment_shape(self, record: EnvironmentReading, ch: _ChargerTopics,
                           out: list[Message]) -> tuple[str, str, str, str]:
        topic = f"{ch.root}/environment/{topic_level(record.name)}"
        ch.retained.add(topic)
        shape = (topic, '{"value":', f',"unit":{_text(record.unit)},"ts":"', f'","source":{_text(record.source)}}}')
        ch.environment[(record.name, record.unit, record.source)] = shape
        ha = _HA_ENV.get(record.unit)
        if ha is not None and self.cfg.ha_discovery:
            out += self._discover(record.charger_id, "sensor", f"env_{record.name}",
                                  {"name": record.name.replace("_", " ").capitalize(), "state_topic": topic,
                                   "value_template": "{{ value_json.value }}", "device_class": ha[0],
                                   "state_class": "measurement", "unit_of_measurement": ha[1]})
        return shape

    def _meter_shape(self, charger_id: str, ch: _ChargerTopics, evse: int, s: Any,
                     out: list[Message]) -> tuple[str, str, str]:
        """The retained topic of one measurand (and phase) of an EVSE and the JSON text around a
        sample's value, worked out once per charger and shape; its Home Assistant sensor is
        announced (into `out`) the first time."""
        topic = (f"{ch.root}/evse/{evse}/meter/{topic_level(s.measurand)}"
                 + (f"/{topic_level(s.phase)}" if s.phase else ""))
        shape = (topic, f'{{"measurand":{_text(s.measurand)},"value":',
                 f',"unit":{_text(s.unit)},"phase":{_text(s.phase)},"location":{_text(s.location)},'
                 f'"context":{_text(s.context)}')
        ch.meter_topics[(evse, s.measurand, s.unit, s.phase, s.location, s.context)] = shape
        ch.retained.add(topic)
        ha = _HA_METER.get(s.measurand)
        if ha is not None and self.cfg.ha_discovery and s.unit in (ha[2], "Percent" if ha[2] == "%" else ha[2]):
            suffix = f" {s.phase}" if s.phase else ""
            out += self._discover(charger_id, "sensor", f"evse{evse}_{s.measurand}_{s.phase or ''}",
                                  {"name": f"EVSE {evse} {ha[3]}{suffix}", "state_topic": topic,
                                   "value_template": "{{ value_json.value }}", "device_class": ha[0],
                                   "state_class": ha[1], "unit_of_measurement": ha[2]})
        return shape

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

    def _node(self, charger_id: str) -> str:
        return _HA_ID.sub("_", f"ocppgw_{self.site_id}_{topic_level(charger_id)}")

    def _discover(self, charger_id: str, component: str, key: str, config: dict[str, Any]) -> list[Message]:
        _, ch = self._charger(charger_id)
        node = self._node(charger_id)
        object_id = _HA_ID.sub("_", key).strip("_").lower()
        topic = f"{self.cfg.ha_prefix}/{component}/{node}/{object_id}/config"
        if topic in ch.discovery:
            return []
        body = {**config, "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}"}
        ch.discovery[topic] = _json(body)
        return [(topic, self._ha_payload(charger_id, ch.discovery[topic]), True)]

    def _ha_payload(self, charger_id: str, config: bytes) -> bytes:
        _, ch = self._charger(charger_id)
        body = orjson.loads(config)
        body["device"] = {"identifiers": [self._node(charger_id)], "name": charger_id,
                          **ch.device}
        body["availability"] = [{"topic": f"{self.base}/gateway/state", "payload_available": "online",
                                 "payload_not_available": "offline"}]
        return _json(body)

    def _forget(self, charger_id: str) -> list[Message]:
        self._states.pop(charger_id, None)
        ch = self._chargers.pop(charger_id, None)
        if ch is None:
            return []
        for topic in list(self._last):
            if topic in ch.retained:
                del self._last[topic]
        return [(t, b"", True) for t in sorted(ch.retained) + sorted(ch.discovery)]

    # -- commands ---------------------------------------------------------------------------------

    def _command(self, topic: str, payload: bytes, retained: bool, response_topic: str | None,
                 correlation: bytes | None) -> None:
        if retained:
            log.warning("MQTT: ignoring a retained command on %s (commands must not be retained)", topic)
            return
        reply_to = response_topic or f"{topic}/result"
        if self._commands >= MAX_COMMANDS:
            self._reply(reply_to, correlation, {"status": "error", "error": {
                "code": "Busy", "description": "too many commands in progress"}})
            return
        self._commands += 1
        task = asyncio.ensure_future(self._run_command(topic, payload, reply_to, correlation))
        task.add_done_callback(lambda _t: setattr(self, "_commands", self._commands - 1))

    async def _run_command(self, topic: str, payload: bytes, reply_to: str, correlation: bytes | None) -> None:
        try:
            result = await self._execute(topic, payload)
        except Exception as exc:  # noqa: BLE001 - always answer
            log.exception("MQTT command on %s failed", topic)
            result = {"status": "error", "error": {"code": "InternalError", "description": str(exc)}}
        self._reply(reply_to, correlation, result)

    async def _execute(self, topic: str, payload: bytes) -> dict[str, Any]:
        def error(code: str, description: str) -> dict[str, Any]:
            return {"status": "error", "error": {"code": code, "description": description}}

        levels = topic[len(self.base) + 1:].split("/")
        if len(levels) != 4 or levels[0] != "chargers" or levels[2] != "cmd":
            return error("BadTopic", "expected .../chargers/{id}/cmd/{Action}")
        charger_id, action = unquote(levels[1]), levels[3]
        if not _ACTION.fullmatch(action):
            return error("NotSupported", f"{action!r} is not an OCPP action name")
        try:
            request = orjson.loads(payload) if payload.strip() else {}
        except orjson.JSONDecodeError as exc:
            return error("FormatViolation", f"payload is not JSON: {exc}")
        if not isinstance(request, dict):
            return error("FormatViolation", "payload must be a JSON object (the OCPP request payload)")
        allowed = self.cfg.command_actions
        permitted = "*" in allowed or action in allowed
        if action in ("Pause", "Resume") and not permitted:
            return error("SecurityError", f"{action} is not in [mqtt].command_actions")
        local = await control_api.command(self.hub, charger_id, action, request)  # Pause, Resume
        if local is not None:
            return local
        hub = self.hub
        session = hub.sessions.get(charger_id) if hub is not None else None
        if session is None or not session.connected:
            return error("NotConnected", f"charger {charger_id!r} is not connected")
        if not hub.schemas.csms_may_send(session.version, action):
            return error("NotSupported", f"{action} is not a CSMS-to-charger action in {session.version.value}")
        if not permitted:
            return error("SecurityError", f"{action} is not in [mqtt].command_actions")
        violation = hub.schemas.validate(session.version, action, request)
        if violation is not None:
            code = getattr(violation.code, "value", violation.code)
            return error(str(code), violation.description)
        try:
            response = await session.call_charger(action, request)
        except CallTimeout as exc:
            return {"status": "timeout", "error": {"code": "Timeout", "description": str(exc)}}
        except CallFailed as exc:
            return error(exc.code, exc.description)
        except NotConnected as exc:
            return error("NotConnected", str(exc))
        except Busy as exc:
            return error("Busy", str(exc))
        return {"status": "ok", "response": response}

    def _reply(self, topic: str, correlation: bytes | None, result: dict[str, Any]) -> None:
        props = None
        if self.v5 and correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        self.client.publish(topic, _json(result), qos=self.qos, retain=False, properties=props)


def _spool_path(data_dir: str, name: str) -> Any:
    from pathlib import Path

    return Path(data_dir) / f"telemetry-spool-{name}.sqlite3"
