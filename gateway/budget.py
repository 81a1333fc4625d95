"""The answer budget of one charger's session ([upstream].answer_within): a charger CALL the CSMS
has not answered in time is answered by the gateway as it would be offline, and the CSMS's late
answer, when it comes on the live link, is taken as the answer to the stored row.

`AnswerBudget` keeps the charger CALLs on their way to the CSMS (`arm` when one is queued,
`disarm` when its answer comes or it fails) and the calls answered late (`late`), and talks to its
session through `BudgetHost`. The budget is the same for every call of a session, so the deadlines
come in arrival order: they wait in a list (the earliest first) behind one timer per session,
armed for the earliest deadline and re-armed only when it has run out; a call disarmed is dropped
from the list once it reaches the front. A relayed call thus costs no timer handle of its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import StoreWriteFailed
from gateway.protocol.frames import Call, CallError, CallResult, OcppVersion
from gateway.protocol.relay import Relay
from gateway.protocol.rpc import PendingCall
from gateway.protocol.transactions import Kind

if TYPE_CHECKING:
    from gateway.context import SessionContext
    from gateway.replay import Replayer

V16 = OcppVersion.V16


@dataclass(slots=True)
class Late:
    """A charger CALL still on its way to the CSMS that the gateway answered itself when
    [upstream].answer_within ran out: `seq` is its outbox row (None: a message that is not
    stored), `local_id` the 1.6 transaction id the gateway gave a StartTransaction. The CSMS's
    late answer is the answer to that row."""

    seq: int | None
    local_id: int | None


class BudgetHost(Protocol):
    """What the answer budget needs from its session."""

    charger_id: str
    version: OcppVersion
    relay: Relay
    replay: Replayer
    ctx: SessionContext
    counters: dict[str, int]
    log: logging.LoggerAdapter[logging.Logger]

    @property
    def closed(self) -> bool: ...

    def probe_upstream(self) -> None: ...

    async def answer_locally(self, frame: Call, kind: Kind, *, uncertain: bool = False,
                             sent_id: str | None = None) -> tuple[int | None, int | None]: ...

    async def learn(self, call: PendingCall, response: dict[str, Any]) -> None: ...


class AnswerBudget:
    """See the module doc. `tasks` is the session's set of tasks started from timers (cancelled
    and awaited when it closes)."""

    def __init__(self, host: BudgetHost, within: float, tasks: set[asyncio.Task[None]]) -> None:
        self.host = host
        self.within = within
        self.armed: dict[str, PendingCall] = {}  # by message id: the calls the budget may answer
        self.late: dict[str, Late] = {}
        self._due_at: list[tuple[float, PendingCall]] = []  # (deadline, call), earliest first
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()

    def arm(self, call: PendingCall) -> None:
        deadline = self._loop.time() + self.within
        self.armed[call.message_id] = call
        self._due_at.append((deadline, call))
        if self._timer is None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def disarm(self, message_id: str) -> None:
        if self.armed.pop(message_id, None) is None:
            return
        due_at, armed = self._due_at, self.armed
        while due_at:  # drop what is no longer armed from the front (usually the call just answered)
            call = due_at[0][1]
            if armed.get(call.message_id) is call:
                break
            due_at.pop(0)

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.armed.clear()
        self._due_at.clear()
        self.late.clear()

    @property
    def awaiting_late(self) -> bool:
        """A stored row is on its way to the CSMS on the live link (answered late): the replay waits."""
        return bool(self.late)

    def _on_timer(self) -> None:
        """The earliest deadline has come: every armed call whose budget has run out is answered
        (in arrival order); the timer is armed again for the next deadline, if any."""
        self._timer = None
        now = max(self._loop.time(), self._timer_at)  # the loop may run a timer up to its clock resolution early
        due_at, armed = self._due_at, self.armed
        closed = self.host.closed
        while due_at:
            deadline, call = due_at[0]
            if armed.get(call.message_id) is not call:
                due_at.pop(0)
                continue
            if deadline > now:
                self._timer_at = deadline
                self._timer = self._loop.call_at(deadline, self._on_timer)
                return
            due_at.pop(0)
            del armed[call.message_id]
            if closed:
                continue
            task = self._loop.create_task(self._answer_in_time(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer_in_time(self, call: PendingCall) -> None:
        """The CSMS has not answered a charger CALL within [upstream].answer_within: the gateway
        answers as it would offline. A call still waiting for the line leaves the queue; the call
        in flight stays in flight (its row stored as sent, with its message id) and the link is
        probed at once: a silent link is declared dead within [upstream].ping_timeout."""
        host = self.host
        source = call.source
        if not isinstance(source, Call):
            return
        queue = host.relay.to_upstream
        kind = host.relay.kind(source)
        if queue.in_flight is call:
            host.log.warning("%s %s: no answer from the CSMS within %g s; answered by the gateway, still waiting "
                             "for the CSMS", call.action, call.message_id, self.within)
            host.probe_upstream()
            late = Late(None, None)
            self.late[call.message_id] = late  # before the commit: the replay must not send it meanwhile
            seq, local_id = await host.answer_locally(source, kind, sent_id=call.message_id)
            if call.message_id in self.late:
                late.seq, late.local_id = seq, local_id
            elif seq is not None:  # the link went or the call timed out during the commit: replayed later
                host.replay.start()
            return
        if queue.remove_queued(lambda c: c is call):
            host.log.warning("%s %s: the line to the CSMS is busy beyond %g s; answered by the gateway",
                             call.action, call.message_id, self.within)
            await host.answer_locally(source, kind)

    async def late_answer(self, call: PendingCall, frame: CallResult | CallError, late: Late) -> None:
        """The CSMS answered a charger CALL the gateway had answered itself: the charger is not
        told again; the answer is that of the stored row (a 1.6 start's id is bound; the row is
        done, or a dead letter for a CALLERROR), and the replay may go on."""
        host = self.host
        host.log.info("%s %s: the CSMS answered late; taken as the answer to %s", call.action, call.message_id,
                      f"outbox #{late.seq}" if late.seq is not None else "the gateway's answer")
        store = host.ctx.store
        relay = host.relay
        try:
            if type(frame) is CallResult:
                await host.learn(call, frame.payload)
                if late.seq is not None:
                    bind = stopped = None
                    if late.local_id is not None:
                        status = (frame.payload.get("idTagInfo") or {}).get("status")
                        csms_id = frame.payload.get("transactionId")
                        if isinstance(csms_id, int):
                            relay.tx.bind(late.local_id, csms_id)
                            bind = (host.charger_id, late.local_id, csms_id, status)
                        request = call.source.payload if isinstance(call.source, Call) else {}
                        await host.replay.after_start(late.local_id, status, request)
                    elif host.version is V16 and call.action == "StopTransaction" and isinstance(call.source, Call):
                        tid = call.source.payload.get("transactionId")
                        if isinstance(tid, int) and tid in relay.tx:
                            relay.tx.retire(tid)
                            stopped = (host.charger_id, tid)
                    await store.outbox_acknowledge(host.charger_id, late.seq, bind, stopped)
                    host.counters["late_answers"] = host.counters.get("late_answers", 0) + 1
            elif late.seq is not None and isinstance(frame, CallError):
                host.counters["dead_letters"] += 1
                host.log.error("outbox #%d %s set aside (dead letter): %s: %s", late.seq, call.action, frame.code,
                               frame.description)
                await store.outbox_dead(late.seq, f"{frame.code}: {frame.description}")
        except StoreWriteFailed:
            pass  # the row stays and is sent again (same message id) once the store writes again
        host.replay.start()
