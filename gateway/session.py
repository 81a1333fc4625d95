"""One charger's session, and the hub that holds them all.

`ChargerSession` owns everything about one charger: its protocol version, its live link, its
upstream link and that link's state, the one-outstanding-CALL queues in both directions, the
gateway's own pending calls, the outbox replay and the 1.6 transaction-id map. All traffic for the
charger passes through it, so ordering is a property of one object (ARCHITECTURE.md).

Frames are relayed as the text that arrived: the payload reaches the other side byte for byte
(vendor fields, signed meter values, `-Signed` actions). A frame is parsed once to route and
validate it; it is re-serialised only where the gateway must change it (a 1.6 transaction id
mapped from a local one, `offline: true` on a delayed 2.x TransactionEvent).

Routing of a charger CALL when an upstream is configured:
- upstream online and the outbox empty (or a message that is never stored): relayed live;
- otherwise, in `buffer` mode: answered by the gateway; transaction-related messages are
  committed to the outbox first (invariant 1), then replayed in order when the CSMS is back;
- in `strict` mode the charger is never connected without its upstream (2.0.1 Part 4 §6.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from gateway.auth import ACCEPTED, LocalAuthorizer, info_of, token_of
from gateway.config import Settings
from gateway.errors import Busy, CallFailed, CallTimeout, GatewayError, LinkClosed, LinkFailed, NotConnected
from gateway.local import LocalCsms
from gateway.ports import ChargerLink, Exchange, SessionObserver, Store, UpstreamConnector, UpstreamLink
from gateway.protocol import frames as F
from gateway.protocol import transactions as T
from gateway.protocol.frames import Call, CallError, ErrorCode, FrameError, OcppVersion
from gateway.protocol.rpc import CallQueue, MessageIds, PendingCall, QueueFull
from gateway.protocol.schemas import SchemaRegistry
from gateway.protocol.transactions import Kind

log = logging.getLogger("gateway.session")
V16 = OcppVersion.V16
SIGNED = "-Signed"  # 2.x signed-message action suffix (J201 §7)


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
class _Chain:
    """Plain rows of one outbox page replayed from the upstream reader (see `_chain_answer`):
    `rows[i]` is in flight as `call`; `committing` while its step waits for the group commit."""

    rows: list[Any]  # outbox rows, read by key (sqlite3.Row)
    i: int
    call: PendingCall | None = None
    committing: bool = False
    then: Any = None  # the store's post-commit callback for this chain


PAGE_FIRST = 50  # outbox rows in a replay's first page
PAGE = 500  # ... and in each next one


class _ReadAhead:
    """A replay's next outbox page: armed with the seq whose sending starts the read (`sent`) and
    the last seq of the current page; `take` returns the page (reading it now if it was not)."""

    def __init__(self, store: Any, charger_id: str) -> None:
        self.store = store
        self.charger_id = charger_id
        self.armed_at: int | None = None
        self.after = 0
        self.future: asyncio.Future[list[Any]] | None = None

    def arm(self, at: int, after: int) -> None:
        self.armed_at, self.after = at, after

    def sent(self, seq: int) -> None:
        if self.future is None and self.armed_at is not None and seq >= self.armed_at:
            self.future = asyncio.ensure_future(self.store.outbox_head(self.charger_id, PAGE, after=self.after))

    async def take(self) -> list[Any]:
        self.sent(self.armed_at or 0)
        future, self.future, self.armed_at = self.future, None, None
        assert future is not None
        return await future

    async def drop(self) -> None:
        future, self.future, self.armed_at = self.future, None, None
        if future is not None:
            future.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await future


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
        settings = hub.settings
        ws = settings.websocket
        self.link: ChargerLink | None = None
        self.to_charger = CallQueue(max_queued=ws.max_queued_calls, paused=True)
        self.to_upstream = CallQueue(max_queued=ws.max_queued_calls, paused=True)
        self.relaying = bool(settings.upstream.url)
        self.strict = self.relaying and settings.offline_mode(charger_id) == "strict"
        self.upstream_state = UpstreamState.CONNECTING if self.relaying else UpstreamState.STANDALONE
        self.upstream_changed_at = _utcnow()
        self._upstream: UpstreamLink | None = None
        self._adopted: UpstreamLink | None = None  # a link dialled before the charger was accepted (strict)
        self._upstream_task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()  # replay sends started from the commit callback (kept referenced)
        self._chain: _Chain | None = None  # the replay's run of plain rows the reader may continue
        self._ahead: _ReadAhead | None = None  # the replay's next page
        self._chains = getattr(hub.store, "outbox_step_then", None) is not None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.log = logging.LoggerAdapter(log, {"charger_id": charger_id})
        # offline operation
        self.backlog = False  # the outbox (or a boot to replay) is not empty
        self._appending = 0  # outbox appends in progress
        self._append_gen = 0  # appends started so far
        self.local_to_csms: dict[int, int | None] = {}  # 1.6 ids the gateway issued -> the CSMS's
        self.csms_to_local: dict[int, int] = {}
        self.stopped_local: set[int] = set()  # local ids whose StopTransaction has been seen
        off = settings.offline
        self._replay_actions = frozenset(off.replay_actions)
        self.counters = {"buffered": 0, "dropped": 0, "replayed": 0, "dead_letters": 0, "possible_duplicates": 0,
                         "invalid_replayed_starts": 0}

    async def load(self) -> None:
        """Read what the store keeps for this charger (the id map, whether a backlog waits)."""
        if not self.relaying:
            return
        for local_id, csms_id in await self.hub.store.tx_map(self.charger_id):
            self._bind(local_id, csms_id)
        self.backlog = await self.hub.store.has_backlog(self.charger_id)

    def _bind(self, local_id: int, csms_id: int | None) -> None:
        self.local_to_csms[local_id] = csms_id
        if csms_id is not None:
            self.csms_to_local[csms_id] = local_id

    def _unbind(self, local_id: int) -> None:
        csms_id = self.local_to_csms.pop(local_id, None)
        if csms_id is not None:
            self.csms_to_local.pop(csms_id, None)
        self.stopped_local.discard(local_id)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link is not None

    @property
    def upstream_online(self) -> bool:
        return self.upstream_state is UpstreamState.ONLINE

    async def attach(self, link: ChargerLink, upstream: UpstreamLink | None = None) -> None:
        """A (new) connection from the charger. The newest connection wins."""
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

    def start_upstream(self) -> None:
        if self.relaying and self._upstream_task is None and not self._closed:
            self._upstream_task = asyncio.create_task(self._run_upstream(), name=f"upstream:{self.charger_id}")

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
        if self.relaying and not self.strict and self.backlog and not self._closed:
            self.log.info("charger left with %s; its outbox is replayed first", "a backlog")
            return False
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
                call.origin.future.set_exception(NotConnected(f"{self.charger_id} session closed"))
        upstream = self._upstream or self._adopted
        current = asyncio.current_task()
        for task in (self._upstream_task, self._replay_task):
            if task is not None and task is not current:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the task is being torn down
                    pass
        self._upstream_task = self._replay_task = None
        if upstream is not None:
            await upstream.close()
        self._upstream = self._adopted = None
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
        if self.version.is_2x and action.endswith(SIGNED):
            # J201 §7 signed message: the payload is a JWS for the CSMS, relayed untouched (not validated)
            base = action[: -len(SIGNED)]
            if not schemas.knows(self.version, base):
                return ErrorCode.NOT_IMPLEMENTED, f"action {action!r} is not known in {self.version.value}"
            if not schemas.charger_may_send(self.version, base):
                return ErrorCode.NOT_SUPPORTED, f"{base} is not sent by a charging station"
            if not (self.upstream_online or self.upstream_state is UpstreamState.CONNECTING):
                return ErrorCode.INTERNAL_ERROR, "signed messages are relayed only while the CSMS is connected"
            return None
        if not schemas.knows(self.version, action):
            return ErrorCode.NOT_IMPLEMENTED, f"action {action!r} is not known in {self.version.value}"
        if not schemas.charger_may_send(self.version, action):
            return ErrorCode.NOT_SUPPORTED, f"{action} is not sent by a charging station"
        violation = schemas.validate(self.version, action, frame.payload)
        if violation is not None:
            return violation.code, violation.description
        return None

    def _kind(self, frame: Call) -> Kind:
        return T.classify(self.version, frame.action, frame.payload, replay_actions=self._replay_actions,
                          meter_values_without_transaction=self.hub.settings.offline.meter_values_without_transaction)

    async def _charger_call(self, frame: Call) -> None:
        problem = self._check_call(frame)
        if problem is not None:
            self.log.warning("refused %s %s from charger: %s %s", frame.action, frame.message_id, problem[0].value,
                             problem[1])
            if not frame.send:
                await self._send_charger(F.call_error(self.version, frame.message_id, *problem))
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None,
                       problem[0].spell(self.version), "gateway", _utcnow())
            return
        if frame.send:  # 2.1 SEND: never answered, exempt from the one-CALL rule
            if self._upstream is not None:
                await self._send_upstream_raw(frame.raw)
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None, None, "", _utcnow())
            return
        if not self.relaying:
            await self._answer_locally(frame, Kind.LIVE)
            return
        # classified only when it matters (a backlog, or the gateway answering): not on the live path
        kind = self._kind(frame) if self.backlog or not self.upstream_online else Kind.LIVE
        if self.upstream_state is UpstreamState.CONNECTING and not self.backlog:
            # the link is being set up: wait for it (on failure the gateway answers, see _run_upstream)
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=frame.raw, origin=Origin.CHARGER,
                               timeout=self.hub.settings.upstream.call_timeout, request=frame.payload,
                               received_at=_utcnow(), source=frame)
            await self._submit_upstream(call)
            return
        if self.upstream_online and not (self.backlog and kind is not Kind.LIVE):
            text = frame.raw
            if self.version is V16 and self.local_to_csms:
                tid = T.charger_tx_id(frame.action, frame.payload)
                if tid is not None and tid in self.local_to_csms:
                    csms_id = self.local_to_csms[tid]
                    if csms_id is None:  # its start never reached the CSMS: keep it in order behind it
                        await self._answer_locally(frame, self._kind(frame))
                        return
                    text = F.call(frame.message_id, frame.action, T.with_charger_tx_id(frame.action, frame.payload, csms_id))
            if self.version is V16 and frame.action == "StopTransaction":
                tid = frame.payload.get("transactionId")
                if isinstance(tid, int) and tid in self.local_to_csms:
                    self.stopped_local.add(tid)
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=text, origin=Origin.CHARGER,
                               timeout=self.hub.settings.upstream.call_timeout, request=frame.payload,
                               received_at=_utcnow(), source=frame)
            await self._submit_upstream(call)
            return
        if self.strict:
            await self._send_charger(F.call_error(self.version, frame.message_id, ErrorCode.INTERNAL_ERROR,
                                                  "CSMS unreachable"))
            return
        await self._answer_locally(frame, kind)

    async def _answer_locally(self, frame: Call, kind: Kind, *, uncertain: bool = False) -> None:
        """The gateway answers; what must reach the CSMS later is committed first (invariant 1).

        `uncertain`: the message was sent to the CSMS and the link died before its answer; it is
        stored as already attempted, so its replay is reported as a possible duplicate."""
        received = _utcnow()
        store = self.hub.store
        tx_id: int | None = None
        if self.relaying and kind.stored:
            off = self.hub.settings.offline
            row = {"charger_id": self.charger_id, "protocol": self.version.value, "action": frame.action,
                   "payload": F.payload_text(frame.raw), "kind": kind.value,
                   "connector": T.status_key(self.version, frame.payload) if kind is Kind.STATUS else None,
                   "received_at": received.isoformat()}
            id_range = (off.transaction_id_min, off.transaction_id_max) if (
                self.version is V16 and kind is Kind.START) else None
            self.backlog = True
            self._appending += 1
            self._append_gen += 1
            try:
                seq, tx_id = await store.outbox_append(row, max_per_charger=off.max_messages_per_charger,
                                                       max_total=off.max_messages_total, id_range=id_range)
            finally:
                self._appending -= 1
            if seq is None:
                self.counters["dropped"] += 1
                self.log.warning("outbox full: %s not stored for the CSMS (answered locally)", frame.action)
            else:
                self.counters["buffered"] += 1
                if tx_id is not None:
                    self._bind(tx_id, None)
                if uncertain:
                    await store.outbox_mark_sent(seq, frame.message_id)
                if self.version is V16 and frame.action == "StopTransaction":
                    tid = frame.payload.get("transactionId")
                    if isinstance(tid, int) and tid in self.local_to_csms:
                        self.stopped_local.add(tid)
                self._maybe_replay()
        elif self.relaying and kind is Kind.BOOT:
            self.backlog = True
            self._append_gen += 1
            await store.pending_boot_set(self.charger_id, self.version.value, F.payload_text(frame.raw),
                                         received.isoformat())
            self._maybe_replay()
        payload = await self.hub.local.answer(self.version, frame, self.charger_id, transaction_id=tx_id)
        await self._send_charger(F.call_result(frame.message_id, payload))
        self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, payload, None, "gateway", received)

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
            if type(frame) is F.CallResult and frame.payload.get("status") == ACCEPTED:
                await self._observe_command(done)
        elif isinstance(done.origin, GatewayCall):
            _settle(done.origin.future, frame)
        self._emit_reply(done, frame, "charger")

    async def _observe_command(self, call: PendingCall) -> None:
        """Keep the gateway's copy of what the CSMS configured on the charger (it was accepted)."""
        auth = self.hub.auth
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
                await self._send_upstream_raw(exc.reply)
            return
        if type(frame) is Call:
            if frame.send:
                if self.link is not None:
                    await self._send_charger(frame.raw)
                return
            out = frame.raw
            if self.version is V16 and self.csms_to_local:
                tid = T.csms_tx_id(frame.action, frame.payload)
                if tid is not None and tid in self.csms_to_local:
                    # the charger knows this transaction by the id the gateway gave it
                    out = F.call(frame.message_id, frame.action,
                                 T.with_csms_tx_id(frame.action, frame.payload, self.csms_to_local[tid]))
            call = PendingCall(message_id=frame.message_id, action=frame.action, frame=out, origin=Origin.CSMS,
                               timeout=self.hub.settings.websocket.call_timeout, request=frame.payload,
                               received_at=_utcnow())
            await self._submit_charger(call)
            return
        chain = self._chain
        if chain is not None and self._chain_answer(chain, frame):
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
            if type(frame) is F.CallResult:
                await self._learn(done, frame.payload)
        elif isinstance(done.origin, GatewayCall):
            _settle(done.origin.future, frame)  # never forwarded (J201 §6.4)
        self._emit_reply(done, frame, "csms")

    async def _learn(self, call: PendingCall, response: dict[str, Any]) -> None:
        """What a CSMS answer to a relayed charger message teaches the gateway."""
        if call.action in ("Authorize", "StartTransaction", "TransactionEvent") and isinstance(call.request, dict):
            tag = token_of(self.version, call.request)
            info = info_of(self.version, response)
            if tag is not None and info is not None:
                await self.hub.auth.learn(self.version, tag, info)
        if self.version is V16 and call.action == "StopTransaction" and isinstance(call.request, dict):
            tid = call.request.get("transactionId")
            if isinstance(tid, int) and tid in self.local_to_csms:
                # the CSMS acknowledged the stop of a transaction that started offline: unmap it
                self._unbind(tid)
                await self.hub.store.tx_forget(self.charger_id, tid)
        if call.action == "BootNotification":
            await self.hub.store.pending_boot_clear(self.charger_id)

    # -- replay ---------------------------------------------------------------------------------

    def _maybe_replay(self) -> None:
        if self.backlog and self.upstream_online and self._replay_task is None and not self._closed:
            self._replay_task = asyncio.create_task(self._replay(), name=f"replay:{self.charger_id}")

    async def _replay(self) -> None:
        """Drain the outbox into the CSMS: the latest boot first, then FIFO, one CALL in flight."""
        store = self.hub.store
        try:
            boot = await store.pending_boot(self.charger_id)
            if boot is not None:
                outcome = await self._replay_call("BootNotification", boot["payload"], self.hub.ids.next())
                if outcome is None:
                    return
                await store.pending_boot_clear(self.charger_id)
                if outcome[0] == "result" and outcome[1].get("status") != ACCEPTED:
                    self.log.warning("the CSMS answered the replayed BootNotification with %s", outcome[1].get("status"))
            pending: tuple[int, Any, Any] | None = None  # the answered row, acknowledged with the next step
            ahead = _ReadAhead(store, self.charger_id)  # the next page, read while this one replays
            self._ahead = ahead
            # the link's synchronous lane, for the replay only (live traffic never uses it)
            lane = self._upstream if self._chains and hasattr(self._upstream, "set_fast_reader") else None
            if lane is not None:
                lane.set_fast_reader(self._fast_from_upstream)
            try:
                while self.upstream_online and not self._closed:
                    gen = self._append_gen
                    if ahead.armed_at is not None:
                        rows = await ahead.take()
                    else:
                        await self._flush(pending)  # before reading: the head must not hold an answered row
                        pending = None
                        gen = self._append_gen
                        # a short first page gets the replay going (the page reads of all chargers
                        # share the store's one thread), the next ones are long and read ahead
                        rows = await store.outbox_head(self.charger_id, PAGE_FIRST)
                    if len(rows) >= PAGE_FIRST:
                        # the next page (rows after this one's last) is read once half of this one
                        # is sent: the replay never waits for it, and the chargers' reads (on the
                        # store's one thread, under its lock) spread out instead of coming together
                        ahead.arm(rows[len(rows) // 2]["seq"], rows[-1]["seq"])
                    if not rows:
                        if self._appending:
                            await asyncio.sleep(0.005)
                            continue
                        if gen == self._append_gen and not await store.has_backlog(self.charger_id) \
                                and gen == self._append_gen and not self._appending:
                            self.backlog = False
                            self.log.info("outbox replayed")
                            store.outbox_purge_later(self.charger_id)
                            break
                        continue
                    i = 0
                    while i < len(rows):
                        ok, pending, i = await self._replay_row(rows, i, pending)
                        if not ok:
                            return
            finally:
                if lane is not None:
                    lane.set_fast_reader(None)
                self._ahead = None
                await ahead.drop()
                await self._flush(pending)
        finally:
            self._replay_task = None
            if not self.backlog and self.link is None and not self._closed:
                await self.hub.forget(self)

    def _acked(self, ack: tuple[int, Any, Any]) -> None:
        stopped = ack[2]
        if stopped is not None:
            self._unbind(stopped[1])

    async def _replay_row(self, rows: list[Any], i: int, pending: tuple[int, Any, Any] | None
                          ) -> tuple[bool, tuple[int, Any, Any] | None, int]:
        """Send stored message `rows[i]`; `pending` is the previous answered row, acknowledged in
        the same commit that marks this one as sent. A plain row followed by plain rows is sent as
        a chain: the upstream reader acknowledges each and sends the next itself (`_chain_answer`)
        until something unusual happens, which comes back here for the row then in flight.
        Returns (False, ...) when the link is gone (the row in flight stays for next time), the
        row to acknowledge next and the index of the next row."""
        store = self.hub.store
        row = rows[i]
        action, text = row["action"], row["payload"]
        local_tid: int | None = None
        if self.version is V16 and action in T.CHARGER_TX_ACTIONS and self.local_to_csms:
            payload = orjson.loads(text)
            local_tid = T.charger_tx_id(action, payload)
            if local_tid is not None and local_tid in self.local_to_csms:
                csms_id = self.local_to_csms[local_tid]
                if csms_id is None:
                    await self._flush(pending)
                    await self._dead_letter(row, "its StartTransaction was not accepted by the CSMS")
                    return True, None, i + 1
                text = orjson.dumps(T.with_charger_tx_id(action, payload, csms_id)).decode()
            else:
                local_tid = None
        elif self.version.is_2x and action == "TransactionEvent":
            text = orjson.dumps(T.mark_offline(orjson.loads(text))).decode()
        message_id = row["message_id"]  # derived from the row's seq: the same when it is sent again
        attempts = row["attempts"]
        while True:
            if attempts:
                # it was on its way when the link or the gateway went down: the CSMS may have it
                self.counters["possible_duplicates"] += 1
                self.log.warning("replaying %s (outbox #%d) again: it was in flight when the link or the gateway "
                                 "went down, so the CSMS may receive it twice (same message id %s)",
                                 action, row["seq"], message_id)
            await store.outbox_step(self.charger_id, pending, row["seq"])
            if self._ahead is not None:
                self._ahead.sent(row["seq"])
            if pending is not None:
                self._acked(pending)
                pending = None
            chain = None
            if not attempts and self._chains and i + 1 < len(rows) and self._plain(row):
                chain = _Chain(rows, i)
                chain.then = functools.partial(self._chain_committed, chain)
            attempts += 1
            outcome = await self._replay_call(action, text, message_id, chain)
            if chain is not None and chain.i != i:
                # the reader acknowledged rows[i:chain.i] (committed) and sent rows[chain.i]: the outcome is its
                i = chain.i
                row = rows[i]
                action, text, message_id, attempts = row["action"], row["payload"], row["message_id"], 1
            if outcome is not None:
                break
            if not self.upstream_online or self._closed:
                return False, None, i
            await asyncio.sleep(1.0)  # the CSMS did not answer in time: try again, once the line is free
        if outcome[0] == "error":
            await self._dead_letter(row, outcome[1])
            return True, None, i + 1
        response = outcome[1]
        bind = stopped = None
        if self.version is V16 and action == "StartTransaction" and row["local_tx"] is not None:
            local_id = int(row["local_tx"])
            csms_id = response.get("transactionId")
            status = (response.get("idTagInfo") or {}).get("status")
            if isinstance(csms_id, int):
                off = self.hub.settings.offline
                if off.transaction_id_min <= csms_id <= off.transaction_id_max:
                    self.log.error("the CSMS issued transaction id %d inside the gateway's offline range; "
                                   "change [offline].transaction_id_min/max", csms_id)
                self._bind(local_id, csms_id)
                bind = (self.charger_id, local_id, csms_id, status)
            await self._after_replayed_start(local_id, status, orjson.loads(row["payload"]))
        if local_tid is not None and action == "StopTransaction":
            stopped = (self.charger_id, local_tid)
        self.counters["replayed"] += 1
        return True, (row["seq"], bind, stopped), i + 1

    def _plain(self, row: Any) -> bool:
        """A row sent as stored, whose answer teaches nothing: its acknowledgement is the seq alone."""
        if row["attempts"]:
            return False
        action = row["action"]
        if self.version is V16:
            return action != "StartTransaction" and not (action in T.CHARGER_TX_ACTIONS and self.local_to_csms)
        return action != "TransactionEvent"

    def _chain_answer(self, chain: _Chain, frame: F.CallResult | CallError) -> bool:
        """The steady state of the replay, on the upstream reader: the CSMS answered the plain row
        in flight with a CALLRESULT, the next row of the page is plain and nothing waits for the
        line. Its acknowledgement joins the pending group commit together with "the next row is
        sent"; the store's callback sends that row right after the commit (`_chain_committed`).
        The call stays in flight, re-labelled as the next row. Anything else returns False and
        takes the general path (which ends the chain: the replay task gets the outcome)."""
        call = chain.call
        if type(frame) is not F.CallResult or call is None or frame.message_id != call.message_id:
            return False
        return self._chain_next(chain)

    def _chain_next(self, chain: _Chain) -> bool:
        """`_chain_answer` once the answer is known to be the CALLRESULT of the call in flight."""
        call = chain.call
        queue = self.to_upstream
        if call is None or queue.in_flight is not call or chain.committing or queue.queued or self._closed:
            return False
        i = chain.i + 1
        rows = chain.rows
        if i >= len(rows) or not self._plain(rows[i]):
            return False
        done, row = rows[chain.i], rows[i]
        chain.i = i
        if self._ahead is not None:
            self._ahead.sent(row["seq"])
        self.counters["replayed"] += 1
        message_id, action = row["message_id"], row["action"]
        call.message_id = message_id
        call.action = action
        call.frame = F.call_with_payload_text(message_id, action, row["payload"])
        now = self._loop.time()
        call.sent_at = now
        call.deadline = now + call.timeout  # the line stays taken: live calls queue behind it
        chain.committing = True
        self.hub.store.outbox_step_then(self.charger_id, (done["seq"], None, None), row["seq"], chain.then)  # type: ignore[attr-defined]
        return True

    def _chain_committed(self, chain: _Chain, error: Exception | None) -> None:
        """Right after the commit that acknowledged the previous row and marked this one as sent
        (in the store's loop callback): send it. Not if the link went down or the session closed
        meanwhile: the replay task then takes the row in flight as it does any other."""
        chain.committing = False
        call = chain.call
        queue = self.to_upstream
        if self._chain is not chain or call is None or queue.in_flight is not call or self._closed:
            return
        if error is not None:  # nothing was sent: give the line back; the replay task sees the error
            done, nxt = queue.complete(call.message_id, self._loop.time())
            if nxt is not None:
                self._drive(self._send_upstream_raw(nxt.frame))
            if isinstance(call.origin, GatewayCall) and not call.origin.future.done():
                call.origin.future.set_exception(error)
            return
        link = self._upstream
        if link is None or not getattr(link, "send_now", None) or not link.send_now(call.frame):
            self._drive(self._send_upstream_raw(call.frame))

    def _fast_from_upstream(self, text: str) -> bool:
        """The link's synchronous lane (adapters/upstream_ws.py): the answer to a chained replay
        row is taken as it is parsed, with no hop through the reader task. Anything else: False,
        and the reader gets it as usual (the link hands over only while the reader waits idle)."""
        chain = self._chain
        if chain is None or chain.committing or chain.call is None or not text.startswith("[3"):
            return False
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        # a CALLRESULT for the call in flight (its payload teaches nothing: the row is plain)
        if type(data) is not list or len(data) != 3 or data[0] != 3 or data[1] != chain.call.message_id \
                or type(data[2]) is not dict:
            return False
        return self._chain_next(chain)

    def _drive(self, coro: Any) -> None:
        """Run a send coroutine from a plain callback: as a task (asyncio starts tasks in the order
        they are made, and a charger has one replayed CALL in flight, so order holds)."""
        task = self._loop.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _flush(self, pending: tuple[int, Any, Any] | None) -> None:
        if pending is not None:
            await self.hub.store.outbox_step(self.charger_id, pending, None)
            self._acked(pending)

    async def _after_replayed_start(self, local_id: int, status: Any, request: dict[str, Any]) -> None:
        tag = request.get("idTag")
        if isinstance(tag, str) and isinstance(status, str):
            await self.hub.auth.learn(self.version, tag, {"status": status})
        if status == ACCEPTED:
            return
        self.counters["invalid_replayed_starts"] += 1
        running = local_id not in self.stopped_local
        self.log.warning("the CSMS answered the replayed start of transaction %d (id tag %s) with %s%s",
                         local_id, "set" if tag else "none", status,
                         "; stopping it" if running and self.hub.settings.offline.stop_on_invalid_replayed_start
                         else "")
        if running and self.hub.settings.offline.stop_on_invalid_replayed_start and self.link is not None:
            asyncio.create_task(self._remote_stop(local_id))

    async def _remote_stop(self, local_id: int) -> None:
        try:
            answer = await self.call_charger("RemoteStopTransaction", {"transactionId": local_id})
            self.log.info("RemoteStopTransaction %d: %s", local_id, answer.get("status"))
        except Exception as exc:  # noqa: BLE001 - reported, nothing else to do
            self.log.warning("RemoteStopTransaction %d failed: %s", local_id, exc)

    async def _dead_letter(self, row: dict[str, Any], error: str) -> None:
        self.counters["dead_letters"] += 1
        self.log.error("outbox #%d %s set aside (dead letter): %s", row["seq"], row["action"], error)
        await self.hub.store.outbox_dead(row["seq"], error)

    async def _replay_call(self, action: str, payload_text: str, message_id: str,
                           chain: _Chain | None = None) -> tuple[str, Any] | None:
        """CALL the CSMS with a stored payload. ("result", payload), ("error", text), or None if the
        link went away or the CSMS did not answer in time. With `chain`, the reader may continue
        with the next rows of the page; the outcome is then that of `chain.rows[chain.i]`."""
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        # request None: not shown to observers (so no receipt time either)
        call = PendingCall(message_id=message_id, action=action,
                           frame=F.call_with_payload_text(message_id, action, payload_text),
                           origin=GatewayCall(future), timeout=self.hub.settings.upstream.call_timeout)
        if chain is not None:
            chain.call = call
            self._chain = chain
        try:
            await self._submit_upstream(call)
            try:
                return "result", await future
            except CallFailed as exc:
                return "error", f"{exc.code}: {exc.description}"
            except (CallTimeout, NotConnected, Busy):
                return None
        finally:
            if chain is not None:
                if self._chain is chain:
                    self._chain = None
                while chain.committing:  # the last step's commit comes first (it runs in this loop iteration)
                    await asyncio.sleep(0)

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
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for this charger", busy=True)
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self._send_charger(nxt.frame)

    async def _submit_upstream(self, call: PendingCall) -> None:
        try:
            nxt = self.to_upstream.submit(call, self._loop.time())
        except QueueFull:
            await self._fail(call, ErrorCode.GENERIC_ERROR, "too many calls waiting for the CSMS", busy=True)
            return
        self._arm(call.queue_deadline)
        if nxt is not None:
            await self._send_upstream_raw(nxt.frame)

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

    async def _fail(self, call: PendingCall, code: ErrorCode, description: str, *, timed_out: bool = False,
                    busy: bool = False, uncertain: bool = False) -> None:
        """A call that will get no answer from its peer: tell whoever made it."""
        self.log.warning("%s %s: %s", call.action, call.message_id, description)
        origin = call.origin if isinstance(call.origin, Origin) else Origin.GATEWAY
        if call.origin is Origin.CHARGER:
            if self.relaying and not self.strict and isinstance(call.source, Call) and not busy \
                    and not call.action.endswith(SIGNED):  # only the CSMS can answer a signed message
                # buffer mode: the gateway answers instead of the CSMS (and stores what must reach it)
                await self._answer_locally(call.source, self._kind(call.source), uncertain=uncertain or timed_out)
                return
            await self._send_charger(F.call_error(self.version, call.message_id, code, description))
        elif call.origin is Origin.CSMS:
            if self._upstream is not None:
                await self._send_upstream_raw(F.call_error(self.version, call.message_id, code, description))
        elif isinstance(call.origin, GatewayCall) and not call.origin.future.done():
            exc: Exception
            if timed_out:
                exc = CallTimeout(description)
            elif busy:
                exc = Busy(description)
            else:
                exc = NotConnected(description)
            call.origin.future.set_exception(exc)
        if call.request is None:
            return
        self._emit(origin, call.action, call.message_id, call.request or {}, None,
                   "timeout" if timed_out else code.value, "gateway", call.received_at or _utcnow())

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
            self.upstream_changed_at = _utcnow()
            self.log.info("upstream %s", state.value)
            self.hub.notify(self, "upstream")

    async def _dial(self) -> UpstreamLink:
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            return adopted
        return await self.hub.dial(self.charger_id, self.version)

    async def _run_upstream(self) -> None:
        settings = self.hub.settings.upstream
        attempt = 0
        while not self._closed:
            if attempt == 0:  # retries after a failure stay "offline": the gateway keeps answering
                self._set_upstream_state(UpstreamState.CONNECTING)
            try:
                link = await self._dial()
            except LinkFailed as exc:
                self._set_upstream_state(UpstreamState.OFFLINE)
                if self.strict:
                    await self._strict_close(f"CSMS unreachable ({exc})")
                    return
                for waiting in self.to_upstream.remove_queued(lambda c: c.origin is Origin.CHARGER):
                    await self._fail(waiting, ErrorCode.INTERNAL_ERROR, "CSMS unreachable")
                attempt += 1
                delay = backoff_delay(attempt, settings.reconnect_min, settings.reconnect_max, self.hub.rng)
                self.log.warning("upstream connect failed (%s); retry in %.1f s", exc, delay)
                await self.hub.backoff(delay)
                continue
            self.hub.csms_reached()
            attempt = 0
            self._upstream = link
            self._set_upstream_state(UpstreamState.ONLINE)
            self._maybe_replay()
            nxt = self.to_upstream.resume(self._loop.time())
            if nxt is not None:
                await self._send_upstream(nxt)
            recv = link.recv
            try:
                while True:
                    await self.from_upstream(await recv())
            except LinkClosed:
                pass
            finally:
                self._upstream = None
                lost = self.to_upstream.pause()
            if self._closed:
                return
            self._set_upstream_state(UpstreamState.OFFLINE)
            await link.close()
            if lost is not None:
                await self._fail(lost, ErrorCode.INTERNAL_ERROR, "CSMS connection lost before it answered",
                                 uncertain=True)
            for waiting in self.to_upstream.remove_queued(lambda c: c.origin is Origin.CHARGER):
                await self._fail(waiting, ErrorCode.INTERNAL_ERROR, "CSMS connection lost")
            if self.strict:
                await self._strict_close("CSMS connection lost")
                return
            attempt = 1
            await asyncio.sleep(backoff_delay(attempt, settings.reconnect_min, settings.reconnect_max, self.hub.rng))

    async def _strict_close(self, reason: str) -> None:
        """Strict mode (2.0.1 Part 4 §6.3): no upstream, no charger connection; it queues itself."""
        self.log.warning("strict mode: closing the charger connection: %s", reason)
        link = self.link
        if link is not None:
            await link.close(1013, "CSMS unreachable, try again later")
        self._upstream_task = None
        await self.hub.forget(self)

    # -- observers ------------------------------------------------------------------------------

    def _emit(self, origin: Origin, action: str, message_id: str, request: dict[str, Any],
              response: dict[str, Any] | None, error: str | None, answered_by: str, received_at: datetime) -> None:
        if not self.hub.observers:
            return
        self.hub.publish(self, Exchange(
            charger_id=self.charger_id, version=self.version, origin=origin.value, action=action,
            message_id=message_id, request=request, response=response, error=error, answered_by=answered_by,
            received_at=received_at,
        ))

    def _emit_reply(self, call: PendingCall, frame: F.CallResult | CallError, answered_by: str) -> None:
        if not self.hub.observers or call.request is None:
            return
        origin = call.origin if isinstance(call.origin, Origin) else Origin.GATEWAY
        if isinstance(frame, CallError):
            self._emit(origin, call.action, call.message_id, call.request or {}, None, frame.code, answered_by,
                       call.received_at or _utcnow())
        else:
            self._emit(origin, call.action, call.message_id, call.request or {}, frame.payload, None, answered_by,
                       call.received_at or _utcnow())

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


def _settle(future: asyncio.Future[dict[str, Any]], frame: F.CallResult | CallError) -> None:
    if future.done():
        return
    if isinstance(frame, CallError):
        future.set_exception(CallFailed(frame.code, frame.description, frame.details))
    else:
        future.set_result(frame.payload)


@dataclass(slots=True)
class _Retired:
    """What observers get for a forgotten charger that had no session."""

    charger_id: str
    connected: bool = False


class Hub:
    """All sessions of the site, and what they share: settings, schemas, the store, the upstream
    connector, the local CSMS and authorizer, the gateway's message ids and the site-wide cap on
    upstream dials."""

    def __init__(self, settings: Settings, store: Store, schemas: SchemaRegistry,
                 connector: UpstreamConnector | None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.schemas = schemas
        self._connector = connector
        self.auth = LocalAuthorizer(settings, store)
        self.local = LocalCsms(settings, store, schemas, self.auth)
        self.ids = MessageIds(secrets.token_hex(6))
        self.dial_gate = asyncio.Semaphore(settings.upstream.max_concurrent_dials)
        self.rng = rng or random.Random()
        self.sessions: dict[str, ChargerSession] = {}
        self.observers: list[SessionObserver] = []
        self.control: Any = None  # gateway.control.engine.ControlEngine, when local control is wired
        self._csms_back: asyncio.Event | None = None

    async def backoff(self, delay: float) -> None:
        """Wait out a session's backoff after a failed dial: `delay` seconds, or less if another
        session reaches the CSMS meanwhile (`csms_reached`)."""
        if self._csms_back is None:
            self._csms_back = asyncio.Event()
        back = self._csms_back
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await back.wait()

    def csms_reached(self) -> None:
        """A dial got through: the CSMS is there. The sessions waiting out a backoff dial now
        (through the dial gate, `[upstream].max_concurrent_dials` at a time) instead of each at its
        own timer, spread over up to `reconnect_max`: the outboxes start replaying together and the
        chargers are back online at the CSMS sooner."""
        back, self._csms_back = self._csms_back, None
        if back is not None:
            back.set()

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

    async def dial(self, charger_id: str, version: OcppVersion) -> UpstreamLink:
        """Open the charger's upstream link (within the site-wide cap on simultaneous dials)."""
        charger = self.settings.charger(charger_id)
        password = charger.upstream_password.get_secret_value() if charger else ""
        async with self.dial_gate:
            return await self.connector.connect(charger_id, version, password or None)

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

    async def attach(self, charger_id: str, version: OcppVersion, link: ChargerLink,
                     upstream: UpstreamLink | None = None) -> ChargerSession:
        session = self.sessions.get(charger_id)
        if session is not None and session.version is not version:
            # a new protocol version needs a new upstream link: end the old session entirely
            del self.sessions[charger_id]
            await session.close()
            self.notify(session, "disconnected")
            session = None
        if session is None:
            session = ChargerSession(self, charger_id, version)
            self.sessions[charger_id] = session
            await session.load()
        await session.attach(link, upstream)
        self.notify(session, "connected")
        try:
            await self.store.charger_seen(charger_id, version.value, link.transport, _utcnow().isoformat())
        except Exception:  # noqa: BLE001 - the registry is informative; never refuse a charger for it
            log.exception("could not record charger %s", charger_id)
        return session

    async def detach(self, session: ChargerSession, link: ChargerLink) -> None:
        if await session.detach(link):
            if self.sessions.get(session.charger_id) is session:
                del self.sessions[session.charger_id]
        self.notify(session, "disconnected")

    async def forget(self, session: ChargerSession) -> None:
        """A session ends on its own (outbox replayed without a charger; strict mode closed it)."""
        if self.sessions.get(session.charger_id) is session:
            del self.sessions[session.charger_id]
        await session.close()

    async def forget_charger(self, charger_id: str) -> None:
        """An operator retires a charger: its connection and upstream link are closed and the
        observers drop what they keep about it (retained MQTT state, Home Assistant discovery, the
        status page). Its outbox and transaction log stay: nothing accepted is dropped, and a
        backlog is replayed after the next start. It comes back if it connects again."""
        session = self.sessions.pop(charger_id, None)
        if session is not None:
            await session.close()
            self.notify(session, "disconnected")
        self.notify(session or _Retired(charger_id), "forgotten")

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        for session in sessions:  # observers (retained MQTT state, metrics) see every charger leave
            self.notify(session, "disconnected")
