"""The cyclic garbage collector with many long-lived charger sessions.

Each charger session is tens of thousands of bytes of objects that live as long as the charger is
connected (hours to weeks). CPython's collector keeps scanning them: a full collection runs each
time the objects promoted to its oldest generation since the last one exceed a quarter of those
it holds, and it walks every one of them. With a thousand chargers that walk takes 40-100 ms on a
small box, and it comes every few seconds to minutes while frames flow: every message that
arrives meanwhile waits for it (the tail of the relay's added latency).

`HeapKeeper` moves the long-lived objects out of its way: what the start made (`started()`), then
the sessions. Once the chargers that came (or went) have
settled (`settle` seconds without one coming or going, or `longest` seconds after the first one
when they never stop), it makes one full pass (`gc.unfreeze(); gc.collect(); gc.freeze()`): the
garbage is freed, and what lives on (the sessions) goes to the permanent generation, which later
collections skip. Objects whose last reference goes are freed at once as always, frozen or not;
only garbage in reference cycles of a session that ended waits for the next pass.

While chargers keep coming (a site powering up, every charger back after an outage), each full
collection would walk all the sessions so far, again and again: at 5000 chargers 45 of them took
13 s of the 27 s the connections took. So every `burst` sessions that came, what exists is frozen
at once (`gc.freeze()` alone costs nothing); garbage frozen with it is freed by the pass that
follows once they have settled, which unfreezes everything first. A pass runs
only when at least `min_changes` sessions (or a tenth of those it froze last, when more) came or
went since the last one, and at most once per `min_interval` seconds: the cycles it leaves
waiting are bounded by that count, and the pause it costs (one full collection) by that interval.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("gateway.heap")


class HeapKeeper:
    """See the module docstring. `changed(sessions)` as a charger's session connects or ends (with
    how many are connected now)."""

    def __init__(self, *, settle: float = 5.0, longest: float = 60.0, min_changes: int = 20,
                 share: float = 0.1, min_interval: float = 30.0, burst: int = 200) -> None:
        self.settle = settle
        self.burst = burst
        self._unfrozen = 0  # sessions come since the last freeze
        self.longest = longest
        self.min_changes = min_changes
        self.share = share
        self.min_interval = min_interval
        self.sessions = 0  # connected now
        self.changes = 0  # sessions come or gone since the last pass
        self.frozen_sessions = 0  # sessions at the last pass
        self.passes = 0
        self.last_pause_ms = 0.0
        self._first_change = 0.0
        self._last_change = 0.0
        self._last_pass = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def started(self) -> None:
        """The gateway is up (modules, settings, every compiled schema: tens of thousands of
        objects that live as long as the process): into the permanent generation with them. No
        gc.collect() first: that full pass would stall the event loop for as long as the heap is
        big (an embedding process, such as the test runner, may hold a large one)."""
        self._freeze()

    def _freeze(self) -> None:
        gc.freeze()
        self._unfrozen = 0

    def changed(self, sessions: int) -> None:
        if sessions > self.sessions:
            self._unfrozen += sessions - self.sessions
            if self._unfrozen >= self.burst:  # a connect burst: see the module doc
                self._freeze()
        self.sessions = sessions
        now = time.monotonic()
        if not self.changes:
            self._first_change = now
        self.changes += 1
        self._last_change = now
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self.settle, self._check)

    def due(self, now: float) -> float | None:
        """Seconds until a pass may run (0: now); None while too few sessions came or went."""
        if self.changes < max(self.min_changes, int(self.share * self.frozen_sessions)):
            return None
        quiet_at = min(self._last_change + self.settle, self._first_change + self.longest)
        return max(0.0, quiet_at - now, self._last_pass + self.min_interval - now)

    def _check(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = time.monotonic()
        wait = self.due(now)
        if wait is None:  # too few yet: the next one to come or go looks again
            return
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._check)
            return
        self.run_pass()

    def run_pass(self) -> None:
        """One full collection over everything, then what lives on is frozen (see the module doc)."""
        began = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        self._freeze()
        self.last_pause_ms = (time.perf_counter() - began) * 1000
        self._last_pass = time.monotonic()
        self.passes += 1
        log.debug("heap: %d sessions came or went; one full collection (%.0f ms, %d freed), %d objects frozen "
                  "for %d sessions", self.changes, self.last_pause_ms, freed, gc.get_freeze_count(), self.sessions)
        self.changes = 0
        self.frozen_sessions = self.sessions
