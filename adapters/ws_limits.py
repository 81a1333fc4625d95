"""Limits of the charger-facing WebSocket port that the `websockets` library does not have: how
many bytes all connections together may hold in messages the relay has not taken yet, how long a
begun message may take, and how many handshakes and connections one address may hold.

Why (docs/security.md, "Hostile input"): a message is kept in memory until its last fragment
arrives, inflated when compressed, so 300 connections that never finish a 1 MiB message held
300 MB for 364 kB sent; and 1000 half-open handshakes from one address used up `max_connections`
for everyone.

- **Bytes held** (`Budget`): per connection, what its socket delivered and the relay has not taken:
  the raw bytes of a frame still arriving, the (inflated) fragments of an unfinished message, and
  whole messages waiting for the relay. A connection's unfinished message is at most
  `max_frame_size` (websockets' `max_size`, checked on the inflated size); all connections
  together hold at most `[websocket].max_buffered_bytes` (64 MiB). Data is fed to websockets in
  4 KiB slices, each only while the budget has room for a whole message; otherwise the fattest
  connection of the address holding the most is closed with 1013 and the data waits (reading
  paused) until that memory is released. An address that holds nothing goes first.
- **Deadline**: a message must be complete `message_timeout` seconds after its first byte
  (or after the previous message completed), else its connection is closed with 1008 - unless the
  relay itself is behind (messages of that connection are still waiting to be taken).
- **Per address** (`Admission`; an IPv6 address counts by its /64; not for addresses in
  `[websocket].unlimited_networks`, by default loopback: a reverse proxy on the gateway host, behind
  which every charger has the proxy's address, and local tools): at most
  `max_handshakes_per_address` connections still in their opening handshake (more are dropped at
  once, before a byte is read), and at most `max_connections_per_address` open connections of
  charger ids without a `[chargers.ID]` entry (503). Configured charger ids are never refused for
  the count: that capacity is reserved for them (`max_connections` counts only the others).

Everything that touches websockets' internals is in `GuardedConnection`, a `ServerConnection`
subclass given to `serve(create_connection=...)`; its overrides are the asyncio protocol callbacks
(`connection_made`, `data_received`, `connection_lost`), `process_event` (where websockets hands
frames to its assembler) and `recv`. The one private attribute read is the Sans-I/O protocol's
input buffer (`protocol.reader.buffer`, the bytes of a frame not yet complete), in `_raw()`.
Checked against websockets 17.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections import deque
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.typing import Data

from gateway.config import Settings
from gateway.security import address_group

log = logging.getLogger("gateway.websocket")

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
TARPIT = 2.0  # s (on average) a connection refused at once is held (unread) before it is closed
TARPIT_MAX = 2000  # connections held so at most; beyond, refused ones are closed at once
SLICE = 4096  # bytes fed to websockets at a time (deflate inflates at most ~1000:1: a few MiB per slice)
_jitter = random.Random()


class Admission:
    """Handshakes and open connections per address group, and the totals."""

    def __init__(self, settings: Settings) -> None:
        ws = settings.websocket
        self.max_handshakes = ws.max_handshakes_per_address
        self.max_per_address = ws.max_connections_per_address
        self.unlimited = [ipaddress.ip_network(n, strict=False) for n in ws.unlimited_networks]
        self.max_total = ws.max_connections
        self.configured = frozenset(settings.chargers)
        self.handshakes: dict[str, int] = {}
        self.unknown_open: dict[str, int] = {}  # open connections of ids without a [chargers.ID] entry
        self.handshaking = 0
        self.open_unknown = 0
        self.refused = 0
        self.tarpitted = 0
        self._logged = -1e9

    def exempt(self, peer: str) -> bool:
        """Is `peer` in `[websocket].unlimited_networks` (not limited per address)?"""
        try:
            ip = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.unlimited)

    def start_handshake(self, group: str, limited: bool = True) -> bool:
        """A TCP connection arrived: False when it must be dropped at once."""
        # open connections are counted once the id is known (503 then); room is kept for the
        # configured chargers, whose ids are known only once the request is read
        if limited and self.handshakes.get(group, 0) >= self.max_handshakes \
                or self.handshaking >= self.max_total + len(self.configured):
            self.refused += 1
            self._log(f"{group} holds {self.handshakes.get(group, 0)} unfinished handshakes "
                      f"(max_handshakes_per_address {self.max_handshakes}; {self.handshaking} in all)")
            return False
        self.handshakes[group] = self.handshakes.get(group, 0) + 1
        self.handshaking += 1
        return True

    def tarpit(self, transport: asyncio.Transport) -> None:
        """Hold a refused connection (unread) for about TARPIT seconds, at most TARPIT_MAX at once."""
        if self.tarpitted >= TARPIT_MAX:
            transport.abort()
            return
        self.tarpitted += 1
        transport.pause_reading()

        def release() -> None:
            self.tarpitted -= 1
            transport.abort()

        # spread out: released together, a flood would re-open together and fill the accept queue again
        asyncio.get_running_loop().call_later(_jitter.uniform(0.5, 1.5) * TARPIT, release)

    def end_handshake(self, group: str) -> None:
        n = self.handshakes.get(group, 0) - 1
        if n > 0:
            self.handshakes[group] = n
        else:
            self.handshakes.pop(group, None)
        self.handshaking -= 1

    def may_open(self, group: str, charger_id: str, limited: bool = True) -> str | None:
        """None when this id may open a connection from this address, else why not."""
        if charger_id in self.configured:
            return None  # reserved: configured chargers always get in
        if limited and self.unknown_open.get(group, 0) >= self.max_per_address:
            return f"max_connections_per_address ({self.max_per_address}) reached for {group}"
        if self.open_unknown + self.handshaking >= self.max_total:
            return f"max_connections ({self.max_total}) reached"
        return None

    def opened(self, group: str, charger_id: str) -> bool:
        if charger_id in self.configured:
            return False
        self.unknown_open[group] = self.unknown_open.get(group, 0) + 1
        self.open_unknown += 1
        return True

    def closed(self, group: str) -> None:
        n = self.unknown_open.get(group, 0) - 1
        if n > 0:
            self.unknown_open[group] = n
        else:
            self.unknown_open.pop(group, None)
        self.open_unknown -= 1

    def _log(self, what: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._logged > 10:  # a flood must not flood the log
            self._logged = now
            log.warning("dropped a new connection: %s; %d dropped so far", what, self.refused)


class Holder(Protocol):
    """A connection as the `Budget` sees it (`GuardedConnection` here; the picows server's
    connections in adapters/picows_link.py)."""

    peer: str
    group: str
    held: int  # what it holds now (counted in the budget)

    def drop(self, code: int, reason: str) -> None:
        """Close now (aborted) and stop counting what it holds."""

    def resume(self) -> None:
        """The budget has room again: go on with what waited."""


class Budget:
    """Bytes held by all connections together in messages the relay has not taken.

    `held` is what live connections hold; `releasing` what closed ones held until their handler has
    let go of it (the loop iteration after the socket is gone). New data is inflated only while
    `cap - held - releasing` has room for a whole message (`max_frame_size`); otherwise the fattest
    connection of the address holding the most is closed, and the data waits (reading paused) until
    memory is released. An address that holds (almost) nothing goes on as long as there is any room,
    and waiting connections go on by address, those of addresses holding least first: a device that
    fills the budget delays itself, not the others. The total stays within `cap` plus one slice."""

    def __init__(self, cap: int, max_frame: int) -> None:
        self.cap = cap
        self.max_frame = min(max_frame, cap)
        self.held = 0
        self.releasing = 0
        self.peak = 0
        self.evicted = 0
        self.by_group: dict[str, set[Holder]] = {}  # holders per address group
        self.group_held: dict[str, int] = {}
        self.waiting: set[Holder] = set()
        self._logged = -1e9

    def change(self, connection: Holder, delta: int) -> None:
        self.held += delta
        group = connection.group
        left = self.group_held.get(group, 0) + delta
        if left > 0:
            self.group_held[group] = left
        else:
            self.group_held.pop(group, None)
        holders = self.by_group.setdefault(group, set())
        if connection.held > 0:
            holders.add(connection)
        else:
            holders.discard(connection)
            if not holders:
                del self.by_group[group]
        self.peak = max(self.peak, self.held + self.releasing)

    def room(self) -> int:
        return self.cap - self.held - self.releasing

    def must_wait(self, connection: Holder) -> bool:
        """Before inflating new data: True when it must wait for memory to be released (the
        fattest connections of the fullest addresses are closed to make room)."""
        if self.room() >= self.max_frame:
            return False
        while self.cap - self.held < self.max_frame and self.by_group:
            group = max(self.group_held, key=self.group_held.__getitem__)
            fattest = max(self.by_group[group], key=lambda c: c.held)
            self.evicted += 1
            now = asyncio.get_running_loop().time()
            if now - self._logged > 10:
                self._logged = now
                log.warning("WebSocket connections hold %d bytes of unread messages, max_buffered_bytes is %d: "
                            "closing the ones that hold the most (from %s: %d bytes; %d closed so far)",
                            self.held + self.releasing, self.cap, fattest.peer, fattest.held, self.evicted)
            fattest.drop(CloseCode.TRY_AGAIN_LATER, "gateway busy: too much unread data")
        room = self.room()
        if room >= self.max_frame:
            return False
        return not (room > 0 and self.group_held.get(connection.group, 0) <= SLICE)  # an address holding nothing

    def release(self, amount: int) -> None:
        """Memory of a closed connection is free now: waiting connections may go on."""
        self.releasing -= amount
        loop = asyncio.get_running_loop()
        for _ in range(max(1, self.room() // self.max_frame) if self.room() > 0 else 0):
            if not self.waiting:
                break
            first = min(self.waiting, key=lambda c: (self.group_held.get(c.group, 0), c.held))
            self.waiting.discard(first)
            loop.call_soon(first.resume)


class GuardedConnection(ServerConnection):
    """A charger connection under the gateway's limits (see the module docstring). The class is
    made per server by `connection_class()`, which binds its `admission`, `budget` and settings."""

    admission: Admission
    budget: Budget
    message_timeout: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = "?"
        self.group = "?"
        self.held = 0  # what this connection holds now (counted in the budget)
        self._partial = 0  # inflated bytes of the unfinished message's fragments
        self._waiting: deque[int] = deque()  # sizes of whole messages the relay has not taken
        self._waiting_bytes = 0
        self._handshaking = False
        self._counted_open = False
        self._deadline: asyncio.TimerHandle | None = None
        self._dropped = False
        self._stash: list[bytes] = []  # data waiting for room in the budget (reading paused)
        self._paused = False
        self._releasing = 0  # what this connection held when it was closed, until released
        self._refused = False  # dropped at once in connection_made
        self._limited = True  # subject to the per-address limits (not in unlimited_networks)

    # -- keepalive ---------------------------------------------------------------------------------

    async def keepalive(self) -> None:
        """Keepalive pings start after a random part of the first interval. websockets pings each
        connection `ping_interval` after it opened, so chargers that reconnected together after an
        outage would otherwise all be pinged in the same instant, every interval, for ever (seen
        stalling the relay for ~0.1 s at 1000 chargers in bench/relay.py)."""
        assert self.ping_interval is not None
        await asyncio.sleep(_jitter.uniform(0, self.ping_interval))
        await super().keepalive()

    # -- admission ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        self.group = address_group(self.peer)
        self._limited = not self.admission.exempt(self.peer)
        if not self.admission.start_handshake(self.group, self._limited):
            # refused before websockets starts a handler for it: nothing read or answered. Held open
            # (unread) for a while first, so that a flood re-opening whatever is closed cannot cycle
            # connections fast enough to fill the accept queue and keep other chargers' SYNs out
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            self.admission.tarpit(transport)
            return
        self._handshaking = True
        super().connection_made(transport)

    def handshake_passed(self, charger_id: str) -> str | None:
        """Called by the server when the request is accepted; None, or why it must be refused."""
        self._end_handshake()
        why = self.admission.may_open(self.group, charger_id, self._limited)
        if why is None:
            self._counted_open = self.admission.opened(self.group, charger_id)
        return why

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # dropped in connection_made: websockets never saw it
        if self._handshaking:
            self._handshaking = False
            self.admission.end_handshake(self.group)
        if self._counted_open:
            self._counted_open = False
            self.admission.closed(self.group)
        self._cancel_deadline()
        self._forget()
        super().connection_lost(exc)
        # the handler lets go of the frames when it wakes up (scheduled by super()); then count them free
        amount, self._releasing = self._releasing, 0
        if amount:
            asyncio.get_running_loop().call_soon(self.budget.release, amount)

    def _end_handshake(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self.admission.end_handshake(self.group)

    # -- bytes held --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # fed to websockets in slices: one read of compressed data can hold many messages, each
        # inflating up to max_frame_size; between slices the budget is checked again
        if self._stash:  # data is already waiting: keep the order
            self._wait(data)
            return
        for start in range(0, len(data), SLICE):
            if self.budget.must_wait(self):
                if not self._dropped:
                    self._wait(data[start:])
                return
            super().data_received(data[start:start + SLICE])
            self._account()
            if self._dropped:
                return

    def _wait(self, data: bytes) -> None:
        self._stash.append(data)  # raw bytes wait, uninflated (counted), with reading paused
        # paused again each time: websockets' own flow control may have resumed reading meanwhile
        self.transport.pause_reading()
        if not self._paused:
            self._paused = True
            self.budget.waiting.add(self)
        self._account()
        if self.budget.room() < 0:
            self.budget.must_wait(self)  # over the cap by waiting data: the fattest go

    def resume(self) -> None:
        """The budget has room again: inflate what waited, read on."""
        if self._dropped or not self._paused:
            return
        self._paused = False
        data, self._stash = b"".join(self._stash), []
        self.transport.resume_reading()
        self._account()
        self.data_received(data)

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in _DATA:
            if event.fin:
                size = self._partial + len(event.data)
                self._partial = 0
                self._waiting.append(size)
                self._waiting_bytes += size
                self._cancel_deadline()  # progress: a message was completed
            else:
                self._partial += len(event.data)
        super().process_event(event)

    async def recv(self, decode: bool | None = None) -> Data:  # type: ignore[override]
        message = await super().recv(decode)
        if self._waiting:
            self._waiting_bytes -= self._waiting.popleft()
            self._account()
        return message

    def _raw(self) -> int:
        # websockets internals (Sans-I/O protocol): bytes received but not yet a whole frame
        reader = getattr(self.protocol, "reader", None)
        buffer = getattr(reader, "buffer", b"")
        return len(buffer) + sum(len(d) for d in self._stash)

    def _account(self) -> None:
        transport = getattr(self, "transport", None)
        unfinished = 0 if self._dropped or transport is None else self._raw() + self._partial
        held = unfinished + self._waiting_bytes
        delta, self.held = held - self.held, held
        if unfinished and self._deadline is None and self.message_timeout > 0:
            self._deadline = asyncio.get_running_loop().call_later(self.message_timeout, self._late)
        elif not unfinished:
            self._cancel_deadline()
        if delta:
            self.budget.change(self, delta)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self._waiting_bytes or self._paused:  # the relay (or the budget) is behind, not the charger
            self._deadline = asyncio.get_running_loop().call_later(self.message_timeout, self._late)
            return
        log.warning("connection from %s: a message not finished within message_timeout (%g s); closing it",
                    self.peer, self.message_timeout)
        self.drop(CloseCode.POLICY_VIOLATION, "message not finished in time")

    def drop(self, code: int, reason: str) -> None:
        """Close now, and forget what this connection holds (its memory goes when the socket does)."""
        if self._dropped:
            return
        self._dropped = True
        if self.protocol.state is State.OPEN:
            self.protocol.fail(code, reason)
            self.send_data()  # written at once unless the peer's window is full: then the peer gets no code
        # aborted, not closed: the socket and all this connection holds go now, not after a peer
        # that may never read has taken the close frame
        self.transport.abort()
        self._forget()

    def _forget(self) -> None:
        """Stop counting what this connection holds as held: it is being released."""
        self._dropped = True
        self.budget.waiting.discard(self)
        self._releasing += self.held
        self.budget.releasing += self.held
        self._partial = 0
        self._stash = []
        self._waiting.clear()
        self._waiting_bytes = 0
        self._account()


def connection_class(settings: Settings) -> tuple[type[GuardedConnection], Admission, Budget]:
    """A `GuardedConnection` class bound to one server's limits."""
    ws = settings.websocket
    admission, budget = Admission(settings), Budget(ws.max_buffered_bytes, ws.max_frame_size)
    cls = type("ChargerConnection", (GuardedConnection,),
               {"admission": admission, "budget": budget, "message_timeout": ws.message_timeout})
    return cls, admission, budget
