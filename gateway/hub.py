"""The hub: every charger session of the site, and what they share.

The hub creates and ends sessions (`attach`/`detach`/`forget`), fans their exchanges and events
out to the observers (telemetry, metrics, status page, journal, control), and hands each session
a narrow context (`gateway.context.SessionContext`: settings, store, schemas, the local CSMS and
authorizer, message ids, the dial gate, the observers) instead of itself. Adapters reach it
through the charger-ingress port (`gateway.ports.ChargerIngress`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.auth import LocalAuthorizer
from gateway.config import Settings
from gateway.errors import LinkFailed
from gateway.heap import HeapKeeper
from gateway.local import LocalCsms
from gateway.ports import ChargerHandle, ChargerLink, Exchange, SessionObserver, Store, UpstreamConnector, UpstreamLink
from gateway.protocol.frames import OcppVersion
from gateway.protocol.rpc import MessageIds
from gateway.protocol.schemas import SchemaRegistry
from gateway.session import ChargerSession
from gateway.uplink import DialGate

log = logging.getLogger("gateway.session")


@dataclass(slots=True)
class _Retired:
    """What observers get for a forgotten charger that had no session."""

    charger_id: str
    connected: bool = False


class Hub:
    """All sessions of the site, and what they share: settings, schemas, the store, the upstream
    connector, the local CSMS and authorizer, the gateway's message ids and the site-wide cap on
    upstream dials. Implements `SessionContext` for its sessions."""

    def __init__(self, settings: Settings, store: Store, schemas: SchemaRegistry,
                 connector: UpstreamConnector | None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.schemas = schemas
        self._connector = connector
        self.auth = LocalAuthorizer(settings, store)
        self.local = LocalCsms(settings, store, schemas, self.auth)
        self.ids = MessageIds(secrets.token_hex(6))
        self.rng = rng or random.Random()
        self.gate = DialGate(settings.upstream.max_concurrent_dials, probe=getattr(connector, "probe", None),
                             probe_interval=settings.upstream.probe_interval, rng=self.rng)
        self.sessions: dict[str, ChargerSession] = {}
        # replay-only sessions: a backlog stored in another OCPP version than the charger's own
        # session, replayed over a link of its version (one per charger at a time), and what
        # such a backlog waits for when the CSMS refuses that version
        self.replayers: dict[str, ChargerSession] = {}
        self.blocked: dict[str, dict[str, str]] = {}
        # sessions an operator forgot: their late events (detach, upstream closing) reach no observer
        self._forgotten: weakref.WeakSet[ChargerSession] = weakref.WeakSet()
        self.observers: list[SessionObserver] = []
        self.control: Any = None  # gateway.control.engine.ControlEngine, when local control is wired
        self.variables: Any = None  # gateway.mirror.VariablesMirror (claims the NotifyReports it asked for)
        self.heap: HeapKeeper | None = None  # keeps long-lived sessions out of full collections (gateway/app.py)

    # -- SessionContext ---------------------------------------------------------------------------

    @property
    def observed(self) -> bool:
        return bool(self.observers)

    async def backoff(self, delay: float) -> None:
        await self.gate.backoff(delay)

    def csms_reached(self) -> None:
        self.gate.reached()

    def claims(self, charger_id: str, action: str, payload: dict[str, Any]) -> bool:
        mirror = self.variables
        return mirror is not None and action == "NotifyReport" and bool(mirror.claims(charger_id, payload))

    def publish(self, session: ChargerSession, exchange: Exchange) -> None:
        for observer in self.observers:
            try:
                observer.exchange(session, exchange)
            except Exception:  # noqa: BLE001 - an observer must never break the relay
                log.exception("observer %r failed on %s", observer, exchange.action)

    def notify(self, session: Any, event: str) -> None:
        if session in self._forgotten:
            return  # a forgotten session's late events (its detach, its upstream closing) would bring it back
        if self.heap is not None and (event == "connected" or event == "disconnected"):
            self.heap.changed(len(self.sessions))
        for observer in self.observers:
            try:
                observer.session_event(session, event)
            except Exception:  # noqa: BLE001
                log.exception("observer %r failed on %s", observer, event)

    async def dial(self, charger_id: str, version: OcppVersion) -> UpstreamLink:
        """Open the charger's upstream link (within the site-wide cap on simultaneous dials)."""
        charger = self.settings.charger(charger_id)
        password = charger.upstream_password.get_secret_value() if charger else ""
        connector = self.connector
        return await self.gate.dial(lambda: connector.connect(charger_id, version, password or None))

    async def forget(self, session: ChargerSession) -> None:
        """A session ends on its own (outbox replayed without a charger; strict mode closed it; a
        replay-only session whose rows are done)."""
        cid = session.charger_id
        if self.sessions.get(cid) is session:
            del self.sessions[cid]
        await session.close()
        if self.replayers.get(cid) is session:
            del self.replayers[cid]
            self.blocked.pop(cid, None)
            main = self.sessions.get(cid)
            if main is not None:
                main.replay.start()  # its own rows are next

    async def replay_in(self, session: ChargerSession, protocol: str) -> None:
        """The next stored row of `session`'s charger was stored in `protocol`, which `session`
        does not speak. Rows are replayed only over an upstream link of the version they were
        stored in (a CSMS answers a 1.6 message on a 2.0.1 link with NotImplemented): the charger's
        own session replays them if it speaks it, else a replay-only session does (same charger
        id and credentials, no charger link) until they are done; the sessions hand over in the
        order of the rows."""
        cid = session.charger_id
        if session.replay_only:
            await self.forget(session)  # its version's rows are done for now; whoever comes next goes on
        main = self.sessions.get(cid)
        if main is not None and main.version.value == protocol:
            main.replay.start()
            return
        current = self.replayers.get(cid)
        if current is not None and not current.closed:
            current.replay.start()  # it hands over when its rows are done
            return
        try:
            version = OcppVersion(protocol)
        except ValueError:
            log.error("outbox of %s has rows of unknown protocol %r; left alone", cid, protocol,
                      extra={"charger_id": cid})
            return
        replayer = ChargerSession(self, cid, version)
        replayer.replay_only = True
        self.replayers[cid] = replayer
        await replayer.load()
        log.info("the backlog of %s stored in %s is replayed over a link of that version before its %s messages",
                 cid, protocol, session.version.value, extra={"charger_id": cid})
        replayer.start_upstream()

    def backlog_blocked(self, session: ChargerSession, reason: str | None) -> None:
        cid = session.charger_id
        if reason is None:
            if self.blocked.pop(cid, None) is not None:
                log.info("the CSMS takes %s again: the backlog of %s goes on", session.version.value, cid,
                         extra={"charger_id": cid})
            return
        if cid in self.blocked:
            self.blocked[cid]["reason"] = self.blocked[cid]["reason"].split(": ", 1)[0] + ": " + reason
            return
        protocol = session.version.value
        self.blocked[cid] = {"protocol": protocol, "since": datetime.now(timezone.utc).isoformat(),
                             "reason": f"the CSMS refuses {protocol} or cannot be reached in it: {reason}"}
        log.warning("the backlog of %s stored in %s waits: the CSMS refuses %s or cannot be reached in it (%s); "
                    "its messages are kept and sent once it takes that version again (never dead letters)",
                    cid, protocol, protocol, reason, extra={"charger_id": cid})

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load what the store keeps; resume replaying outboxes left by an earlier run."""
        await self.auth.load()
        if not self.settings.upstream.url:
            return
        for charger_id, protocol in await self.store.chargers_with_backlog():
            if charger_id in self.sessions:
                continue
            try:
                version = OcppVersion(protocol)
            except ValueError:
                log.error("outbox of %s has unknown protocol %r; left alone", charger_id, protocol)
                continue
            session = ChargerSession(self, charger_id, version)
            await session.load()
            if session.strict:
                continue
            self.sessions[charger_id] = session
            log.info("resuming the outbox of %s", charger_id, extra={"charger_id": charger_id})
            session.start_upstream()

    @property
    def connector(self) -> UpstreamConnector:
        if self._connector is None:
            raise LinkFailed("no upstream configured")
        return self._connector

    # -- charger ingress (gateway.ports.ChargerIngress) -------------------------------------------

    def needs_upstream_first(self, charger_id: str) -> bool:
        """Strict mode: a charger is accepted only once its upstream link is up."""
        if not self.settings.upstream.url or self.settings.offline_mode(charger_id) != "strict":
            return False
        session = self.sessions.get(charger_id)
        return session is None or not session.upstream_online

    def is_known(self, charger_id: str) -> bool:
        return charger_id in self.settings.chargers

    def admits(self, charger_id: str) -> bool:
        return self.settings.websocket.allow_unknown or self.is_known(charger_id)

    @property
    def charger_count(self) -> int:
        return len(self.sessions)

    async def attach(self, charger_id: str, version: OcppVersion, link: ChargerLink,
                     upstream: UpstreamLink | None = None) -> ChargerSession:
        session = self.sessions.get(charger_id)
        while session is not None and session.closed:
            # the charger is back while the session of its previous connection is still closing
            # (it reconnected at once): that close ends first (its upstream link, the replay, its
            # store writes), and the new connection gets a new session that reads the store after it
            await session.wait_closed()
            if self.sessions.get(charger_id) is session:
                del self.sessions[charger_id]
            session = self.sessions.get(charger_id)
        if session is not None and session.version is not version:
            # a new protocol version needs a new upstream link; a backlog stored in the old version
            # stays with the old session, which goes on replaying it over a link of that version
            del self.sessions[charger_id]
            replayer = self.replayers.get(charger_id)
            if session.backlog and not session.strict and (replayer is None or replayer.closed):
                session.replay_only = True
                self.replayers[charger_id] = session
                await session.drop_charger("the charger connected again in another OCPP version")
                log.info("%s is back in %s; its %s backlog is replayed first over a %s link", charger_id,
                         version.value, session.version.value, session.version.value,
                         extra={"charger_id": charger_id})
            else:
                await session.close()
            self.notify(session, "disconnected")
            session = None
        if session is None:
            replayer = self.replayers.get(charger_id)
            if replayer is not None and replayer.version is version and not replayer.closed:
                # back in the version of the backlog being replayed: that session is the charger's again
                del self.replayers[charger_id]
                self.blocked.pop(charger_id, None)
                replayer.replay_only = False
                session = replayer
                self.sessions[charger_id] = session
        if session is None:
            session = ChargerSession(self, charger_id, version)
            self.sessions[charger_id] = session
            await session.load()
        await session.attach(link, upstream)
        self.notify(session, "connected")
        try:
            await self.store.charger_seen(charger_id, version.value, link.transport,
                                          datetime.now(timezone.utc).isoformat())
        except Exception:  # noqa: BLE001 - the registry is informative; never refuse a charger for it
            log.exception("could not record charger %s", charger_id)
        return session

    async def detach(self, session: ChargerHandle, link: ChargerLink) -> None:
        assert isinstance(session, ChargerSession)  # the handles this hub hands out
        if await session.detach(link):
            if self.sessions.get(session.charger_id) is session:
                del self.sessions[session.charger_id]
        if not session.connected:  # not when a newer connection of the charger holds the session
            self.notify(session, "disconnected")

    # -- operations -------------------------------------------------------------------------------

    async def forget_charger(self, charger_id: str) -> None:
        """An operator retires a charger: its connection and upstream link are closed and the
        observers drop what they keep about it (retained MQTT state, Home Assistant discovery, the
        status page). Its outbox and transaction log stay: nothing accepted is dropped, and a
        backlog is replayed after the next start. It comes back if it connects again."""
        session = self.sessions.pop(charger_id, None)
        replayer = self.replayers.pop(charger_id, None)
        self.blocked.pop(charger_id, None)
        if replayer is not None:
            await replayer.close()
        if session is not None:
            await session.close()
            self.notify(session, "disconnected")
        self.notify(session or _Retired(charger_id), "forgotten")
        for gone in (session, replayer):  # they say nothing more (a new connection is a new session)
            if gone is not None:
                self._forgotten.add(gone)

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        replayers, self.replayers = list(self.replayers.values()), {}
        await asyncio.gather(*(s.close() for s in sessions + replayers), return_exceptions=True)
        await self.gate.close()
        for session in sessions:  # observers (retained MQTT state, metrics) see every charger leave
            self.notify(session, "disconnected")
