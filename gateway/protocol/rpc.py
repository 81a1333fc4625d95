"""One outstanding CALL per direction, as data.

`CallQueue` holds the CALLs waiting to go to one peer (a charger, or the CSMS on the charger's
behalf). At most one is in flight; the rest wait in FIFO order, bounded. Deadlines are data: the
owner asks `next_deadline()`, sleeps until then, and calls `expire(now)`. Nothing here reads a clock
or touches a socket.

Who originated a call (the CSMS, the gateway itself, an operator) is an opaque `origin` value that
comes back with the reply, so the owner can route the answer (and never forwards the answers to
its own calls: J201 §6.4).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ProtocolError


class QueueFull(ProtocolError):
    """The queue is at its bound; the caller must refuse the call with a clear error."""


@dataclass(slots=True, kw_only=True)
class PendingCall:
    message_id: str
    action: str
    frame: str  # the text to send
    origin: Any = None
    timeout: float = 30.0
    deadline: float | None = None  # set when the call is sent
    queued_at: float = 0.0
    sent_at: float | None = None
    # Calls that must not wait behind a disconnected peer forever: expire also while queued.
    queue_deadline: float | None = None
    request: Any = None  # the parsed payload, for observers
    source: Any = None  # the frame as it first arrived (when `frame` is a rewrite of it)
    received_at: Any = None  # wall-clock time it arrived (a datetime), for observers


@dataclass(slots=True)
class CallQueue:
    max_queued: int = 100
    queued: list[PendingCall] = field(default_factory=list)  # a list: an empty deque costs 600 bytes
    in_flight: PendingCall | None = None
    paused: bool = False  # e.g. the peer is not connected: queue, do not send

    def __len__(self) -> int:
        return len(self.queued) + (1 if self.in_flight else 0)

    def submit(self, call: PendingCall, now: float) -> PendingCall | None:
        """Queue a call. Returns the call to send now, if the line is free."""
        if len(self.queued) >= self.max_queued:
            raise QueueFull(f"{len(self.queued)} calls already waiting")
        call.queued_at = now
        if call.queue_deadline is None:
            call.queue_deadline = now + call.timeout
        self.queued.append(call)
        return self._next(now)

    def _next(self, now: float) -> PendingCall | None:
        if self.in_flight is not None or self.paused or not self.queued:
            return None
        call = self.queued.pop(0)
        call.sent_at = now
        call.deadline = now + call.timeout
        self.in_flight = call
        return call

    def resume(self, now: float) -> PendingCall | None:
        self.paused = False
        return self._next(now)

    def pause(self) -> PendingCall | None:
        """Stop sending; the call in flight (if any) is returned to the owner as lost."""
        self.paused = True
        lost, self.in_flight = self.in_flight, None
        return lost

    def matches(self, message_id: str) -> bool:
        return self.in_flight is not None and self.in_flight.message_id == message_id

    def complete(self, message_id: str, now: float) -> tuple[PendingCall | None, PendingCall | None]:
        """A reply arrived. Returns (the call it answers or None if unexpected, the next call to send)."""
        if not self.matches(message_id):
            return None, None
        done, self.in_flight = self.in_flight, None
        return done, self._next(now)

    def next_deadline(self) -> float | None:
        deadlines = [c.queue_deadline for c in self.queued if c.queue_deadline is not None]
        if self.in_flight is not None and self.in_flight.deadline is not None:
            deadlines.append(self.in_flight.deadline)
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> tuple[list[PendingCall], PendingCall | None]:
        """Time out the call in flight and queued calls past their deadline.

        Returns (the calls that timed out, the next call to send)."""
        expired: list[PendingCall] = []
        if self.in_flight is not None and self.in_flight.deadline is not None and self.in_flight.deadline <= now:
            expired.append(self.in_flight)
            self.in_flight = None
        if any(c.queue_deadline is not None and c.queue_deadline <= now for c in self.queued):
            keep: list[PendingCall] = []
            for c in self.queued:
                (expired if c.queue_deadline is not None and c.queue_deadline <= now else keep).append(c)
            self.queued = keep
        return expired, self._next(now)

    def remove_queued(self, predicate: Any) -> list[PendingCall]:
        """Take the waiting (not in-flight) calls that match out of the queue."""
        taken = [c for c in self.queued if predicate(c)]
        if taken:
            self.queued = [c for c in self.queued if not predicate(c)]
        return taken

    def drain(self) -> list[PendingCall]:
        """Remove and return everything (the session is closing)."""
        out = ([self.in_flight] if self.in_flight else []) + list(self.queued)
        self.in_flight = None
        self.queued.clear()
        return out


class MessageIds:
    """Ids for calls the gateway originates: a fixed prefix the CSMS does not use, a per-process
    random part and a counter, so they are unique across reconnects and restarts (2.0.1 errata
    2023-12) and at most 36 characters."""

    def __init__(self, token: str) -> None:
        self._prefix = f"gw-{token[:12]}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    def owns(self, message_id: str) -> bool:
        return message_id.startswith(self._prefix)
