"""Known chargers: every charger ever seen is remembered in the store with what it last said (boot
info, connectors, last seen, transport, protocol, last state), so that after a restart the API, the
CLI, the status page and the telemetry sinks still list it, as disconnected, until it comes back or
an operator forgets it (`DELETE /api/v1/chargers/{id}`).

`KnownChargers` keeps no state of its own: the status book (gateway.status.StatusBook) holds what
each charger said, and tells it which charger changed; a writer task saves those to the store,
coalesced (at most one write per `interval`), so the relay never waits for the disk.

At start (`start()`, called once every session observer is registered and before any charger can
connect), each charger the store remembers is announced to every observer as a session event
`known` whose `session` is a `KnownCharger`: disconnected, with its last protocol and what it last
said. Telemetry turns it into a ChargerState (connected false), the status book into an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import StoreWriteFailed
from gateway.protocol.frames import OcppVersion
from gateway.status import StatusBook

log = logging.getLogger("gateway.registry")

MAX_KNOWN = 5000  # chargers remembered; beyond, the ones seen longest ago are forgotten


class RegistryStore(Protocol):
    async def known_chargers(self) -> list[dict[str, Any]]: ...
    async def chargers_save(self, rows: list[dict[str, Any]], forget: Any = (), keep: int = MAX_KNOWN) -> None: ...


class Notifier(Protocol):
    @property
    def sessions(self) -> Mapping[str, Any]: ...

    def notify(self, session: Any, event: str) -> None: ...


@dataclass(frozen=True, slots=True)
class UpstreamGone:
    """The upstream state of a charger that is not connected (what the API shows for it too)."""

    value: str = "disconnected"


@dataclass(slots=True)
class KnownCharger:
    """A charger from an earlier run, not connected now: what observers get with `known`."""

    charger_id: str
    version: OcppVersion
    row: dict[str, Any] = field(default_factory=dict)  # the store's row (chargers_save's keys)
    connected: bool = False
    upstream_state: UpstreamGone = field(default_factory=UpstreamGone)
    link: None = None
    counters: dict[str, int] = field(default_factory=dict)


class KnownChargers:
    def __init__(self, store: RegistryStore, hub: Notifier, book: StatusBook, interval: float = 1.0) -> None:
        self.store = store
        self.hub = hub
        self.book = book
        self.interval = interval
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        book.on_change = self.changed

    def changed(self, charger_id: str) -> None:
        """The status book's hook: this charger said something worth keeping (or was forgotten)."""
        self._dirty.add(charger_id)
        self._wake.set()

    async def start(self) -> int:
        """Announce the chargers the store remembers; returns how many."""
        try:
            rows = await self.store.known_chargers()
        except Exception:  # noqa: BLE001 - the gateway serves chargers without its memory of them
            log.exception("could not read the known chargers")
            rows = []
        announced = 0
        for row in rows:
            charger_id = str(row.get("charger_id"))
            if charger_id in self.hub.sessions:
                continue
            try:
                version = OcppVersion(row.get("protocol"))
            except ValueError:
                log.warning("known charger %s has an unknown protocol %r; not listed", charger_id, row.get("protocol"))
                continue
            self.hub.notify(KnownCharger(charger_id, version, row), "known")
            announced += 1
        self._dirty.clear()  # announcing changed nothing the store does not have
        if announced:
            log.info("%d known chargers from earlier runs listed as disconnected", announced)
        self._task = asyncio.create_task(self._run(), name="known-chargers")
        return announced

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)  # coalesce what changes meanwhile into one write
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Save what changed since the last write (every charger's latest, or its removal)."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        rows, forget = [], []
        for charger_id in sorted(dirty):
            row = self.book.row(charger_id)
            if row is None:
                forget.append(charger_id)
            elif row.get("protocol"):
                rows.append(row)
        try:
            await self.store.chargers_save(rows, forget, MAX_KNOWN)
        except StoreWriteFailed:
            # a full or failing disk: the store reports the episode itself (one ERROR line); the
            # list is saved with the next change after it recovers
            self.failures += 1
            self._dirty |= dirty
            log.debug("known chargers not saved: the store cannot write")
        except Exception:  # noqa: BLE001 - informative; tried again with the next change
            self.failures += 1
            self._dirty |= dirty
            log.exception("could not save %d known chargers", len(dirty))

    async def stop(self) -> None:
        """Write what changed last (the hub has closed every session), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
