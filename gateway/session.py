"""One charger's session: the driver that applies the relay's decisions, in order.

`ChargerSession` holds one charger's live link and upstream link and drives its parts:
- the relay's decisions (`gateway.protocol.relay.Relay`: routing, the one-CALL-in-flight queues of
  both directions, the 1.6 transaction-id map), which it applies as effects;
- the upstream link keeper (`gateway.uplink.UplinkKeeper`: dial, read, reconnect);
- the outbox replay (`gateway.replay.Replayer`);
- the answer budget (`gateway.budget.AnswerBudget`);
- the gateway's own answers, calls that get none, and the observers' exchanges (`gateway.answers.OwnAnswers`,
  a mixin: the methods are the session's own).
All traffic for the charger passes through it, so ordering is a property of one object
(ARCHITECTURE.md): each frame's effects are applied (awaited) before the next frame of the same
link is read. The session sees the site through a narrow context (`gateway.context.SessionContext`).

Frames are relayed as the text that arrived: the payload reaches the other side byte for byte
(vendor fields, signed meter values, `-Signed` actions). A frame is parsed once to route and
validate it; it is re-serialised only where the gateway must change it (a 1.6 transaction id
mapped from a local one, `offline: true` on a delayed 2.x TransactionEvent).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.answers import OwnAnswers, utcnow
from gateway.auth import ACCEPTED, info_of, token_of
from gateway.errors import LinkClosed, LinkFailed, NotConnected, StoreWriteFailed
from gateway.flag import Flag
from gateway.ports import ChargerLink, UpstreamLink
from gateway.protocol import frames as F
from gateway.protocol.frames import Call, CallError, CallResult, ErrorCode, FrameError, OcppVersion
from gateway.protocol.relay import (SIGNED, AnswerLocally, Forward, Lesson, Origin, PassOn, Refuse, Relay,
                                    SetAside, ToCharger, UpstreamState)
from gateway.protocol.rpc import PendingCall, QueueFull
from gateway.budget import AnswerBudget
from gateway.replay import GatewayCall, Replayer, settle
from gateway.uplink import UplinkKeeper, backoff_delay

if TYPE_CHECKING:
    from gateway.context import SessionContext

__all__ = ["ChargerSession", "GatewayCall", "Origin", "UpstreamState", "backoff_delay"]

log = logging.getLogger("gateway.session")
V16 = OcppVersion.V16


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel the tasks (but the one running this) and wait until they have ended."""
    others = [t for t in tasks if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class ChargerSession(OwnAnswers):
    def __init__(self, ctx: SessionContext, charger_id: str, version: OcppVersion) -> None:
        self.ctx = ctx
        self.charger_id = charger_id
        self.version = version
        settings = ctx.settings
        off = settings.offline
        relaying = bool(settings.upstream.url)
        self.relay = relay = Relay(version, ctx.schemas, relaying=relaying,
                                   strict=settings.offline_mode(charger_id) == "strict",
                                   max_queued=settings.websocket.max_queued_calls,
                                   replay_actions=frozenset(off.replay_actions),
                                   meter_values_without_transaction=off.meter_values_without_transaction,
                                   local_ids=(off.transaction_id_min, off.transaction_id_max),
                                   max_retired=off.id_map_max)
        self.to_charger = relay.to_charger
        self.to_upstream = relay.to_upstream
        self.link: ChargerLink | None = None
        self.upstream_changed_at = utcnow()
        self._upstream: UpstreamLink | None = None
        self._adopted: UpstreamLink | None = None  # a link dialled before the charger was accepted (strict)
        self._lost: PendingCall | None = None  # the call in flight when the upstream link dropped
        self._charger_timeout = settings.websocket.call_timeout
        self._upstream_timeout = settings.upstream.call_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()  # timer expiries (kept referenced)
        self.replay_only = False  # a session kept to replay a backlog stored in its (older) version
        self.last_lost: tuple[datetime, str] | None = None  # when and why the upstream link was declared dead
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._ended = Flag()  # close() has finished (its upstream link, tasks and charger link ended)
        self.log = logging.LoggerAdapter(log, {"charger_id": charger_id})
        self.counters = {"buffered": 0, "dropped": 0, "replayed": 0, "dead_letters": 0, "possible_duplicates": 0,
                         "invalid_replayed_starts": 0}
        self.replay = Replayer(self, ctx)
        self.budget = AnswerBudget(self, settings.upstream.answer_within, self._tasks)
        self.uplink = UplinkKeeper(self, ctx)

    async def load(self) -> None:
        """Read what the store keeps for this charger (the id map, whether a backlog waits)."""
        if not self.relay.relaying:
            return
        store = self.ctx.store
        tx = self.relay.tx
        for local_id, csms_id in await store.tx_map(self.charger_id):
            tx.bind(local_id, csms_id)
        retired = getattr(store, "tx_retired", None)
        if retired is not None:
            for local_id in await retired(self.charger_id):
                tx.retire(local_id)
        self.relay.backlog = await store.has_backlog(self.charger_id)

    # -- state ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def relaying(self) -> bool:
        return self.relay.relaying

    @property
    def strict(self) -> bool:
        return self.relay.strict

    @property
    def backlog(self) -> bool:
        return self.relay.backlog

    @property
    def upstream_state(self) -> UpstreamState:
        return self.relay.upstream

    @property
    def upstream_online(self) -> bool:
        return self.relay.upstream is UpstreamState.ONLINE

    @property
    def upstream(self) -> UpstreamLink | None:
        return self._upstream

    # -- lifecycle ------------------------------------------------------------------------------

    async def attach(self, link: ChargerLink, upstream: UpstreamLink | None = None) -> None:
        """A (new) connection from the charger. The newest connection wins. A session that is
        closing is never taken over (the hub waits for `wait_closed` and makes a new one)."""
        if self._closed:
            raise RuntimeError(f"session of {self.charger_id} is closing; it takes no new connection")
        old, self.link = self.link, link
        if upstream is not None:
            if self._upstream is None and self._adopted is None:
                self._adopted = upstream
            else:
                await upstream.close()
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
        self.start_upstream()

    async def drop_charger(self, reason: str) -> None:
        """The charger went on in another OCPP version: this session keeps only its backlog
        (replay-only); a connection of the old version still open is closed."""
        link, self.link = self.link, None
        self.to_charger.pause()
        for call in self.to_charger.drain():
            await self._fail(call, ErrorCode.GENERIC_ERROR, reason)
        if link is not None:
            await link.close(1000, "replaced by a newer connection")

    def start_upstream(self) -> None:
        if self.relay.relaying and not self._closed:
            self.uplink.start()

    async def detach(self, link: ChargerLink) -> bool:
        """The connection ended. Returns True when the session is over.

        A session whose outbox still waits for the CSMS stays (without a charger) until the outbox
        is replayed: the CSMS gets its transactions even from a charger that left."""
        if self.link is not link:
            return False
        self.link = None
        self.to_charger.pause()
        for call in self.to_charger.drain():
            await self._fail(call, ErrorCode.GENERIC_ERROR, "charger disconnected")
        if self.link is not None:
            return False  # a newer connection took the session over meanwhile: it goes on with that one
        relay = self.relay
        if relay.relaying and not relay.strict and relay.backlog and not self._closed:
            self.log.info("charger left with %s; its outbox is replayed first", "a backlog")
            return False
        await self.close()
        return True

    async def close(self) -> None:
        """End the session: J201 §6.3, when a charger drops, its upstream socket is closed too.

        Closes the charger connection the session held when the close began, and only that one."""
        if self._closed:
            return
        self._closed = True
        link = self.link
        try:
            await self._close(link)
        finally:
            self._ended.set()

    async def wait_closed(self) -> None:
        """Return once a close under way (or done) has finished."""
        await self._ended.wait()

    async def _close(self, link: ChargerLink | None) -> None:
        self.replay.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.budget.clear()
        await _cancel(self._tasks)  # timer expiries under way
        for call in self.to_charger.drain() + self.to_upstream.drain():
            if isinstance(call.origin, GatewayCall) and not call.origin.future.done():
                call.origin.future.set_exception(NotConnected(f"{self.charger_id} session closed"))
        upstream = self._upstream or self._adopted
        await self.uplink.stop()
        await self.replay.stop()
        if upstream is not None:
            await upstream.close()
        self._upstream = self._adopted = None
        if self.link is link:
            self.link = None
        if link is not None:
            await link.close(1001, "gateway closing the session")

    # -- frames from the charger ----------------------------------------------------------------

    async def from_charger(self, text: str) -> None:
        try:
            frame = F.parse(text, self.version)
        except FrameError as exc:
            self.log.warning("bad frame from charger: %s", exc)
            if exc.reply is not None:
                await self._send_charger(exc.reply)
            return
        if type(frame) is Call:
            await self._charger_call(frame)
        else:
            await self._charger_reply(frame)  # type: ignore[arg-type]

    async def _charger_call(self, frame: Call) -> None:
        effect = self.relay.charger_call(frame)
        if frame.action == "NotifyReport" and (type(effect) is Forward or type(effect) is AnswerLocally) \
                and self.ctx.claims(self.charger_id, frame.action, frame.payload):
            # a part of the report the gateway asked for (gateway/mirror.py): answered here, never relayed
            await self._send_charger(F.call_result(frame.message_id, {}))
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, {}, None, "gateway", utcnow())
            return
        if type(effect) is Forward:  # the live path first
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=effect.text,
                               origin=Origin.CHARGER, timeout=self._upstream_timeout, request=frame.payload,
                               received_at=utcnow(), source=frame)
            if not self.relay.strict and not frame.action.endswith(SIGNED):  # only the CSMS answers those
                self.budget.arm(call)
            await self.submit_upstream(call)
        elif type(effect) is SetAside:
            await self._set_aside(frame, effect.reason)
        elif type(effect) is AnswerLocally:
            await self.answer_locally(frame, effect.kind)
        elif type(effect) is Refuse:
            code, description = effect.code, effect.description
            self.log.warning("refused %s %s from charger: %s %s", frame.action, frame.message_id, code.value,
                             description)
            if not frame.send:
                await self._send_charger(F.call_error(self.version, frame.message_id, code, description))
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None, code.spell(self.version),
                       "gateway", utcnow())
        elif type(effect) is PassOn:  # 2.1 SEND: never answered, exempt from the one-CALL rule
            if self._upstream is not None:
                await self.send_upstream_raw(frame.raw)
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None, None, "", utcnow())
        elif type(effect) is ToCharger:
            await self._send_charger(effect.text)

    def probe_upstream(self) -> None:
        """Ask the live upstream link, if it can, to check at once that the CSMS is still there."""
        probe = getattr(self._upstream, "probe", None)
        if probe is not None:
            probe()

    @property
    def awaiting_late(self) -> bool:
        """A stored row is on its way to the CSMS on the live link (answered late): the replay waits."""
        return self.budget.awaiting_late

    async def _charger_reply(self, frame: CallResult | CallError) -> None:
        done, nxt = self.to_charger.complete(frame.message_id, self._loop.time())
        if nxt is not None:
            await self._send_charger(nxt.frame)
        if done is None:
            if isinstance(frame, CallError) and frame.result_error and self._upstream is not None:
                await self.send_upstream_raw(frame.raw)  # 2.1 CALLRESULTERROR about a CSMS reply
            else:
                self.log.warning("reply %s from charger matches no call in flight; dropped", frame.message_id)
            return
        if done.origin is Origin.CSMS:
            if self._upstream is not None:
                await self.send_upstream_raw(frame.raw)
            else:
                self.log.warning("CSMS link gone; reply to %s %s not relayed", done.action, done.message_id)
            if type(frame) is CallResult and frame.payload.get("status") == ACCEPTED:
                await self._observe_command(done)
        elif isinstance(done.origin, GatewayCall):
            settle(done.origin.future, frame)
        self._emit_reply(done, frame, "charger")

    async def _observe_command(self, call: PendingCall) -> None:
        """Keep the gateway's copy of what the CSMS configured on the charger (it was accepted)."""
        auth = self.ctx.auth
        if call.action == "SendLocalList" and isinstance(call.request, dict):
            await auth.apply_local_list(self.charger_id, self.version, call.request)
        elif call.action == "ClearCache":
            await auth.clear_cache()

    # -- frames from the CSMS -------------------------------------------------------------------

    async def from_upstream(self, text: str) -> None:
        try:
            frame = F.parse(text, self.version)
        except FrameError as exc:
            self.log.warning("bad frame from CSMS: %s", exc)
            if exc.reply is not None:
                await self.send_upstream_raw(exc.reply)
            return
        if type(frame) is Call:
            if frame.send:
                if self.link is not None:
                    await self._send_charger(frame.raw)
                return
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=self.relay.csms_call(frame),
                               origin=Origin.CSMS, timeout=self._charger_timeout, request=frame.payload,
                               received_at=utcnow())
            await self._submit_charger(call)
            return
        if self.replay.answer(frame):  # type: ignore[arg-type]
            return
        done, nxt = self.to_upstream.complete(frame.message_id, self._loop.time())
        if nxt is not None:
            await self.send_upstream_raw(nxt.frame)
        if done is None:
            if isinstance(frame, CallError) and frame.result_error:
                await self._send_charger(frame.raw)
            else:
                self.log.warning("reply %s from CSMS matches no call in flight; dropped", frame.message_id)
            return
        if done.origin is Origin.CHARGER:
            budget = self.budget
            late = budget.late.pop(done.message_id, None) if budget.late else None
            if late is not None:
                await budget.late_answer(done, frame, late)  # type: ignore[arg-type]
                return
            budget.disarm(done.message_id)
            await self._send_charger(frame.raw)
            if type(frame) is CallResult:
                lesson = self.relay.lesson(done)
                if lesson is not None:  # most answers teach nothing: no coroutine for them
                    await self.learn(done, frame.payload, lesson)
        elif isinstance(done.origin, GatewayCall):
            settle(done.origin.future, frame)  # type: ignore[arg-type]  # never forwarded (J201 §6.4)
        self._emit_reply(done, frame, "csms")  # type: ignore[arg-type]

    async def learn(self, call: PendingCall, response: dict[str, Any], lesson: Lesson | None = None) -> None:
        """What a CSMS answer to a relayed charger message teaches the gateway (nothing when the
        store cannot write now: it is a cache, the answer is relayed all the same). `lesson`: what
        `Relay.lesson` said of it, when the caller asked already."""
        try:
            await self._learn_now(call, response, lesson)
        except StoreWriteFailed:
            pass

    async def _learn_now(self, call: PendingCall, response: dict[str, Any], lesson: Lesson | None) -> None:
        if lesson is None:
            lesson = self.relay.lesson(call)
        if lesson is None:
            return
        if lesson.authorization:
            tag = token_of(self.version, call.request)
            info = info_of(self.version, response)
            if tag is not None and info is not None:
                await self.ctx.auth.learn(self.version, tag, info)
        if lesson.forget_tx is not None:
            await self.ctx.store.tx_forget(self.charger_id, lesson.forget_tx)
        if lesson.boot_answered:
            await self.ctx.store.pending_boot_clear(self.charger_id)

    # -- the upstream link (gateway.uplink.UplinkHost) -----------------------------------------

    def set_upstream_state(self, state: UpstreamState) -> None:
        if state is not self.relay.upstream:
            self.relay.upstream = state
            self.upstream_changed_at = utcnow()
            self.log.info("upstream %s", state.value)
            self.ctx.notify(self, "upstream")

    async def dial_upstream(self) -> UpstreamLink:
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            return adopted
        return await self.ctx.dial(self.charger_id, self.version)

    async def uplink_up(self, link: UpstreamLink) -> None:
        if self.replay_only:
            self.ctx.backlog_blocked(self, None)
        self._upstream = link
        self.set_upstream_state(UpstreamState.ONLINE)
        self.replay.start()
        nxt = self.to_upstream.resume(self._loop.time())
        if nxt is not None:
            await self.send_upstream_raw(nxt.frame)

    def uplink_down(self) -> None:
        self._upstream = None
        self._lost = self.to_upstream.pause()

    def link_declared_dead(self, reason: str) -> None:
        self.last_lost = (utcnow(), reason)
        self.log.warning("upstream link declared dead: %s", reason)
        self.ctx.notify(self, "upstream_lost")

    async def foreign_backlog(self, protocol: str) -> None:
        await self.ctx.replay_in(self, protocol)

    async def dial_failed(self, exc: LinkFailed) -> bool:
        if self.replay_only:
            self.ctx.backlog_blocked(self, str(exc))
        if self.relay.strict:
            await self._strict_close(f"CSMS unreachable ({exc})")
            return False
        for waiting in self.to_upstream.remove_queued(_from_charger):
            await self._fail(waiting, ErrorCode.INTERNAL_ERROR, "CSMS unreachable")
        return True

    async def uplink_lost(self) -> bool:
        lost, self._lost = self._lost, None
        if lost is not None:
            await self._fail(lost, ErrorCode.INTERNAL_ERROR, "CSMS connection lost before it answered", uncertain=True)
        for waiting in self.to_upstream.remove_queued(_from_charger):
            await self._fail(waiting, ErrorCode.INTERNAL_ERROR, "CSMS connection lost")
        if self.relay.strict:
            await self._strict_close("CSMS connection lost")
            return False
        return True

    async def _strict_close(self, reason: str) -> None:
        """Strict mode (2.0.1 Part 4 §6.3): no upstream, no charger connection; it queues itself."""
        self.log.warning("strict mode: closing the charger connection: %s", reason)
        link = self.link
        if link is not None:
            await link.close(1013, "CSMS unreachable, try again later")
        await self.ctx.forget(self)

    # -- the replay (gateway.replay.ReplayHost) ---------------------------------------------------

    async def replay_finished(self) -> None:
        if not self.relay.backlog and self.link is None and not self._closed:
            await self.ctx.forget(self)

    # -- calls the gateway makes ----------------------------------------------------------------

    async def call_charger(self, action: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """CALL the charger through its queue; returns the CALLRESULT payload.

        Raises NotConnected, Busy, CallTimeout or CallFailed (a CALLERROR)."""
        if self.link is None:
            raise NotConnected(f"{self.charger_id} is not connected")
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        message_id = self.ctx.ids.next()
        call = PendingCall(message_id=message_id, action=action, frame=F.call(message_id, action, payload),
                           origin=GatewayCall(future), timeout=timeout or self._charger_timeout,
                           request=payload, received_at=utcnow())
        await self._submit_charger(call)
        return await future

    # -- queues, timers, sending ----------------------------------------------------------------

    async def _submit_charger(self, call: PendingCall) -> None:
        try:
            nxt = self.to_charger.submit(call, self._loop.time())
        except QueueFull:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for this charger", busy=True)
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self._send_charger(nxt.frame)

    async def submit_upstream(self, call: PendingCall) -> None:
        try:
            nxt = self.to_upstream.submit(call, self._loop.time())
        except QueueFull:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for the CSMS", busy=True)
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self.send_upstream_raw(nxt.frame)

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
            task = self._loop.create_task(self._expire())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _expire(self) -> None:
        expired = self.relay.expire(self._loop.time())
        for call in expired.to_charger:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "charger did not answer in time", timed_out=True)
        if expired.charger_next is not None:
            await self._send_charger(expired.charger_next.frame)
        if expired.to_upstream:
            self.probe_upstream()  # a CALL timed out: is the link still there? (a silent one is dead within ping_timeout)
        for call in expired.to_upstream:
            await self._fail(call, ErrorCode.INTERNAL_ERROR, "CSMS did not answer in time", timed_out=True)
        if expired.upstream_next is not None:
            await self.send_upstream_raw(expired.upstream_next.frame)
        self._arm(self.relay.next_deadline())

    async def _send_charger(self, text: str) -> None:
        link = self.link
        if link is None:
            self.log.debug("charger not connected; frame not sent")
            return
        try:
            await link.send(text)
        except LinkClosed:
            self.log.debug("charger link closed while sending")

    async def send_upstream_raw(self, text: str) -> None:
        link = self._upstream
        if link is None:
            return
        try:
            await link.send(text)
        except LinkClosed:
            self.log.debug("upstream link closed while sending")

    def snapshot(self) -> dict[str, Any]:
        return {
            "charger_id": self.charger_id,
            "connected": self.connected,
            "transport": self.link.transport if self.link else None,
            "protocol": self.version.value,
            "upstream": self.upstream_state.value,
            "upstream_since": self.upstream_changed_at.isoformat(),
            "offline_mode": "strict" if self.strict else "buffer",
            "backlog": self.backlog,
            "calls_to_charger": len(self.to_charger),
            "calls_to_upstream": len(self.to_upstream),
            "counters": dict(self.counters),
        }


def _from_charger(call: PendingCall) -> bool:
    return call.origin is Origin.CHARGER

