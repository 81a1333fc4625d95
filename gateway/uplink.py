"""The upstream link keeper of one charger: dials the CSMS on the charger's behalf, reads what the
CSMS sends while the link lives, and dials again after a jittered backoff when it fails or drops.

States (`UpstreamState`, defined with the relay's decisions in gateway/protocol/relay.py):
`connecting` (first dial; retries after a failure stay `offline`, the gateway keeps answering),
`online`, `offline`; `standalone` when no upstream is configured (no keeper runs). Dials go through
the site-wide gate (`[upstream].max_concurrent_dials`, the hub's `dial`); a session waiting out a
backoff is woken when another one reaches the CSMS (`SessionContext.backoff`/`csms_reached`).
In strict mode (2.0.1 Part 4 §6.3) a failed dial or a lost link ends the charger's session.

`UplinkKeeper` owns the loop and its task; `UplinkHost` is what it needs from the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from gateway.errors import LinkClosed, LinkFailed
from gateway.ports import PushUpstreamLink, UpstreamLink
from gateway.protocol.relay import UpstreamState

if TYPE_CHECKING:
    from gateway.context import SessionContext

__all__ = ["DialGate", "UplinkHost", "UplinkKeeper", "UpstreamState", "backoff_delay"]

FAILURE_REPORT_EVERY = 900  # s between the WARNING lines of one charger's failing dials


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Jittered exponential backoff: between half and all of min * 2^(attempt-1), capped.

    The jitter spreads a whole site's reconnects over time, so 500 chargers do not dial the CSMS
    in the same second after an outage (together with the hub's cap on simultaneous dials)."""
    ceiling = min(maximum, minimum * (2 ** max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


class DialGate:
    """The site's gate for upstream dials: at most `limit` at a time (`[upstream].max_concurrent_dials`),
    and the wake-up of the sessions waiting out a backoff when one of them reaches the CSMS.

    With a `probe` (a cheap reachability check: a TCP connection to the CSMS's host and port, see
    adapters/upstream_ws.py), a site notices the CSMS's return within about `probe_interval`
    whatever its backoff: while any session waits out a backoff longer than `probe_interval`, one
    probe runs every `probe_interval` (jittered between half and all of it, through the same gate);
    when it gets through, the session waiting longest dials at once, and if that dial reaches the
    CSMS every waiting session follows (`reached`). A CSMS that accepts TCP but refuses the
    WebSocket gets at most one real dial per probe period from the site, not one per charger."""

    def __init__(self, limit: int, probe: Callable[[], Awaitable[bool]] | None = None, probe_interval: float = 5.0,
                 rng: random.Random | None = None) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._waiting: list[asyncio.Event] = []  # sessions waiting out a backoff, oldest first
        self._probing: list[asyncio.Event] = []  # ... of those, the ones with a backoff beyond probe_interval
        self._probe = probe
        self.probe_interval = probe_interval
        self._rng = rng or random.Random()
        self._prober: asyncio.Task[None] | None = None
        self.probes = 0  # probe dials made (for tests and metrics)

    async def dial(self, connect: Callable[[], Awaitable[UpstreamLink]]) -> UpstreamLink:
        async with self._slots:
            return await connect()

    async def backoff(self, delay: float) -> None:
        """Wait out a session's backoff after a failed dial: `delay` seconds, or less if another
        session reaches the CSMS meanwhile (`reached`) or a probe finds it back."""
        mine = asyncio.Event()
        self._waiting.append(mine)
        probing = self._probe is not None and delay > self.probe_interval
        if probing:
            self._probing.append(mine)
            if self._prober is None or self._prober.done():
                self._prober = asyncio.get_running_loop().create_task(self._probe_loop(), name="upstream-probe")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await mine.wait()
        finally:
            self._waiting.remove(mine)
            if probing:
                self._probing.remove(mine)

    async def _probe_loop(self) -> None:
        probe = self._probe
        assert probe is not None
        while self._probing:
            await asyncio.sleep(self._rng.uniform(self.probe_interval / 2, self.probe_interval))
            if not self._probing:
                return
            async with self._slots:
                self.probes += 1
                ok = await probe()
            if ok and self._probing:
                self._probing[0].set()  # the one waiting longest dials now; if it gets through, all follow

    def reached(self) -> None:
        """A dial got through: the CSMS is there. The sessions waiting out a backoff dial now
        (through the gate, `max_concurrent_dials` at a time) instead of each at its own timer,
        spread over up to `reconnect_max`: the outboxes start replaying together and the chargers
        are back online at the CSMS sooner."""
        for waiting in self._waiting:
            waiting.set()

    async def close(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober


class UplinkHost(Protocol):
    """What the keeper needs from its session."""

    charger_id: str
    log: logging.LoggerAdapter[logging.Logger]

    @property
    def closed(self) -> bool: ...

    def set_upstream_state(self, state: UpstreamState) -> None: ...

    async def dial_upstream(self) -> UpstreamLink:
        """A link to the CSMS (one dialled during the charger's handshake first). Raises LinkFailed."""

    async def uplink_up(self, link: UpstreamLink) -> None:
        """The link is up: the session sends what waits for it."""

    async def from_upstream(self, text: str) -> None:
        """One frame from the CSMS."""

    def uplink_down(self) -> None:
        """The link is gone (synchronously, before anything else runs): nothing more goes out on it."""

    async def dial_failed(self, exc: LinkFailed) -> bool:
        """A dial failed: tell whoever waits on the CSMS. False: the session is over (strict mode)."""

    async def uplink_lost(self) -> bool:
        """The link that was up dropped: tell whoever waits on the CSMS. False: the session is over
        (strict mode)."""

    def link_declared_dead(self, reason: str) -> None:
        """Why the link that was up is gone (a silent link, closed by the CSMS, ...), before the
        state turns offline."""


class UplinkKeeper:
    """The reconnect loop of one session (see the module doc)."""

    def __init__(self, host: UplinkHost, ctx: SessionContext) -> None:
        self.host = host
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._failing_since: float | None = None  # monotonic time of the first failed dial of this episode
        self._reported_at = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name=f"upstream:{self.host.charger_id}")

    async def stop(self) -> None:
        """The session closes: stop dialling and reading (from any task but the keeper's own)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _report_failure(self, exc: LinkFailed, attempt: int, delay: float) -> None:
        """One WARNING when dials start failing, then one every FAILURE_REPORT_EVERY seconds while
        they go on (each with the count), the rest at DEBUG: a site of 200 chargers through a long
        outage logs a line per charger every quarter of an hour, not one per dial."""
        now = time.monotonic()
        log = self.host.log
        if self._failing_since is None:
            self._failing_since = self._reported_at = now
            log.warning("upstream connect failed (%s); retry in %.1f s (while it keeps failing: a line every "
                        "%d min)", exc, delay, FAILURE_REPORT_EVERY // 60)
        elif now - self._reported_at >= FAILURE_REPORT_EVERY:
            self._reported_at = now
            log.warning("upstream connect still failing after %d attempts over %.0f s (%s); retry in %.1f s",
                        attempt, now - self._failing_since, exc, delay)
        else:
            log.debug("upstream connect failed (%s); retry in %.1f s", exc, delay)

    def _delay(self, attempt: int) -> float:
        up = self.ctx.settings.upstream
        return backoff_delay(attempt, up.reconnect_min, up.reconnect_max, self.ctx.rng)

    async def _run(self) -> None:
        host, ctx = self.host, self.ctx
        attempt = 0
        try:
            while not host.closed:
                if attempt == 0:  # retries after a failure stay "offline": the gateway keeps answering
                    host.set_upstream_state(UpstreamState.CONNECTING)
                try:
                    link = await host.dial_upstream()
                except LinkFailed as exc:
                    host.set_upstream_state(UpstreamState.OFFLINE)
                    if not await host.dial_failed(exc):
                        return
                    attempt += 1
                    delay = self._delay(attempt)
                    self._report_failure(exc, attempt, delay)
                    await ctx.backoff(delay)
                    continue
                ctx.csms_reached()
                if self._failing_since is not None:
                    host.log.info("upstream connected after %d failed attempts over %.0f s", attempt,
                                  time.monotonic() - self._failing_since)
                    self._failing_since = None
                attempt = 0
                await host.uplink_up(link)
                reason = "connection lost"
                try:
                    if isinstance(link, PushUpstreamLink):  # the link delivers each message itself
                        await link.pump(host.from_upstream)
                    else:
                        recv, on_frame = link.recv, host.from_upstream
                        while True:
                            await on_frame(await recv())
                except LinkClosed as exc:
                    reason = str(exc) or reason
                finally:
                    host.uplink_down()
                if host.closed:
                    return
                host.link_declared_dead(reason)
                host.set_upstream_state(UpstreamState.OFFLINE)
                await link.close()
                if not await host.uplink_lost():
                    return
                attempt = 1
                await asyncio.sleep(self._delay(attempt))
        finally:
            if self._task is asyncio.current_task():
                self._task = None
