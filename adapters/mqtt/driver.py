"""The MQTT sink: drives paho from the event loop and delivers what the encoder made of the records.

Driving paho: from the event loop, as Home Assistant does. paho's socket is registered with the
loop (`add_reader`, and `add_writer` while paho has bytes to send); `loop_read`, `loop_write` and
(every second) `loop_misc` run on the loop, so every paho callback runs there too and no gateway
state is shared with another thread. Only the blocking part of connecting (DNS, TCP, the TLS
handshake) runs in a worker thread. paho's own network thread (`loop_start`) was the first
version: it costs a thread wake-up and GIL hand-off per message and one system call per packet;
the event-loop version measured about 15-20 % less CPU per published message at QoS 1.

Delivery: with `[mqtt].fast_publish` (the default) QoS 0 and 1 messages are framed by
adapters/mqtt/framing.py on paho's socket; otherwise, and always for QoS 2, through
`Client.publish`. paho keeps QoS 1/2 messages that were not acknowledged and sends them again after
a reconnect (the fast lane spools its own window for that). While disconnected, messages are
spooled to disk in order and drained, oldest first, after the next CONNACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt.commands import Commands
from adapters.mqtt.framing import FastLane, Message
from adapters.mqtt.sweep import SWEEP_DELAY, SWEEP_SECONDS, Sweeps
from adapters.mqtt.sweep import filters as sweep_filters
from adapters.mqtt.topics import Encoder
from adapters.spool import Spool
from adapters.telemetry_sink import SpooledSink
from gateway.config import ConfigError
from gateway.operator import Operator
from gateway.telemetry.records import ChargerForgotten, Record

log = logging.getLogger("gateway.telemetry.mqtt")

# paho's QoS 1/2 messages in flight. paho does not honour the broker's Receive Maximum and cannot
# change this once connected; more QoS 2 messages in flight than the broker takes were lost
# (Mosquitto's default is 20: a burst lost 40 % at 100). 16 leaves room below any usual broker's.
INFLIGHT = 16
MAX_OUTSTANDING = 40  # through paho (QoS 2, or fast_publish off): handed over and not yet acknowledged
BACKLOG = 2000  # fast lane: messages taken from the sink's queue, waiting for room in the window, before the worker waits
# Records are gathered for up to this long and published together: one write (and one read of
# the acknowledgements) for many messages instead of one per message; 50 ms is invisible on a
# dashboard and much cheaper than publishing each reading alone while many chargers report.
GATHER = 0.05
POLL = 0.01  # s between looks at paho's state while waiting for it


TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason "Session taken over": another client connected with this id
# Brokers that just close the old connection (Mosquitto 2.0.11 does, even over MQTT 5) show a
# takeover as connections that end soon after they were made, again and again, as two clients with
# one id knock each other off in turn: this many in a row, each shorter than SHORT_LIVED seconds.
SHORT_LIVED = 10.0
SHORT_LIVED_IN_A_ROW = 3


class MqttSink(SpooledSink[Message]):
    name = "mqtt"

    def __init__(self, settings: Any, data_dir: str, site_id: str, client_id: str | None = None) -> None:
        cfg = settings
        super().__init__(Spool(Path(data_dir) / "telemetry-spool-mqtt.sqlite3", cfg.spool_max),
                         queue_size=cfg.queue_size, batch_size=500, flush_interval=GATHER)
        self.cfg = cfg
        self.encoder = Encoder(cfg, site_id)
        self.base = self.encoder.base
        self.qos = cfg.qos
        self.connected = False
        self._closing = False
        self._was_up = False
        self._up_since = 0.0
        self._short_lived = 0  # connections in a row that ended within SHORT_LIVED (a takeover?)
        self._lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tasks: list[asyncio.Task[None]] = []
        self._fd: int | None = None
        self._rng = random.Random()
        self._published = 0  # through paho
        self._acked = 0
        self._unsent: list[Message] = []  # not acknowledged when the connection went: spooled, sent again
        self._room = asyncio.Event()
        url = urlsplit(cfg.url.get_secret_value())
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError("mqtt.url: must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        self._tls = url.scheme in ("mqtts", "ssl")
        self._host = url.hostname or "127.0.0.1"
        try:
            self._port = url.port or (8883 if self._tls else 1883)
        except ValueError as exc:
            raise ConfigError("mqtt.url: the port is not a number from 0 to 65535") from exc
        self.v5 = cfg.protocol_version == 5
        # the composition root passes one unique per install (adapters/datadir.py)
        client_id = self.client_id = client_id or cfg.client_id or f"ocpp-gateway-{site_id}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311)
        # QoS 2 always goes through paho; fast_publish = false sends QoS 0/1 through paho too
        self.lane = FastLane(self.client, self.qos, self.v5) if cfg.fast_publish and self.qos < 2 else None
        self.commands = Commands(self.base, cfg.command_actions, self._reply)
        # a forgotten charger's retained topics from an earlier run (adapters/mqtt/sweep.py); cleared at
        # QoS 0: a QoS 1 publish through paho while the fast lane has messages in flight upset the
        # lane's acknowledgements (seen as the charger's state sent again after the forget)
        self.sweeps = Sweeps(self._sweep_subscribe,
                             lambda fs: self.client.unsubscribe(fs),
                             lambda topic: self.client.publish(topic, b"", qos=0, retain=True))
        if url.username:
            self.client.username_pw_set(unquote(url.username), unquote(url.password) if url.password else None)
        if self._tls:
            try:
                ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"mqtt.ca_file: cannot load it ({getattr(exc, 'strerror', None) or exc})") from exc
            self.client.tls_set_context(ctx)
        self.client.will_set(self.encoder.gateway_state, "offline", qos=self.qos, retain=True)
        self.client.max_inflight_messages_set(INFLIGHT)
        self.client.on_connect = self._paho_connect
        self.client.on_disconnect = self._paho_disconnect
        self.client.on_publish = self._paho_publish
        self.client.on_message = self._paho_message
        self.client.on_socket_open = self._socket_open
        self.client.on_socket_close = self._socket_close
        self.client.on_socket_register_write = self._socket_want_write
        self.client.on_socket_unregister_write = self._socket_no_write

    @property
    def refused(self) -> int:
        """PUBLISHes the broker acknowledged with an error reason code (MQTT 5, fast lane)."""
        return self.lane.refused if self.lane is not None else 0

    def attach_operator(self, operator: Operator) -> None:
        """Commands need the core's operator calls (gateway/operator.py)."""
        self.commands.operator = operator

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> "MqttSink":
        await self.start_worker()
        self._loop_thread = threading.get_ident()
        self._tasks = [asyncio.create_task(self._maintain(), name="mqtt:connection"),
                       asyncio.create_task(self._misc(), name="mqtt:keepalive")]
        log.info("MQTT: connecting to %s:%d as %s (topics under %s/)", self._host, self._port, self.client_id, self.base)
        return self

    def _pending(self) -> bool:
        lane = self.lane
        return bool(self.queue.qsize() or self._busy or (lane is not None and (lane.backlog or lane.window))
                    or self._published > self._acked)

    async def __aexit__(self, *exc: object) -> None:
        # The gateway is stopping: no charger stays connected through it. Say so in the retained
        # state topics (the hub closes sessions without a "disconnected" event per charger).
        now = datetime.now(timezone.utc)
        self.offer_all([dataclasses.replace(state, connected=False, ts=now)
                        for state in self.encoder.connected_states()])
        # what is queued goes out and is acknowledged, if the broker is quick
        await _poll(lambda: not (self.connected and self._pending()), 2.0)
        self._requeue()  # not acknowledged in time: spooled, sent again after the next start
        await self.stop_worker()
        await self.commands.close()
        self._closing = True
        if self.connected:
            info = self.client.publish(self.encoder.gateway_state, "offline", qos=self.qos, retain=True)
            await _poll(lambda: not (self.connected and self.qos) or info.is_published(), 2.0)
            self.client.disconnect()  # a clean DISCONNECT: the broker does not publish the will
            await _poll(lambda: self.client.socket() is None, 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._detach_socket()

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

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
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
        if self.lane is not None:
            if self.lane.attach(sock) is None:  # already closed again
                return
        elif self.client.socket() is not sock:
            return
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        if self.client.want_write():
            self._want_write(True)

    def _detach_socket(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        if self.lane is not None:
            self.lane.detach()
        self._fd = None

    def _want_write(self, on: bool) -> None:
        if self._fd is None:
            return
        if on:
            self._loop.add_writer(self._fd, self._writable)
        elif not (self.lane is not None and self.lane.sock is not None and self.lane.sock.out):
            self._loop.remove_writer(self._fd)  # (with bytes gathered, _writable removes it after the flush)

    def _readable(self) -> None:
        """The socket has bytes. Behind a stream of QoS 1 telemetry on the fast lane they are nearly
        all PUBACKs of the sink's own messages, read and taken there; paho is run only when
        something is left for it (a command, a SUBACK, a PINGRESP, paho's own acknowledgements) or
        the link failed."""
        lane = self.lane
        sock = lane.sock if lane is not None else None
        if lane is None or sock is None:
            self.client.loop_read(1000)
            return
        try:
            alive = sock.fill()
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            alive = True
        except OSError:
            alive = False
        if not alive or sock.incoming:
            self.client.loop_read(1000)  # paho reads its packets, or notices the closed link and reports it
        if sock is lane.sock and sock.pending():
            self._loop.call_soon(self._readable)  # bytes already read (or decrypted) that select() cannot see
        if lane.has_room():
            # acknowledgements made room: refill at once (one write for all of it). With a broker
            # that takes few messages in flight (Mosquitto: 20) the window's round trips bound the
            # throughput, so waiting for half of it to drain would halve that bound.
            self._pump()
        if lane.sock is not None and lane.sock.out:
            self._writable()  # acknowledgements paho queued while reading

    def _writable(self) -> None:
        if self.client.want_write():  # paho's own packets (CONNECT, PINGREQ, its publishes, acknowledgements)
            self.client.loop_write()
        lane = self.lane
        if lane is None:
            if self._fd is not None and not self.client.want_write():
                self._loop.remove_writer(self._fd)
            return
        sock = lane.sock
        if sock is None or self._fd is None or self.client.socket() is not lane.sock:
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
        client.publish(self.encoder.gateway_state, "online", qos=self.qos, retain=True)
        client.subscribe([(f, self.qos) for f in self.commands.topic_filters])
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._on_loop(self._up, receive_maximum)

    def _paho_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._on_loop(self._down, str(reason), getattr(reason, "value", None))

    def _paho_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if self.lane is None:
            self._acked += 1

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._on_loop(self._route, msg.topic, bytes(msg.payload), bool(msg.retain), response_topic, correlation)

    def _sweep_subscribe(self, patterns: list[str]) -> None:
        """QoS 0 (nothing to acknowledge) and, on MQTT 5, No Local: only the retained messages come,
        not the gateway's own publishes echoed back."""
        if self.v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe([(f, SubscribeOptions(qos=0, noLocal=True)) for f in patterns])
        else:
            self.client.subscribe([(f, 0) for f in patterns])

    def _route(self, topic: str, payload: bytes, retained: bool, response_topic: Any, correlation: Any) -> None:
        if self.sweeps.active and self.sweeps.received(topic, payload, retained):
            return  # a forgotten charger's retained value (cleared), never a command
        self.commands.received(topic, payload, retained, response_topic, correlation)

    def _up(self, receive_maximum: int | None = None) -> None:
        if not self.connected:
            log.info("MQTT: connected to %s:%d", self._host, self._port)
        if self.lane is not None:
            self.lane.receive_maximum(receive_maximum)
        self.connected = True
        self._was_up = True
        self._up_since = time.monotonic()
        self.wake()  # anything spooled goes out now

    def _down(self, reason: str, code: int | None = None) -> None:
        if self._closing:
            log.info("MQTT: disconnected (gateway stopping)")
        elif self.connected:
            log.warning("MQTT: connection lost (%s); spooling until it is back", reason)
            short = time.monotonic() - self._up_since < SHORT_LIVED
            self._short_lived = self._short_lived + 1 if short else 0
            fix = "set [mqtt].client_id, or delete data_dir/install-id on the copy so it draws its own"
            if code == TAKEN_OVER:
                log.error("MQTT: the broker gave client id %r to another connection (session taken over): another "
                          "gateway, or a copy of this data_dir, uses the same id; %s", self.client_id, fix)
            elif self._short_lived == SHORT_LIVED_IN_A_ROW:  # once per episode
                log.error("MQTT: the broker closed %d connections in a row right after they were made: is client id "
                          "%r taken over by another client (another gateway, or a copy of this data_dir)? %s",
                          SHORT_LIVED_IN_A_ROW, self.client_id, fix)
        self.connected = False
        self._requeue()
        self._lost.set()

    def _requeue(self) -> None:
        """What the fast lane sent and was not acknowledged, and what waited for its window, is sent
        again after the next connection (spooled first, ahead of anything newer; at least once).
        paho keeps its own unacknowledged messages and sends them after a reconnect."""
        if self.lane is not None:
            unsent = self.lane.requeue()
            if unsent:
                self._unsent += unsent
                self.wake()
        self._published = self._acked
        self._room.set()

    def take_unsent(self) -> list[Message]:
        unsent, self._unsent = self._unsent, []
        return unsent

    # -- delivery ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.connected

    def encode(self, record: Record) -> list[Message]:
        if type(record) is ChargerForgotten:
            patterns = sweep_filters(self.base, self.cfg.ha_prefix, self.encoder.site_id, record.charger_id)
            # once the encoder's own clearing messages are out (they go first, through the worker)
            self._loop.call_later(SWEEP_DELAY, self._sweep, patterns)
        return self.encoder.encode(record)

    def _sweep(self, patterns: list[str]) -> None:
        if not self.connected:
            log.info("MQTT: not connected; retained topics of a forgotten charger from earlier runs stay")
            return
        self.sweeps.start(patterns)
        self._loop.call_later(SWEEP_SECONDS, self.sweeps.stop, patterns)

    async def deliver(self, items: list[Message]) -> bool:
        if not self.connected:
            return False
        lane = self.lane
        if lane is None:
            return await self._deliver_paho(items)
        while len(lane.backlog) > BACKLOG and self.connected:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._room.wait()
        if not self.connected:
            return False
        lane.backlog.extend(items)
        self._pump()
        return True

    def _pump(self) -> None:
        """Send what waits on the fast lane, as far as its window allows, in one write."""
        lane = self.lane
        if lane is None or not self.connected:
            return
        wrote = lane.pump()
        if len(lane.backlog) <= BACKLOG:
            self._room.set()
        if wrote:
            self._writable()

    async def _deliver_paho(self, items: list[Message]) -> bool:
        # let paho catch up before handing it more
        while not await _poll(lambda: self._published - self._acked <= MAX_OUTSTANDING or not self.connected, 1.0):
            pass
        if not self.connected:
            return False
        for m in items:
            info = self.client.publish(m[0], m[1], qos=self.qos, retain=m[2])
            self._published += 1
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self._acked += 1  # never handed over: nothing will acknowledge it
                log.warning("MQTT: publish to %s refused: %s", m[0], paho.error_string(info.rc))
        # QoS 1/2 messages published as the connection dropped (rc NO_CONN) stay in paho's queue and are
        # sent after the reconnect, ahead of the spool.
        return True

    def pack(self, item: Message) -> bytes:
        return orjson.dumps([item[0], item[2], item[1].decode("utf-8")])

    def unpack(self, body: bytes) -> Message:
        topic, retain, payload = orjson.loads(body)
        return (topic, payload.encode("utf-8"), bool(retain))

    # -- command results --------------------------------------------------------------------------

    def _reply(self, topic: str, correlation: bytes | None, result: dict[str, Any]) -> None:
        props = None
        if self.v5 and correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        self.client.publish(topic, orjson.dumps(result), qos=self.qos, retain=False, properties=props)


async def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait until `condition()` holds, for at most `timeout` s; whether it holds. paho offers no
    event to wait on for these (its acknowledgements, its socket closing), so it is polled."""
    for _ in range(max(1, round(timeout / POLL))):
        if condition():
            return True
        await asyncio.sleep(POLL)
    return condition()
