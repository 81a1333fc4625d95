"""The outbox of one charger: what the gateway answers for the CSMS is stored first (`keep`), and
goes to the CSMS in order, one CALL in flight, when the link is back (invariant 1: nothing
accepted is lost).

`Replayer` drains the charger's outbox: the latest stored BootNotification first, then the rows in
seq order. It talks to its session through `ReplayHost` (the upstream queue and link, the relay's
state) and to the store through the `Store` port. The steady state is fast: a run of plain rows
(sent as stored, answers that teach nothing) is a *chain* the upstream reader continues by itself,
each answer acknowledged in the store's next group commit together with "the next row is sent",
and the next row written from the commit's callback (`FastUpstreamLane.send_now`), with no task
switch per message; the CSMS's answer may be taken on the link's synchronous lane as websockets
parses it (`FastUpstreamLane.set_fast_reader`). The next page of rows is read while the current
one replays (`_ReadAhead`). Anything unusual (an error, a timeout, a 1.6 start whose answer binds
an id, a retried row) ends the chain and goes through the replay task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.errors import Busy, CallFailed, CallTimeout, GatewayError, NotConnected, StoreWriteFailed
from gateway.ports import Ack, FastUpstreamLane, OutboxRow, Store, UpstreamLink
from gateway.protocol import frames as F
from gateway.protocol import transactions as T
from gateway.protocol.frames import Call, CallError, CallResult, OcppVersion
from gateway.protocol.relay import ACCEPTED, Relay
from gateway.protocol.rpc import PendingCall
from gateway.protocol.transactions import Kind

if TYPE_CHECKING:
    from gateway.context import SessionContext

PAGE_FIRST = 50  # outbox rows in a replay's first page
PAGE = 500  # ... and in each next one
STORE_RETRY = 1.0  # s before a replay stopped by a store that cannot write tries again

Outcome = tuple[str, Any] | None  # ("result", payload) | ("error", text) | None: no answer


@dataclass(slots=True)
class GatewayCall:
    """Origin of a call the gateway itself makes; its answer stays in the gateway."""

    future: asyncio.Future[dict[str, Any]]


def settle(future: asyncio.Future[dict[str, Any]], frame: CallResult | CallError) -> None:
    """The answer to a gateway call reaches its caller."""
    if future.done():
        return
    if isinstance(frame, CallError):
        future.set_exception(CallFailed(frame.code, frame.description, frame.details))
    else:
        future.set_result(frame.payload)


class ReplayHost(Protocol):
    """What the replay needs from its charger's session."""

    charger_id: str
    version: OcppVersion
    relay: Relay
    counters: dict[str, int]
    log: logging.LoggerAdapter[logging.Logger]

    @property
    def connected(self) -> bool:
        """The charger is connected."""

    @property
    def upstream(self) -> UpstreamLink | None:
        """The live upstream link, if any."""

    async def submit_upstream(self, call: PendingCall) -> None: ...

    async def send_upstream_raw(self, text: str) -> None: ...

    async def call_charger(self, action: str, payload: dict[str, Any], timeout: float | None = None
                           ) -> dict[str, Any]: ...

    async def replay_finished(self) -> None:
        """The outbox is replayed (or the link went away); the session may end if the charger left."""

    @property
    def awaiting_late(self) -> bool:
        """A stored row is still on its way to the CSMS on the live link: the replay waits."""

    async def foreign_backlog(self, protocol: str) -> None:
        """The next stored row was stored in another OCPP version: it goes over a link of that
        version (the hub's replay-only session), this session's replay waits until then."""


@dataclass(slots=True)
class _Chain:
    """Plain rows of one outbox page replayed from the upstream reader (see `Replayer._chain_answer`):
    `rows[i]` is in flight as `call`; `committing` while its step waits for the group commit."""

    rows: list[OutboxRow]
    i: int
    call: PendingCall | None = None
    committing: bool = False
    then: Callable[[Exception | None], None] | None = None  # the store's post-commit callback


class _ReadAhead:
    """A replay's next outbox page: armed with the seq whose sending starts the read (`sent`) and
    the last seq of the current page; `take` returns the page (reading it now if it was not)."""

    def __init__(self, store: Store, charger_id: str) -> None:
        self.store = store
        self.charger_id = charger_id
        self.armed_at: int | None = None
        self.after = 0
        self.future: asyncio.Future[list[OutboxRow]] | None = None

    def arm(self, at: int, after: int) -> None:
        self.armed_at, self.after = at, after

    def sent(self, seq: int) -> None:
        if self.future is None and self.armed_at is not None and seq >= self.armed_at:
            self.future = asyncio.ensure_future(self.store.outbox_head(self.charger_id, PAGE, after=self.after))

    async def take(self) -> list[OutboxRow]:
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


class Appends:
    """Outbox appends of the session: how many are in progress, and a generation that counts every
    one started (the replay ends only when no append came in while it looked at an empty outbox)."""

    __slots__ = ("active", "gen")

    def __init__(self) -> None:
        self.active = 0
        self.gen = 0

    def begin(self) -> None:
        self.active += 1
        self.gen += 1

    def end(self) -> None:
        self.active -= 1


class Replayer:
    """The outbox replay of one session (see the module doc). `start()` when the link is up and a
    backlog waits; `answer(frame)` offers the CSMS's reply to the chain; `stop()` when it ends."""

    def __init__(self, host: ReplayHost, ctx: SessionContext) -> None:
        self.host = host
        self.ctx = ctx
        self.store = ctx.store
        self.relay = host.relay
        self.queue = host.relay.to_upstream
        self.charger_id = host.charger_id
        self.counters = host.counters
        self.log = host.log
        self.appends = Appends()
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()  # sends and stops started from callbacks (kept referenced)
        self._chain: _Chain | None = None  # the replay's run of plain rows the reader may continue
        self._ahead: _ReadAhead | None = None  # the replay's next page
        self._lane: FastUpstreamLane | None = None  # the link's synchronous lane, while replaying
        self._lane_link: UpstreamLink | None = None  # ... and the link it belongs to
        self._loop = asyncio.get_running_loop()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        relay = self.relay
        if relay.backlog and relay.online and self._task is None and not self.closed and not self.host.awaiting_late:
            self._task = asyncio.create_task(self._replay(), name=f"replay:{self.charger_id}")

    async def after_start(self, local_id: int, status: Any, request: dict[str, Any]) -> None:
        """The CSMS answered a 1.6 StartTransaction the gateway had answered itself (see `_after_replayed_start`)."""
        await self._after_replayed_start(local_id, status, request)

    async def stop(self) -> None:
        """The session closes: the replay ends where it is (the row in flight stays for next time)."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # sends and stops started from callbacks: a row they were sending stays for the next replay
        sends = [t for t in self._sends if t is not asyncio.current_task()]
        for t in sends:
            t.cancel()
        await asyncio.gather(*sends, return_exceptions=True)

    async def keep(self, frame: Call, kind: Kind, received: datetime, *, uncertain: bool = False,
                   sent_id: str | None = None) -> tuple[int | None, int | None]:
        """Commit what the gateway answers for the CSMS and must reach it later, before the charger
        gets the answer (invariant 1): a stored kind to the outbox, a BootNotification as the boot
        to replay. Returns (the outbox row's seq, the local 1.6 transaction id issued for a
        StartTransaction), each None when there is none. Raises StoreWriteFailed when the store
        cannot write (nothing kept).

        `uncertain`: the message was sent to the CSMS and the link died before its answer; it is
        stored as already attempted, so its replay is reported as a possible duplicate. `sent_id`:
        it is still on its way to the CSMS (answered at [upstream].answer_within): stored as sent
        with that message id in the same commit."""
        relay, store = self.relay, self.store
        version = relay.version
        tx_id: int | None = None
        seq: int | None = None
        if kind.stored:
            off = self.ctx.settings.offline
            row = {"charger_id": self.charger_id, "protocol": version.value, "action": frame.action,
                   "payload": F.payload_text(frame.raw), "kind": kind.value,
                   "connector": T.status_key(version, frame.payload) if kind is Kind.STATUS else None,
                   "received_at": received.isoformat(), "sent_id": sent_id}
            id_range = (off.transaction_id_min, off.transaction_id_max) if (
                version is OcppVersion.V16 and kind is Kind.START) else None
            relay.backlog = True
            appends = self.appends
            appends.begin()
            try:
                seq, tx_id = await store.outbox_append(row, max_per_charger=off.max_messages_per_charger,
                                                       max_total=off.max_messages_total, id_range=id_range)
            finally:
                appends.end()
            if seq is None:
                self.counters["dropped"] += 1
                self.log.warning("outbox full: %s not stored for the CSMS (answered locally)", frame.action)
            else:
                self.counters["buffered"] += 1
                if tx_id is not None:
                    relay.tx.bind(tx_id, None)
                if uncertain:
                    await store.outbox_mark_sent(seq, frame.message_id)
                relay.stored(frame)
                self.start()
        elif kind is Kind.BOOT:
            relay.backlog = True
            self.appends.gen += 1
            await store.pending_boot_set(self.charger_id, version.value, F.payload_text(frame.raw),
                                         received.isoformat())
            self.start()
        return seq, tx_id

    def answer(self, frame: CallResult | CallError) -> bool:
        """The CSMS's reply, offered to the chain first: True when it took it."""
        chain = self._chain
        return chain is not None and self._chain_answer(chain, frame)

    # -- the replay task --------------------------------------------------------------------------

    async def _replay(self) -> None:
        """Drain the outbox into the CSMS: the latest boot first, then FIFO, one CALL in flight."""
        host = self.host
        try:
            await self._replay_rows()
        except StoreWriteFailed:
            # the store cannot write (a full disk): nothing is lost, the rows stay; try again later
            self.log.warning("replay paused: the store cannot write; retrying in %g s", STORE_RETRY)
            self._retry_later()
        finally:
            self._task = None
            await host.replay_finished()

    def _retry_later(self) -> None:
        def again() -> None:
            if not self.closed:
                self.start()
        self._loop.call_later(STORE_RETRY, again)

    async def _replay_rows(self) -> None:
        store, host, relay = self.store, self.host, self.relay
        version = relay.version.value
        boot = await store.pending_boot(self.charger_id)
        if boot is not None and boot.get("protocol", version) != version:
            # a boot in another version: never replayed over this link; a charger that returns in
            # another version boots again in it (and a replay-only session never replays boots)
            if host.connected:
                await store.pending_boot_clear(self.charger_id)
            boot = None
        if boot is not None and getattr(host, "replay_only", False):
            boot = None
        if boot is not None:
            outcome = await self._replay_call("BootNotification", boot["payload"], self.ctx.ids.next())
            if outcome is None:
                return
            await store.pending_boot_clear(self.charger_id)
            if outcome[0] == "result" and outcome[1].get("status") != ACCEPTED:
                self.log.warning("the CSMS answered the replayed BootNotification with %s", outcome[1].get("status"))
        pending: Ack | None = None  # the answered row, acknowledged with the next step
        ahead = _ReadAhead(store, self.charger_id)  # the next page, read while this one replays
        self._ahead = ahead
        # the link's synchronous lane, for the replay only (live traffic never uses it)
        link = host.upstream
        lane = self._lane = link if isinstance(link, FastUpstreamLane) else None
        self._lane_link = link if lane is not None else None
        if lane is not None:
            lane.set_fast_reader(self._fast_from_upstream)
        appends = self.appends
        try:
            while relay.online and not self.closed:
                gen = appends.gen
                if ahead.armed_at is not None:
                    rows = await ahead.take()
                else:
                    await self._flush(pending)  # before reading: the head must not hold an answered row
                    pending = None
                    gen = appends.gen
                    # a short first page gets the replay going (the page reads of all chargers
                    # share the store's one thread), the next ones are long and read ahead
                    rows = await store.outbox_head(self.charger_id, PAGE_FIRST)
                if len(rows) >= PAGE_FIRST:
                    # the next page (rows after this one's last) is read once half of this one
                    # is sent: the replay never waits for it, and the chargers' reads (on the
                    # store's one thread, under its lock) spread out instead of coming together
                    ahead.arm(rows[len(rows) // 2].seq, rows[-1].seq)
                if not rows:
                    if appends.active:
                        await asyncio.sleep(0.005)
                        continue
                    if gen == appends.gen and not await store.has_backlog(self.charger_id) \
                            and gen == appends.gen and not appends.active:
                        relay.backlog = False
                        self.log.info("outbox replayed")
                        store.outbox_purge_later(self.charger_id)
                        break
                    continue
                i = 0
                while i < len(rows):
                    foreign = rows[i].protocol
                    if foreign and foreign != version:
                        # stored in another OCPP version: replayed only over a link of that version
                        await self._flush(pending)
                        pending = None
                        await host.foreign_backlog(foreign)
                        return
                    ok, pending, i = await self._replay_row(rows, i, pending)
                    if not ok:
                        return
        finally:
            if lane is not None:
                lane.set_fast_reader(None)
            self._lane = self._lane_link = None
            self._ahead = None
            await ahead.drop()
            await self._flush(pending)

    def _acked(self, ack: Ack) -> None:
        stopped = ack[2]
        if stopped is not None:
            self.relay.tx.retire(stopped[1])

    async def _replay_row(self, rows: list[OutboxRow], i: int, pending: Ack | None
                          ) -> tuple[bool, Ack | None, int]:
        """Send stored message `rows[i]`; `pending` is the previous answered row, acknowledged in
        the same commit that marks this one as sent. A plain row followed by plain rows is sent as
        a chain: the upstream reader acknowledges each and sends the next itself (`_chain_answer`)
        until something unusual happens, which comes back here for the row then in flight.
        Returns (False, ...) when the link is gone (the row in flight stays for next time), the
        row to acknowledge next and the index of the next row."""
        store, relay = self.store, self.relay
        row = rows[i]
        action = row.action
        replayed = relay.replay_text(action, row.payload)
        if isinstance(replayed, str):
            await self._flush(pending)
            await self._dead_letter(row, replayed)
            return True, None, i + 1
        text, local_tid = replayed
        message_id = row.message_id  # derived from the row's seq: the same when it is sent again
        attempts = row.attempts
        while True:
            if attempts:
                # it was on its way when the link or the gateway went down: the CSMS may have it
                self.counters["possible_duplicates"] += 1
                self.log.warning("replaying %s (outbox #%d) again: it was in flight when the link or the gateway "
                                 "went down, so the CSMS may receive it twice (same message id %s)",
                                 action, row.seq, message_id)
            await store.outbox_step(self.charger_id, pending, row.seq)
            if self._ahead is not None:
                self._ahead.sent(row.seq)
            if pending is not None:
                self._acked(pending)
                pending = None
            chain = None
            if not attempts and i + 1 < len(rows) and relay.plain(action, row.attempts):
                chain = _Chain(rows, i)
                chain.then = functools.partial(self._chain_committed, chain)
            attempts += 1
            outcome = await self._replay_call(action, text, message_id, chain)
            if chain is not None and chain.i != i:
                # the reader acknowledged rows[i:chain.i] (committed) and sent rows[chain.i]: the outcome is its
                i = chain.i
                row = rows[i]
                action, text, message_id, attempts = row.action, row.payload, row.message_id, 1
            if outcome is not None:
                break
            if not relay.online or self.closed:
                return False, None, i
            await asyncio.sleep(1.0)  # the CSMS did not answer in time: try again, once the line is free
        if outcome[0] == "error":
            await self._dead_letter(row, outcome[1])
            return True, None, i + 1
        response = outcome[1]
        bind = stopped = None
        if relay.version is OcppVersion.V16 and action == "StartTransaction" and row.local_tx is not None:
            local_id = int(row.local_tx)
            csms_id = response.get("transactionId")
            status = (response.get("idTagInfo") or {}).get("status")
            if isinstance(csms_id, int):
                off = self.ctx.settings.offline
                if off.transaction_id_min <= csms_id <= off.transaction_id_max:
                    self.log.error("the CSMS issued transaction id %d inside the gateway's offline range; "
                                   "change [offline].transaction_id_min/max", csms_id)
                relay.tx.bind(local_id, csms_id)
                bind = (self.charger_id, local_id, csms_id, status)
            await self._after_replayed_start(local_id, status, orjson.loads(row.payload))
        if local_tid is not None and action == "StopTransaction":
            stopped = (self.charger_id, local_tid)
        self.counters["replayed"] += 1
        return True, (row.seq, bind, stopped), i + 1

    # -- the chain: the replay's steady state, on the upstream reader ------------------------------

    def _chain_answer(self, chain: _Chain, frame: CallResult | CallError) -> bool:
        """The CSMS answered the plain row in flight with a CALLRESULT, the next row of the page is
        plain and nothing waits for the line. Its acknowledgement joins the pending group commit
        together with "the next row is sent"; the store's callback sends that row right after the
        commit (`_chain_committed`). The call stays in flight, re-labelled as the next row.
        Anything else returns False and takes the general path (which ends the chain: the replay
        task gets the outcome)."""
        call = chain.call
        if type(frame) is not CallResult or call is None or frame.message_id != call.message_id:
            return False
        return self._chain_next(chain)

    def _chain_next(self, chain: _Chain) -> bool:
        """`_chain_answer` once the answer is known to be the CALLRESULT of the call in flight."""
        call = chain.call
        queue = self.queue
        if call is None or queue.in_flight is not call or chain.committing or queue.queued or self.closed:
            return False
        i = chain.i + 1
        rows = chain.rows
        if i >= len(rows):
            return False
        row = rows[i]
        if not self.relay.plain(row.action, row.attempts) or (row.protocol and row.protocol != self.relay.version.value):
            return False
        done = rows[chain.i]
        chain.i = i
        if self._ahead is not None:
            self._ahead.sent(row.seq)
        self.counters["replayed"] += 1
        message_id = row.message_id
        call.message_id = message_id
        call.action = row.action
        call.frame = F.call_with_payload_text(message_id, row.action, row.payload)
        now = self._loop.time()
        call.sent_at = now
        call.deadline = now + call.timeout  # the line stays taken: live calls queue behind it
        chain.committing = True
        assert chain.then is not None
        self.store.outbox_step_then(self.charger_id, (done.seq, None, None), row.seq, chain.then)
        return True

    def _chain_committed(self, chain: _Chain, error: Exception | None) -> None:
        """Right after the commit that acknowledged the previous row and marked this one as sent
        (in the store's loop callback): send it. Not if the link went down or the session closed
        meanwhile: the replay task then takes the row in flight as it does any other."""
        chain.committing = False
        call = chain.call
        queue = self.queue
        if self._chain is not chain or call is None or queue.in_flight is not call or self.closed:
            return
        if error is not None:  # nothing was sent: give the line back; the replay task sees the error
            _, nxt = queue.complete(call.message_id, self._loop.time())
            if nxt is not None:
                self._drive(self.host.send_upstream_raw(nxt.frame))
            if isinstance(call.origin, GatewayCall) and not call.origin.future.done():
                call.origin.future.set_exception(error)
            return
        lane = self._lane
        if lane is None or self._lane_link is not self.host.upstream or not lane.send_now(call.frame):
            self._drive(self.host.send_upstream_raw(call.frame))

    def _fast_from_upstream(self, text: str) -> bool:
        """The link's synchronous lane: the answer to a chained replay row is taken as it is parsed,
        with no hop through the reader task. Anything else: False, and the reader gets it as usual
        (the link hands over only while the reader waits idle)."""
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

    def _drive(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine from a plain callback: as a task (asyncio starts tasks in the order they
        are made, and a charger has one replayed CALL in flight, so order holds)."""
        task = self._loop.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _flush(self, pending: Ack | None) -> None:
        if pending is not None:
            await self.store.outbox_step(self.charger_id, pending, None)
            self._acked(pending)

    async def _after_replayed_start(self, local_id: int, status: Any, request: dict[str, Any]) -> None:
        tag = request.get("idTag")
        if isinstance(tag, str) and isinstance(status, str):
            await self.ctx.auth.learn(self.relay.version, tag, {"status": status})
        if status == ACCEPTED:
            return
        self.counters["invalid_replayed_starts"] += 1
        running = self.relay.tx.running(local_id)
        stop = self.ctx.settings.offline.stop_on_invalid_replayed_start
        self.log.warning("the CSMS answered the replayed start of transaction %d (id tag %s) with %s%s",
                         local_id, "set" if tag else "none", status, "; stopping it" if running and stop else "")
        if running and stop and self.host.connected:
            self._drive(self._remote_stop(local_id))

    async def _remote_stop(self, local_id: int) -> None:
        try:
            answer = await self.host.call_charger("RemoteStopTransaction", {"transactionId": local_id})
            self.log.info("RemoteStopTransaction %d: %s", local_id, answer.get("status"))
        except Exception as exc:  # noqa: BLE001 - reported, nothing else to do
            self.log.warning("RemoteStopTransaction %d failed: %s", local_id, exc)

    async def _dead_letter(self, row: OutboxRow, error: str) -> None:
        self.counters["dead_letters"] += 1
        self.log.error("outbox #%d %s set aside (dead letter): %s", row.seq, row.action, error)
        await self.store.outbox_dead(row.seq, error)

    async def _replay_call(self, action: str, payload_text: str, message_id: str,
                           chain: _Chain | None = None) -> Outcome:
        """CALL the CSMS with a stored payload. ("result", payload), ("error", text), or None if the
        link went away or the CSMS did not answer in time. With `chain`, the reader may continue
        with the next rows of the page; the outcome is then that of `chain.rows[chain.i]`."""
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        # request None: not shown to observers (so no receipt time either)
        call = PendingCall(message_id=message_id, action=action,
                           frame=F.call_with_payload_text(message_id, action, payload_text),
                           origin=GatewayCall(future), timeout=self.ctx.settings.upstream.call_timeout)
        if chain is not None:
            chain.call = call
            self._chain = chain
        try:
            await self.host.submit_upstream(call)
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
                # the last step's commit comes first: it is already scheduled, in this loop iteration
                while chain.committing:  # noqa: ASYNC110 - one yield to a callback already queued, not a poll
                    await asyncio.sleep(0)
