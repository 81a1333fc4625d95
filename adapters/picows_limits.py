"""The limits of a picows charger connection (adapters/picows_link.py): reading paused and why, the
bytes it holds in the gateway's budget (ws_limits.Budget), the deadline to finish a message, and the
keepalive. A mixin of `ChargerConnection`, whose module docstring says what each promises; its
attributes are that class's (declared here for the type checker)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSTransport

if TYPE_CHECKING:
    from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows' stubs
    from adapters.picows_server import PicowsServer

log = logging.getLogger("gateway.websocket")

# why reading is paused (bits): the inbox is full, messages are held (rate, attach), the budget is full
INBOX, HOLD, BUDGET = 1, 2, 4
jitter = random.Random()


def close_code(code: int) -> WSCloseCode:
    try:
        return WSCloseCode(code)
    except ValueError:
        return WSCloseCode.POLICY_VIOLATION


class ConnectionLimits:
    """Reading paused, bytes held, message deadline and keepalive of one connection (see the
    module docstring)."""

    if not TYPE_CHECKING:  # no instance dict (ChargerConnection's slots hold it all); hidden from mypy,
        __slots__ = ()  # which would take the attributes below for slots of this class

    server: PicowsServer
    charger_id: str
    peer: str
    group: str
    held: int
    _loop: asyncio.AbstractEventLoop
    _proto: WSProtocol | None
    _tr: asyncio.Transport | None
    _ws: WSTransport | None
    _pauses: int
    _closed: bool
    _dropped: bool
    _lost: bool
    _received: int
    _consumed: int
    _deferred: int
    _partial: int
    _parts: list[bytes] | None
    _waiting: list[int]
    _waiting_bytes: int
    _held_back: list[tuple[str, int]]
    _deadline: asyncio.TimerHandle | None
    _releasing: int
    _ping_timer: asyncio.TimerHandle | None
    _ping_data: bytes | None
    _heard: float

    def drop(self, code: int, reason: str) -> None:
        """Close now (aborted), and stop counting what this connection holds (ws_limits.Budget)."""
        if self._dropped:
            return
        if not self._closed and self._ws is not None:
            self._ws.send_close(close_code(code), reason.encode())  # out at once unless the peer's window is full
        self._closed = True
        if self._tr is not None:
            self._tr.abort()
        self._forget()

    # -- keepalive -----------------------------------------------------------------------------------------

    def _ping(self) -> None:
        """Ping a charger that has sent nothing for `ping_interval`: any frame from it proves the
        link as a pong does, so a charger that talks is not pinged (no timers, syscalls and bytes
        on its cellular link for nothing). One that went silent is still dropped within
        ping_interval + ping_timeout of its last frame."""
        self._ping_timer = None
        if self._closed or self._ws is None:
            return
        due = self._heard + self.server.ping_interval
        if due > self._loop.time():
            self._ping_timer = self._loop.call_at(due, self._ping)
            return
        self._ping_data = jitter.getrandbits(32).to_bytes(4, "big")
        self._ws.send_ping(self._ping_data)
        self._ping_timer = self._loop.call_later(self.server.ping_timeout, self._no_pong)

    def _pong(self) -> None:
        self._ping_data = None
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        # the pong is a frame: `_heard` is its arrival, the next check one interval after it
        self._ping_timer = self._loop.call_at(self._heard + self.server.ping_interval, self._ping)

    def _no_pong(self) -> None:
        self._ping_timer = None
        log.info("charger %s did not answer a ping within %g s; dropping the connection", self.charger_id,
                 self.server.ping_timeout, extra={"charger_id": self.charger_id})
        self.drop(1011, "keepalive ping timeout")

    # -- reading paused, bytes held (ws_limits.Budget) --------------------------------------------------

    def _pause(self, why: int) -> None:
        if not self._pauses and self._tr is not None and not self._lost:
            self._tr.pause_reading()
        self._pauses |= why

    def _resume(self, why: int) -> None:
        if self._pauses & why:
            self._pauses &= ~why
            if not self._pauses and self._tr is not None and not self._lost:
                self._tr.resume_reading()

    def _defer(self, nbytes: int) -> None:
        self._deferred += nbytes  # unparsed, uninflated (counted), with reading paused
        if not self._pauses & BUDGET:
            self._pause(BUDGET)
            self.server.budget.waiting.add(self)
        self._account()
        if self.server.budget.room() < 0:
            self.server.budget.must_wait(self)  # over the cap by waiting data: the fattest go

    def resume(self) -> None:
        """The budget has room again: parse what waited, read on."""
        if self._dropped or not self._pauses & BUDGET:
            return
        budget = self.server.budget
        if budget.must_wait(self):  # others were let go on first: wait on
            if not self._dropped:
                budget.waiting.add(self)
            return
        nbytes, self._deferred = self._deferred, 0
        self._pauses &= ~BUDGET
        if nbytes and self._proto is not None:
            self._proto.buffer_updated(nbytes)
        if not self._pauses and self._tr is not None and not self._lost:
            self._tr.resume_reading()
        self._account()

    def _account(self) -> None:
        unfinished = 0 if self._dropped else self._received - self._consumed + self._partial
        held = unfinished + self._waiting_bytes
        delta, self.held = held - self.held, held
        timeout = self.server.message_timeout
        if unfinished:
            if self._deadline is None and timeout > 0:
                self._deadline = self._loop.call_later(timeout, self._late)
        elif self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if delta:
            self.server.budget.change(self, delta)

    def _late(self) -> None:
        self._deadline = None
        if self._waiting_bytes or self._pauses:  # the relay (or the budget) is behind, not the charger
            self._deadline = self._loop.call_later(self.server.message_timeout, self._late)
            return
        log.warning("connection from %s: a message not finished within message_timeout (%g s); closing it",
                    self.peer, self.server.message_timeout)
        self.drop(1008, "message not finished in time")

    def _forget(self) -> None:
        """Stop counting what this connection holds as held: it is being released."""
        self._dropped = True
        budget = self.server.budget
        budget.waiting.discard(self)
        self._releasing += self.held
        budget.releasing += self.held
        self._parts = None
        self._partial = 0
        self._deferred = 0
        self._consumed = self._received
        self._waiting.clear()
        self._held_back.clear()
        self._waiting_bytes = 0
        self._account()
