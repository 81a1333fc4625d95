"""The fast publishing path: QoS 0 and 1 PUBLISH packets framed here and written on paho's socket.

Why: going through `Client.publish` cost about 30 us per message (a message object with a lock and
a condition, its queue scanned on each acknowledgement, an MQTT 5 properties object per PUBACK):
several times the relay's own work per MeterValues. Here a message is a few bytes appended to one
buffer, written with one `send` per event-loop callback, and its PUBACK is taken off the incoming
stream before paho reads it. paho still runs the connection: CONNECT, keepalive, subscriptions,
commands, the gateway state and QoS 2.

The price is paho internals, and this module is the only place that touches them (each use says
why). With `[mqtt].fast_publish = false` the sink publishes through `Client.publish` and none of
this is used (adapters/mqtt/driver.py):
- `client._sock` is replaced by a `BatchedSocket` around the real socket: paho keeps no other
  reference to the socket it writes to, and there is no public hook to wrap it;
- `client._last_mid` / `client._mid_generate_mutex`: the packet ids come from paho's own sequence
  (under its lock) so they never clash with paho's own QoS 1 messages; `_mid_generate()` is the
  fallback if those attributes change;
- `client._out_messages`: paho's own unacknowledged QoS 1/2 messages share the broker's Receive
  Maximum with the window here.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import ssl
import struct
from typing import Any, Callable

import paho.mqtt.client as paho

log = logging.getLogger("gateway.telemetry.mqtt")

WINDOW = 500  # QoS 1 PUBLISH packets sent and not yet acknowledged (lowered to the broker's Receive Maximum)

# One message to publish: (topic, payload, retain). A plain tuple, not a named tuple: thousands wait
# in the queue and the window at a time, and the garbage collector stops tracking a plain tuple of
# strings and bytes the first time it sees one (it keeps scanning a named tuple for as long as it lives).
Message = tuple[str, bytes, bool]


@functools.lru_cache(maxsize=65536)
def _topic_field(topic: str) -> bytes:
    """A topic name as it goes in a PUBLISH packet: two length bytes, then UTF-8 (MQTT 3.1.1 §1.5.3)."""
    data = topic.encode("utf-8")
    if not data or len(data) > 65535 or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"not a topic name a client may publish to: {topic!r}")
    return len(data).to_bytes(2, "big") + data


# A read that holds nothing but PUBACKs that succeeded: each just a packet id (4 bytes: 0x40, 0x02,
# id), or an id and a reason code below 0x80 (5 bytes: MQTT 5; Mosquitto answers 0x10, "no matching
# subscribers", for a topic nobody subscribes to, which is most of the telemetry on a quiet site)
_ACKS_ONLY = re.compile(rb"(?:\x40\x02..|\x40\x03..[\x00-\x7f])+", re.S)


@functools.lru_cache(maxsize=1024)
def _pubacks_format(count: int, size: int) -> struct.Struct:
    """`count` PUBACKs of `size` bytes each (4: 0x40, 0x02, id; 5: 0x40, 0x03, id, reason): their ids."""
    return struct.Struct(">" + ("2xH" if size == 4 else "2xHx") * count)


def remaining_length(n: int) -> bytes:
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
        out += remaining_length(size)
    out += tf
    if qos:
        out += mid.to_bytes(2, "big")
    if v5:
        out.append(0)
    out += payload


class BatchedSocket:
    """paho's socket, with writes gathered and reads buffered.

    paho sends every MQTT packet with its own `send()` and reads each incoming packet in three or
    more `recv()` calls (command byte, length bytes, body). Behind a busy relay that is several
    system calls per message. This wrapper keeps what paho "sends" until the end of the event-loop
    callback (`flush`, one `send` for all of it) and serves paho's small reads from one large
    `recv`. Everything else is delegated to the real socket."""

    def __init__(self, sock: Any, take_puback: Callable[[int, int], bool] | None = None,
                 take_pubacks: Callable[[tuple[int, ...]], list[int]] | None = None) -> None:
        self._sock = sock
        self.out = bytearray()  # gathered, not yet written
        self.incoming = bytearray()  # whole packets for paho
        self._raw = bytearray()  # read from the socket, not yet split into packets
        self._take_puback = take_puback  # (packet id, reason code) of a PUBACK -> True when it was the sink's
        self._take_pubacks = take_pubacks  # packet ids of successful PUBACKs -> the ids that were not the sink's

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.out += data
        return len(data)

    def flush(self) -> bool:
        """Write what is gathered; True when all of it went. Raises OSError when the link is dead."""
        while self.out:
            try:
                sent = self._sock.send(self.out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            del self.out[:sent]
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
        if not self.incoming:
            data = self._sock.recv(65536)  # BlockingIOError / SSLWantReadError reach paho as before
            if not data:
                return b""
            self._split(data)
            if not self.incoming:  # only acknowledgements of the sink's own messages, or part of a packet
                raise BlockingIOError
        chunk = bytes(self.incoming[:size])
        del self.incoming[:size]
        return chunk

    def _split(self, data: bytes) -> None:
        """Cut what arrived into MQTT packets: a PUBACK of one of the sink's own PUBLISHes is
        consumed here (paho never sent it and would ignore it); everything else goes to paho whole."""
        raw = self._raw
        raw += data
        take = self._take_pubacks
        if take is not None and raw[0] == 0x40 and _ACKS_ONLY.fullmatch(raw):
            # nothing but successful PUBACKs, as behind a steady stream of QoS 1 telemetry: in one go
            self._acks_only(raw, take)
            raw.clear()
            return
        self._packets(raw)

    def _acks_only(self, raw: bytearray, take: Callable[[tuple[int, ...]], list[int]]) -> None:
        """A read of successful PUBACKs only (`_ACKS_ONLY`): the sink takes its own in one call,
        paho gets the others whole."""
        n = len(raw)
        for size in (4, 5):  # all of one size (every packet's second byte 2, or every one 3): one struct call
            count = n // size
            if count * size == n and raw[1::size].count(size - 2) == count:
                mids = _pubacks_format(count, size).unpack(raw)
                break
        else:  # both sizes (MQTT 5 with some topics subscribed to): walk the lengths
            found, i = [], 0
            while i < n:
                found.append(raw[i + 2] << 8 | raw[i + 3])
                i += raw[i + 1] + 2
            mids = tuple(found)
        others = take(mids)
        if others:  # paho's own: the packets as they came (its QoS 1 messages, rare)
            wanted, i = set(others), 0
            while i < n:
                end = i + raw[i + 1] + 2
                if raw[i + 2] << 8 | raw[i + 3] in wanted:
                    self.incoming += raw[i:end]
                i = end

    def _packets(self, raw: bytearray) -> None:
        """Packet by packet: a PUBACK of the sink's own taken here, everything else kept for paho."""
        take = self._take_puback
        n, i = len(raw), 0
        while i + 2 <= n:
            if raw[i] == 0x40 and raw[i + 1] == 2 and i + 4 <= n and take is not None:
                # the common packet by far: a PUBACK with just its packet id (success)
                if not take(raw[i + 2] << 8 | raw[i + 3], 0):
                    self.incoming += raw[i:i + 4]
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
                self.incoming += raw[i:end]
            i = end
        del raw[:i]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self.incoming) + (inner() if inner else 0)

    def close(self) -> None:
        try:
            self.flush()  # e.g. a DISCONNECT paho queued just before closing
        except OSError:
            pass
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastLane:
    """The QoS 0/1 window of the sink's own PUBLISH packets on paho's connection.

    `backlog` holds messages waiting for room; `window` the QoS 1 messages sent and not yet
    acknowledged (packet id -> message). The driver calls `attach` when paho opens its socket,
    `pump` to send, `requeue` when the connection went."""

    def __init__(self, client: paho.Client, qos: int, v5: bool) -> None:
        self.client = client
        self.qos = qos
        self.v5 = v5
        self.sock: BatchedSocket | None = None
        self.window: dict[int, Message] = {}
        self.backlog: collections.deque[Message] = collections.deque()
        self.limit = WINDOW
        self.refill = WINDOW // 4
        self.published = 0
        self.acked = 0
        self.refused = 0  # PUBLISHes the broker acknowledged with an error reason code (MQTT 5)
        self._heads: dict[str, tuple[Callable[..., bytes], int, bytes]] = {}  # topic -> `_head`

    def attach(self, sock: Any) -> BatchedSocket | None:
        """Wrap the socket paho just opened; None when paho closed it again meanwhile."""
        if self.client._sock is not sock:  # paho internal: see the module docstring
            return None
        wrapped = BatchedSocket(sock, self.puback, self.pubacks)
        self.client._sock = wrapped  # paho internal: paho keeps no other reference to the socket it writes to
        self.sock = wrapped
        return wrapped

    def detach(self) -> None:
        self.sock = None

    def receive_maximum(self, receive_maximum: int | None) -> None:
        # MQTT 5: the broker says how many QoS 1/2 messages it takes unacknowledged; paho's own
        # (the gateway state, command results) share that room
        self.limit = max(1, min(WINDOW, (receive_maximum or WINDOW) - 4))
        # room that makes a refill worth a write: with a small window (Mosquitto by default) every
        # acknowledgement counts; waiting for four at a time dropped ~97 % of the records under
        # bench.telemetry (acknowledgements come one or two per read)
        self.refill = 1 if self.limit < 50 else self.limit // 4

    def has_room(self) -> bool:
        """Acknowledgements made enough room for a refill."""
        return bool(self.backlog) and len(self.window) <= self.limit - self.refill

    def requeue(self) -> list[Message]:
        """What was sent and not acknowledged, and what waited for the window (to be spooled and
        sent again after the next connection; at least once)."""
        unsent = [*self.window.values(), *self.backlog]
        self.window.clear()
        self.backlog.clear()
        self.published = self.acked
        return unsent

    def puback(self, mid: int, reason: int) -> bool:
        """A PUBACK arrived: True if it was for one of the sink's messages."""
        message = self.window.pop(mid, None)
        if message is None:
            return False  # paho's own (or one given up on): paho handles it
        self.acked += 1
        if reason >= 0x80:  # MQTT 5 reason code: refused (not authorised, quota exceeded, ...)
            self.refused += 1
            log.warning("MQTT: the broker refused a message to %s (reason code 0x%02X)", message[0], reason)
        return True

    def pubacks(self, mids: tuple[int, ...]) -> list[int]:
        """Successful PUBACKs, many at once: the ids that were not the sink's (paho's own)."""
        pop = self.window.pop
        others = [mid for mid in mids if pop(mid, None) is None]
        self.acked += len(mids) - len(others)
        return others

    def next_mids(self, count: int) -> list[int]:
        """`count` packet ids from paho's own sequence (so they never clash with paho's messages),
        taken under its lock once rather than once per message."""
        client = self.client
        lock = getattr(client, "_mid_generate_mutex", None)  # paho internal: see the module docstring
        if lock is None or not isinstance(getattr(client, "_last_mid", None), int):
            return [client._mid_generate() for _ in range(count)]  # paho changed: one at a time
        with lock:
            last = client._last_mid
            mids = [(last + j) % 65535 + 1 for j in range(count)]  # 1 .. 65535, never 0
            client._last_mid = mids[-1]
        return mids

    def pump(self) -> bool:
        """Frame what waits, as far as the window allows, onto the socket's buffer (the caller
        writes it). True when there is something to write."""
        sock = self.sock
        if sock is None:
            return False
        backlog, window, v5 = self.backlog, self.window, self.v5
        out = sock.out
        if self.qos == 0:
            while backlog:
                m = backlog.popleft()
                try:
                    write_publish(out, m[0], m[1], 0, m[2], 0, v5)
                except ValueError as exc:
                    log.warning("MQTT: not published: %s", exc)
                    continue
                self.published += 1
                self.acked += 1
        else:
            # paho internal `_out_messages`: paho's own QoS 1/2 messages in flight share the room
            room = min(self.limit - len(self.client._out_messages) - len(window), len(backlog))
            if room > 0:
                sent = 0
                heads = self._heads
                for mid in self.next_mids(room):
                    m = backlog.popleft()
                    topic, payload, retain = m
                    head = heads.get(topic)
                    if head is None:
                        try:
                            head = self._head(topic)
                        except ValueError as exc:  # (that id goes unused)
                            log.warning("MQTT: not published: %s", exc)
                            continue
                    size = head[1] + len(payload)
                    if 128 <= size < 16384:  # the usual telemetry message: write_publish's framing, inline
                        out += head[0](0x32 | retain, size & 0x7F | 0x80, size >> 7, head[2], mid)
                        out += payload
                    else:
                        write_publish(out, topic, payload, 1, retain, mid, v5)
                    window[mid] = m
                    sent += 1
                self.published += sent
        return bool(out)

    def _head(self, topic: str) -> tuple[Callable[..., bytes], int, bytes]:
        """How a QoS 1 PUBLISH to `topic` with a two-byte remaining length starts (remembered per
        topic): a struct's pack(first byte, the two length bytes, topic field, packet id) with
        MQTT 5's empty property list as a fixed zero byte (one call: about two thirds of a bytes
        format's cost), the bytes of the remaining length that are not payload, the topic field."""
        heads = self._heads
        if len(heads) >= 16384:
            heads.clear()
        tf = _topic_field(topic)  # ValueError: not a topic a client may publish to
        pack = struct.Struct(f">BBB{len(tf)}sH{'x' if self.v5 else ''}").pack
        head = heads[topic] = (pack, len(tf) + 2 + self.v5, tf)
        return head
