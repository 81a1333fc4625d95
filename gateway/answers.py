"""The gateway's own answers in a charger session, and the exchanges observers see.

A mixin for `gateway.session.ChargerSession` (the driver; it holds the state named below):
- `answer_locally`: a charger CALL the gateway answers itself, as it would offline; what must reach
  the CSMS later is committed first (invariant 1, `Replayer.keep`); a store that cannot write gives
  CALLERROR InternalError instead;
- `_set_aside`: a charger CALL kept as a dead letter (it must not reach the CSMS as it is), answered;
- `_fail`: a call that will get no answer from its peer (timeout, link lost, queue full): its caller
  is told, or the gateway answers it (`Relay.unanswered` decides);
- `_emit`, `_emit_reply`: each finished exchange, to the observers (built only when someone watches).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from gateway.errors import Busy, CallTimeout, NotConnected, StoreWriteFailed
from gateway.ports import Exchange, UpstreamLink
from gateway.protocol import frames as F
from gateway.protocol.frames import Call, CallError, CallResult, ErrorCode, OcppVersion
from gateway.protocol.relay import AnswerLocally, FailCaller, Origin, Relay, ToCharger, ToCsms
from gateway.protocol.rpc import PendingCall
from gateway.protocol.transactions import Kind
from gateway.replay import GatewayCall, Replayer

if TYPE_CHECKING:
    from gateway.budget import AnswerBudget
    from gateway.context import SessionContext
    from gateway.session import ChargerSession


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# what the charger is told when the gateway cannot keep a message it must keep (a full disk)
STORE_FAILED = ("the gateway cannot store this message now (its disk is full or failing: the store cannot write); "
                "nothing was kept, send it again later")


class OwnAnswers:
    """Mixin for ChargerSession: the gateway's own answers and the observers' exchanges (see the module doc)."""

    ctx: SessionContext
    charger_id: str
    version: OcppVersion
    relay: Relay
    replay: Replayer
    budget: AnswerBudget
    counters: dict[str, int]
    log: logging.LoggerAdapter[logging.Logger]
    _upstream: UpstreamLink | None
    _send_charger: Callable[[str], Awaitable[None]]
    send_upstream_raw: Callable[[str], Awaitable[None]]

    async def answer_locally(self, frame: Call, kind: Kind, *, uncertain: bool = False,
                              sent_id: str | None = None) -> tuple[int | None, int | None]:
        """The gateway answers; what must reach the CSMS later is committed first (invariant 1,
        `Replayer.keep`). `uncertain`: the message was sent to the CSMS and the link died before its
        answer (its replay is reported as a possible duplicate). `sent_id`: it is still on its way
        (answered at [upstream].answer_within), stored as sent with that id in the same commit.
        When the store cannot write (a full disk) the charger gets CALLERROR InternalError instead:
        nothing was kept, its own retry applies. Returns (outbox seq, local 1.6 transaction id),
        each None when there is none."""
        try:
            return await self._answer_locally_now(frame, kind, uncertain=uncertain, sent_id=sent_id)
        except StoreWriteFailed:  # the store logs the episode once
            await self._send_charger(F.call_error(self.version, frame.message_id, ErrorCode.INTERNAL_ERROR,
                                                  STORE_FAILED))
            self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, None,
                       ErrorCode.INTERNAL_ERROR.spell(self.version), "gateway", utcnow())
            return None, None

    async def _answer_locally_now(self, frame: Call, kind: Kind, *, uncertain: bool,
                                  sent_id: str | None) -> tuple[int | None, int | None]:
        received = utcnow()
        ctx = self.ctx
        seq, tx_id = await self.replay.keep(frame, kind, received, uncertain=uncertain, sent_id=sent_id) \
            if self.relay.relaying else (None, None)
        payload = await ctx.local.answer(self.version, frame, self.charger_id, transaction_id=tx_id)
        await self._send_charger(F.call_result(frame.message_id, payload))
        self._emit(Origin.CHARGER, frame.action, frame.message_id, frame.payload, payload, None, "gateway", received)
        return seq, tx_id

    async def _set_aside(self, frame: Call, reason: str) -> None:
        """A message that must not reach the CSMS as it is: kept as a dead letter with `reason`,
        the charger answered (it has nothing to correct)."""
        row = {"charger_id": self.charger_id, "protocol": self.version.value, "action": frame.action,
               "payload": F.payload_text(frame.raw), "kind": self.relay.kind(frame).value, "connector": None,
               "received_at": utcnow().isoformat()}
        try:
            seq = await self.ctx.store.outbox_dead_letter(row, reason)
        except StoreWriteFailed:
            await self._send_charger(F.call_error(self.version, frame.message_id, ErrorCode.INTERNAL_ERROR,
                                                  STORE_FAILED))
            return
        self.counters["dead_letters"] += 1
        self.log.error("outbox #%d %s set aside (dead letter): %s", seq, frame.action, reason)
        await self.answer_locally(frame, Kind.LIVE)

    async def _fail(self, call: PendingCall, code: ErrorCode, description: str, *, timed_out: bool = False,
                    busy: bool = False, uncertain: bool = False) -> None:
        """A call that will get no answer from its peer: tell whoever made it."""
        if call.origin is Origin.CHARGER:
            self.budget.disarm(call.message_id)
            if self.budget.late.pop(call.message_id, None) is not None:
                # answered already (answer_within); its row stays, sent again with the same message id
                self.log.warning("%s %s: %s; it stays in the outbox and is sent again (same message id)",
                                 call.action, call.message_id, description)
                self.replay.start()
                return
        self.log.warning("%s %s: %s", call.action, call.message_id, description)
        effect = self.relay.unanswered(call, code, description, timed_out=timed_out, busy=busy, uncertain=uncertain)
        if isinstance(effect, AnswerLocally):
            assert isinstance(call.source, Call)
            await self.answer_locally(call.source, effect.kind, uncertain=effect.uncertain)
            return
        if isinstance(effect, ToCharger):
            await self._send_charger(effect.text)
        elif isinstance(effect, ToCsms):
            if self._upstream is not None:
                await self.send_upstream_raw(effect.text)
        elif isinstance(effect, FailCaller) and isinstance(call.origin, GatewayCall) \
                and not call.origin.future.done():
            exc: Exception
            if effect.reason == "timeout":
                exc = CallTimeout(description)
            elif effect.reason == "busy":
                exc = Busy(description)
            else:
                exc = NotConnected(description)
            call.origin.future.set_exception(exc)
        if call.request is None:
            return
        origin = call.origin if isinstance(call.origin, Origin) else Origin.GATEWAY
        self._emit(origin, call.action, call.message_id, call.request or {}, None,
                   "timeout" if timed_out else code.value, "gateway", call.received_at or utcnow())

    # -- the exchanges observers see ---------------------------------------------------------------

    def _emit(self, origin: Origin, action: str, message_id: str, request: dict[str, Any],
              response: dict[str, Any] | None, error: str | None, answered_by: str, received_at: datetime) -> None:
        if not self.ctx.observed:
            return
        self.ctx.publish(cast("ChargerSession", self), Exchange(
            charger_id=self.charger_id, version=self.version, origin=origin.value, action=action,
            message_id=message_id, request=request, response=response, error=error, answered_by=answered_by,
            received_at=received_at,
        ))

    def _emit_reply(self, call: PendingCall, frame: CallResult | CallError, answered_by: str) -> None:
        """Once per relayed call: the Exchange is built here, in one step (no `_emit`)."""
        request = call.request
        if request is None or not self.ctx.observed:
            return
        origin = call.origin
        # `_value_`: what `.value` returns, without the enum property's descriptor call
        name = origin._value_ if type(origin) is Origin else "gateway"
        if isinstance(frame, CallError):
            response, error = None, frame.code
        else:
            response, error = frame.payload, None
        self.ctx.publish(cast("ChargerSession", self), Exchange(
            charger_id=self.charger_id, version=self.version, origin=name, action=call.action,
            message_id=call.message_id, request=request or {}, response=response, error=error,
            answered_by=answered_by, received_at=call.received_at or utcnow(),
        ))
