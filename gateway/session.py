"""One charger's session, and the hub that holds them all.

`ChargerSession` owns everything about one charger: its protocol version, its live link, its
upstream link and that link's state, the one-outstanding-CALL queues in both directions, and the
gateway's own pending calls. All traffic for the charger passes through it, so ordering is a
property of one object (ARCHITECTURE.md, "One charger's session").

Frames are relayed as the text that arrived: the payload reaches the other side byte for byte
(vendor fields, signed meter values, `-Signed` actions). A frame is parsed once to route and
validate it, never re-serialised on the relay path.

Any transport (WebSocket now; SOAP and HTTP later) feeds a session with `from_charger(text)`; the
upstream link feeds it with `from_upstream(text)`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.config import Settings
from gateway.errors import Busy, CallFailed, CallTimeout, LinkClosed, LinkFailed, NotConnected
from gateway.local import LocalCsms
from gateway.ports import ChargerLink, Exchange, SessionObserver, Store, UpstreamConnector, UpstreamLink
from gateway.protocol import frames as F
from gateway.protocol.frames import Call, CallError, ErrorCode, FrameError, OcppVersion
from gateway.protocol.rpc import CallQueue, MessageIds, PendingCall, QueueFull
from gateway.protocol.schemas import SchemaRegistry

log = logging.getLogger("gateway.session")


class UpstreamState(str, enum.Enum):
    STANDALONE = "standalone"  # no upstream configured: the gateway is the CSMS
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"


class Origin(enum.Enum):
    CHARGER = "charger"  # a charger CALL on its way to the CSMS
    CSMS = "csms"  # a CSMS CALL on its way to the charger
    GATEWAY = "gateway"  # the gateway's own call (for observers; the queue holds a GatewayCall)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class GatewayCall:
    """Origin of a call the gateway itself makes; its answer stays in the gateway."""

    future: asyncio.Future[dict[str, Any]]


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Jittered exponential backoff: between half and all of min * 2^(attempt-1), capped.

    The jitter spreads a whole site's reconnects over time, so 500 chargers do not dial the CSMS
    in the same second after an outage (together with the hub's cap on simultaneous dials)."""
    ceiling = min(maximum, minimum * (2 ** max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


class ChargerSession:
    def __init__(self, hub: "Hub", charger_id: str, version: OcppVersion) -> None:
        self.hub = hub
        self.charger_id = charger_id
        self.version = version
        ws = hub.settings.websocket
        self.link: ChargerLink | None = None
        self.to_charger = CallQueue(max_queued=ws.max_queued_calls, paused=True)
        self.to_upstream = CallQueue(max_queued=ws.max_queued_calls, paused=True)
        self.relaying = bool(hub.settings.upstream.url)
        self.upstream_state = UpstreamState.CONNECTING if self.relaying else UpstreamState.STANDALONE
        self.upstream_changed_at = datetime.now(timezone.utc)
        self._upstream: UpstreamLink | None = None
        self._upstream_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.log = logging.LoggerAdapter(log, {"charger_id": charger_id})

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link is not None

    async def attach(self, link: ChargerLink) -> None:
        """A (new) connection from the charger. The newest connection wins."""
        old, self.link = self.link, link
        now = self._loop.time()
        if old is not None:
            lost = self.to_charger.pause()
            if lost is not None:
                await self._fail(lost, ErrorCode.GENERIC_ERROR, "charger reconnected before answering")
            self.log.info("charger reconnected; closing the older connection from %s", old.remote)
            await old.close(1000, "replaced by a newer connection")
        nxt = self.to_charger.resume(now)
        if nxt is not None:
            await self._send_charger(nxt.frame)
        if self.relaying and self._upstream_task is None:
            self._upstream_task = asyncio.create_task(self._run_upstream(), name=f"upstream:{self.charger_id}")

    async def detach(self, link: ChargerLink) -> bool:
        """The connection ended. Returns True when the session is over (no newer connection)."""
        if self.link is not link:
            return False
        self.link = None
        await self.close()
        return True

    async def close(self) -> None:
        """End the session: J201 §6.3, when a charger drops, its upstream socket is closed too."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for call in self.to_charger.drain() + self.to_upstream.drain():
            if isinstance(call.origin, GatewayCall) and not call.origin.future.done():
                call.origin.future.set_exception(NotConnected(f"{self.charger_id} disconnected"))
        upstream = self._upstream
        task, self._upstream_task = self._upstream_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the task is being torn down
                pass
        if upstream is not None:
            await upstream.close()
        self._upstream = None
        link, self.link = self.link, None
        if link is not None:
            await link.close(1001, "gateway closing the session")

    # -- frames from the charger ----------------------------------------------------------------

    async def from_charger(self, text: str) -> None:
        version = self.version
        try:
            frame = F.parse(text, version)
        except FrameError as exc:
            self.log.warning("bad frame from charger: %s", exc)
            if exc.reply is not None:
                await self._send_charger(exc.reply)
            return
        if type(frame) is Call:
            await self._charger_call(frame)
        else:
            await self._charger_reply(frame)  # type: ignore[arg-type]

    def _check_call(self, frame: Call) -> tuple[ErrorCode, str] | None:
        schemas = self.hub.schemas
        action = frame.action
        if not schemas.knows(self.version, action):
            return ErrorCode.NOT_IMPLEMENTED, f"action {action!r} is not known in {self.version.value}"
        if not schemas.charger_may_send(self.version, action):
            return ErrorCode.NOT_SUPPORTED, f"{action} is not sent by a charging station"
        violation = schemas.validate(self.version, action, frame.payload)
        if violation is not None:
            return violation.code, violation.description
        return None

    async def _charger_call(self, frame: Call) -> None:
        problem = self._check_call(frame)
        if problem is not None:
            self.log.warning("refused %s %s from charger: %s %s", frame.action, frame.message_id, problem[0].value, problem[1])
            if not frame.send:
                await self._send_charger(F.call_error(self.version, frame.message_id, *problem))
            return
        if frame.send:  # 2.1 SEND: never answered, exempt from the one-CALL rule
            if self._upstream is not None:
                await self._send_upstream_raw(frame.raw)
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None, None, "", _utcnow())
            return
        if not self.relaying:
            received = _utcnow()
            payload = await self.hub.local.answer(self.version, frame)
            await self._send_charger(F.call_result(frame.message_id, payload))
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, payload, None, "gateway", received)
            return
        call = PendingCall(message_id=frame.message_id, action=frame.action, frame=frame.raw, origin=Origin.CHARGER,
                           timeout=self.hub.settings.upstream.call_timeout, request=frame.payload,
                           received_at=_utcnow())
        await self._submit_upstream(call)

    async def _charger_reply(self, frame: F.CallResult | CallError) -> None:
        done, nxt = self.to_charger.complete(frame.message_id, self._loop.time())
        if nxt is not None:
            await self._send_charger(nxt.frame)
        if done is None:
            if isinstance(frame, CallError) and frame.result_error and self._upstream is not None:
                await self._send_upstream_raw(frame.raw)  # 2.1 CALLRESULTERROR about a CSMS reply
            else:
                self.log.warning("reply %s from charger matches no call in flight; dropped", frame.message_id)
            return
        if done.origin is Origin.CSMS:
            if self._upstream is not None:
                await self._send_upstream_raw(frame.raw)
            else:
                self.log.warning("CSMS link gone; reply to %s %s not relayed", done.action, done.message_id)
        elif isinstance(done.origin, GatewayCall):
            _settle(done.origin.future, frame)
        self._emit_reply(done, frame, "charger")

    # -- frames from the CSMS -------------------------------------------------------------------

    async def from_upstream(self, text: str) -> None:
        try:
            frame = F.parse(text, self.version)
        except FrameError as exc:
            self.log.warning("bad frame from CSMS: %s", exc)
            if exc.reply is not None:
                await self._send_upstream_raw(exc.reply)
            return
        if type(frame) is Call:
            if frame.send:
                if self.link is not None:
                    await self._send_charger(frame.raw)
                return
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=frame.raw, origin=Origin.CSMS,
                               timeout=self.hub.settings.websocket.call_timeout, request=frame.payload,
                               received_at=_utcnow())
            await self._submit_charger(call)
            return
        done, nxt = self.to_upstream.complete(frame.message_id, self._loop.time())
        if nxt is not None:
            await self._send_upstream(nxt)
        if done is None:
            if isinstance(frame, CallError) and frame.result_error:
                await self._send_charger(frame.raw)
            else:
                self.log.warning("reply %s from CSMS matches no call in flight; dropped", frame.message_id)
            return
        if done.origin is Origin.CHARGER:
            await self._send_charger(frame.raw)
        elif isinstance(done.origin, GatewayCall):
            _settle(done.origin.future, frame)  # never forwarded (J201 §6.4)
        self._emit_reply(done, frame, "csms")

    # -- calls the gateway makes ----------------------------------------------------------------

    async def call_charger(self, action: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """CALL the charger through its queue; returns the CALLRESULT payload.

        Raises NotConnected, Busy, CallTimeout or CallFailed (a CALLERROR)."""
        if self.link is None:
            raise NotConnected(f"{self.charger_id} is not connected")
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        message_id = self.hub.ids.next()
        call = PendingCall(message_id=message_id, action=action, frame=F.call(message_id, action, payload),
                           origin=GatewayCall(future), timeout=timeout or self.hub.settings.websocket.call_timeout,
                           request=payload, received_at=_utcnow())
        await self._submit_charger(call)
        return await future

    # -- queues, timers, sending ----------------------------------------------------------------

    async def _submit_charger(self, call: PendingCall) -> None:
        try:
            nxt = self.to_charger.submit(call, self._loop.time())
        except QueueFull:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for this charger")
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self._send_charger(nxt.frame)

    async def _submit_upstream(self, call: PendingCall) -> None:
        try:
            nxt = self.to_upstream.submit(call, self._loop.time())
        except QueueFull:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for the CSMS")
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self._send_upstream(nxt)

    def _arm(self, deadline: float | None) -> None:
        if deadline is None or self._closed:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            asyncio.create_task(self._expire())

    async def _expire(self) -> None:
        now = self._loop.time()
        expired, nxt = self.to_charger.expire(now)
        for call in expired:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "charger did not answer in time", timed_out=True)
        if nxt is not None:
            await self._send_charger(nxt.frame)
        expired, nxt = self.to_upstream.expire(now)
        for call in expired:
            await self._fail(call, ErrorCode.INTERNAL_ERROR, "CSMS did not answer in time", timed_out=True)
        if nxt is not None:
            await self._send_upstream(nxt)
        deadlines = [d for d in (self.to_charger.next_deadline(), self.to_upstream.next_deadline()) if d is not None]
        if deadlines:
            self._arm(min(deadlines))

    async def _fail(self, call: PendingCall, code: ErrorCode, description: str, *, timed_out: bool = False) -> None:
        """A call that will get no answer from its peer: tell whoever made it."""
        self.log.warning("%s %s: %s", call.action, call.message_id, description)
        origin = call.origin if isinstance(call.origin, Origin) else Origin.GATEWAY
        self._emit(origin, call.action, call.message_id, call.request or {}, None,
                   "timeout" if timed_out else code.value, "gateway", call.received_at or _utcnow())
        if call.origin is Origin.CHARGER:
            await self._send_charger(F.call_error(self.version, call.message_id, code, description))
        elif call.origin is Origin.CSMS:
            if self._upstream is not None:
                await self._send_upstream_raw(F.call_error(self.version, call.message_id, code, description))
        elif isinstance(call.origin, GatewayCall) and not call.origin.future.done():
            exc: Exception
            if timed_out:
                exc = CallTimeout(description)
            elif "too many" in description:
                exc = Busy(description)
            else:
                exc = NotConnected(description)
            call.origin.future.set_exception(exc)

    async def _send_charger(self, text: str) -> None:
        link = self.link
        if link is None:
            self.log.debug("charger not connected; frame not sent")
            return
        try:
            await link.send(text)
        except LinkClosed:
            self.log.debug("charger link closed while sending")

    async def _send_upstream(self, call: PendingCall) -> None:
        await self._send_upstream_raw(call.frame)

    async def _send_upstream_raw(self, text: str) -> None:
        link = self._upstream
        if link is None:
            return
        try:
            await link.send(text)
        except LinkClosed:
            self.log.debug("upstream link closed while sending")

    # -- the upstream link ----------------------------------------------------------------------

    def _set_upstream_state(self, state: UpstreamState) -> None:
        if state is not self.upstream_state:
            self.upstream_state = state
            self.upstream_changed_at = datetime.now(timezone.utc)
            self.log.info("upstream %s", state.value)
            self.hub.notify(self, "upstream")

    # -- observers ------------------------------------------------------------------------------

    def _emit(self, origin: "Origin", action: str, message_id: str, request: dict[str, Any],
              response: dict[str, Any] | None, error: str | None, answered_by: str, received_at: datetime) -> None:
        if not self.hub.observers:
            return
        self.hub.publish(self, Exchange(
            charger_id=self.charger_id, version=self.version, origin=origin.value, action=action,
            message_id=message_id, request=request, response=response, error=error, answered_by=answered_by,
            received_at=received_at,
        ))

    def _emit_reply(self, call: PendingCall, frame: F.CallResult | CallError, answered_by: str) -> None:
        if not self.hub.observers:
            return
        origin = call.origin if isinstance(call.origin, Origin) else Origin.GATEWAY
        if isinstance(frame, CallError):
            self._emit(origin, call.action, call.message_id, call.request or {}, None, frame.code, answered_by,
                       call.received_at or _utcnow())
        else:
            self._emit(origin, call.action, call.message_id, call.request or {}, frame.payload, None, answered_by,
                       call.received_at or _utcnow())

    async def _run_upstream(self) -> None:
        settings = self.hub.settings.upstream
        charger = self.hub.settings.charger(self.charger_id)
        password = charger.upstream_password.get_secret_value() if charger else ""
        attempt = 0
        while not self._closed:
            self._set_upstream_state(UpstreamState.CONNECTING)
            try:
                async with self.hub.dial_gate:
                    link = await self.hub.connector.connect(self.charger_id, self.version, password or None)
            except LinkFailed as exc:
                attempt += 1
                self._set_upstream_state(UpstreamState.OFFLINE)
                delay = backoff_delay(attempt, settings.reconnect_min, settings.reconnect_max, self.hub.rng)
                self.log.warning("upstream connect failed (%s); retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._upstream = link
            self._set_upstream_state(UpstreamState.ONLINE)
            nxt = self.to_upstream.resume(self._loop.time())
            if nxt is not None:
                await self._send_upstream(nxt)
            try:
                async for text in link.frames():
                    await self.from_upstream(text)
            except LinkClosed:
                pass
            finally:
                self._upstream = None
                lost = self.to_upstream.pause()
            if self._closed:
                return
            self._set_upstream_state(UpstreamState.OFFLINE)
            if lost is not None:
                await self._fail(lost, ErrorCode.INTERNAL_ERROR, "CSMS connection lost before it answered")
            await link.close()
            attempt = 1
            await asyncio.sleep(backoff_delay(attempt, settings.reconnect_min, settings.reconnect_max, self.hub.rng))

    def snapshot(self) -> dict[str, Any]:
        return {
            "charger_id": self.charger_id,
            "connected": self.connected,
            "transport": self.link.transport if self.link else None,
            "protocol": self.version.value,
            "upstream": self.upstream_state.value,
            "upstream_since": self.upstream_changed_at.isoformat(),
            "calls_to_charger": len(self.to_charger),
            "calls_to_upstream": len(self.to_upstream),
        }


def _settle(future: asyncio.Future[dict[str, Any]], frame: F.CallResult | CallError) -> None:
    if future.done():
        return
    if isinstance(frame, CallError):
        future.set_exception(CallFailed(frame.code, frame.description, frame.details))
    else:
        future.set_result(frame.payload)


class Hub:
    """All sessions of the site, and what they share: settings, schemas, the store, the upstream
    connector, the local CSMS, the gateway's message ids and the site-wide cap on upstream dials."""

    def __init__(self, settings: Settings, store: Store, schemas: SchemaRegistry,
                 connector: UpstreamConnector | None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.schemas = schemas
        self._connector = connector
        self.local = LocalCsms(settings, store, schemas)
        self.ids = MessageIds(secrets.token_hex(6))
        self.dial_gate = asyncio.Semaphore(settings.upstream.max_concurrent_dials)
        self.rng = rng or random.Random()
        self.sessions: dict[str, ChargerSession] = {}
        self.observers: list[SessionObserver] = []

    def publish(self, session: ChargerSession, exchange: Exchange) -> None:
        for observer in self.observers:
            try:
                observer.exchange(session, exchange)
            except Exception:  # noqa: BLE001 - an observer must never break the relay
                log.exception("observer %r failed on %s", observer, exchange.action)

    def notify(self, session: ChargerSession, event: str) -> None:
        for observer in self.observers:
            try:
                observer.session_event(session, event)
            except Exception:  # noqa: BLE001
                log.exception("observer %r failed on %s", observer, event)

    @property
    def connector(self) -> UpstreamConnector:
        if self._connector is None:
            raise LinkFailed("no upstream configured")
        return self._connector

    def is_known(self, charger_id: str) -> bool:
        return charger_id in self.settings.chargers

    def admits(self, charger_id: str) -> bool:
        return self.settings.websocket.allow_unknown or self.is_known(charger_id)

    async def attach(self, charger_id: str, version: OcppVersion, link: ChargerLink) -> ChargerSession:
        session = self.sessions.get(charger_id)
        if session is not None and session.version is not version:
            # a new protocol version needs a new upstream link: end the old session entirely
            del self.sessions[charger_id]
            await session.close()
            session = None
        if session is None:
            session = ChargerSession(self, charger_id, version)
            self.sessions[charger_id] = session
        await session.attach(link)
        self.notify(session, "connected")
        try:
            await self.store.charger_seen(charger_id, version.value, link.transport,
                                          datetime.now(timezone.utc).isoformat())
        except Exception:  # noqa: BLE001 - the registry is informative; never refuse a charger for it
            log.exception("could not record charger %s", charger_id)
        return session

    async def detach(self, session: ChargerSession, link: ChargerLink) -> None:
        if await session.detach(link):
            if self.sessions.get(session.charger_id) is session:
                del self.sessions[session.charger_id]
            self.notify(session, "disconnected")

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
