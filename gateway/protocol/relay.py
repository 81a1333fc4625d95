"""The relay's decisions for one charger, as data: state in, effects out.

`Relay` holds what decides where a frame goes: the protocol version, whether an upstream is
configured and in which offline mode, the upstream link's state, whether a backlog waits in the
outbox, the one-CALL-in-flight queues of both directions (`rpc.CallQueue`) and the 1.6
transaction-id map (`txmap.TxIdMap`). Its methods take one event (a charger CALL, a CSMS CALL, a
call that will get no answer, a timer) and return what the driver must do (`gateway/session.py`
applies the effects, in order). Nothing here reads a clock, awaits or touches a socket: the
driver passes `now` and does the I/O.

Routing of a charger CALL when an upstream is configured:
- upstream online and the outbox empty (or a message that is never stored): relayed live;
- upstream being dialled and no backlog: queued for the CSMS (if the dial fails the gateway answers);
- otherwise, in `buffer` mode: answered by the gateway; transaction-related messages are
  committed to the outbox first (invariant 1), then replayed in order when the CSMS is back;
- in `strict` mode the charger is never connected without its upstream (2.0.1 Part 4 §6.3), and
  a CALL that cannot reach the CSMS is refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.protocol import frames as F
from gateway.protocol import transactions as T
from gateway.protocol.frames import Call, ErrorCode, OcppVersion
from gateway.protocol.rpc import CallQueue, PendingCall
from gateway.protocol.schemas import Invalid, SchemaRegistry, violation
from gateway.protocol.transactions import Kind
from gateway.protocol.txmap import UNSTARTED, TxIdMap

V16 = OcppVersion.V16
SIGNED = "-Signed"  # 2.x signed-message action suffix (J201 §7)
ACCEPTED = "Accepted"


class UpstreamState(str, enum.Enum):
    STANDALONE = "standalone"  # no upstream configured: the gateway is the CSMS
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"


class Origin(enum.Enum):
    CHARGER = "charger"  # a charger CALL on its way to the CSMS
    CSMS = "csms"  # a CSMS CALL on its way to the charger
    GATEWAY = "gateway"  # the gateway's own call (for observers; the queue holds the caller's handle)


# -- effects ------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Forward:
    """Queue the charger's CALL for the CSMS as `text` (the frame as it came, or its 1.6 rewrite)."""

    text: str


@dataclass(slots=True, frozen=True)
class AnswerLocally:
    """The gateway answers for the CSMS; a message of a stored `kind` is committed to the outbox
    first. `uncertain`: it was sent to the CSMS, whose answer never came (a possible duplicate)."""

    kind: Kind
    uncertain: bool = False


@dataclass(slots=True, frozen=True)
class Refuse:
    """A CALL the gateway refuses (unknown action, schema violation, ...): a CALLERROR to the
    charger (none for a 2.1 SEND), and observers see the refusal."""

    code: ErrorCode
    description: str


@dataclass(slots=True, frozen=True)
class SetAside:
    """A charger CALL that must not reach the CSMS as it is (a 1.6 local transaction id the gateway
    has no CSMS id for: the CSMS never issued it): answered by the gateway and kept as a dead
    letter with `reason`, never sent upstream with the gateway's id (invariant 4)."""

    reason: str


@dataclass(slots=True, frozen=True)
class PassOn:
    """A 2.1 SEND from the charger: to the CSMS when linked, never answered, exempt from the queue."""


@dataclass(slots=True, frozen=True)
class ToCharger:
    """Send `text` to the charger."""

    text: str


@dataclass(slots=True, frozen=True)
class ToCsms:
    """Send `text` to the CSMS (if the link is up)."""

    text: str


FailReason = Literal["timeout", "busy", "closed"]


@dataclass(slots=True, frozen=True)
class FailCaller:
    """A call the gateway itself made gets no answer: raise `reason` in its caller."""

    reason: FailReason


ChargerCallEffect = Forward | AnswerLocally | Refuse | PassOn | ToCharger | SetAside
UnansweredEffect = AnswerLocally | ToCharger | ToCsms | FailCaller | None


@dataclass(slots=True, frozen=True)
class Lesson:
    """What a CSMS answer to a relayed charger CALL teaches the gateway (see `Relay.lesson`)."""

    authorization: bool = False  # the answer carries an id token's status (for the authorization cache)
    forget_tx: int | None = None  # a local 1.6 transaction id the CSMS has now seen stopped
    boot_answered: bool = False  # the stored boot need not be replayed


LEARN_AUTHORIZATION = Lesson(authorization=True)
BOOT_ANSWERED = Lesson(boot_answered=True)


@dataclass(slots=True)
class Expired:
    """What a timer tick found (`Relay.expire`)."""

    to_charger: list[PendingCall]
    charger_next: PendingCall | None
    to_upstream: list[PendingCall]
    upstream_next: PendingCall | None


# -- the decisions ------------------------------------------------------------------------------


class Relay:
    """The routing state of one charger's session and the decisions over it (see the module doc)."""

    __slots__ = ("version", "relaying", "strict", "schemas", "upstream", "backlog", "tx", "to_charger",
                 "to_upstream", "replay_actions", "meter_values_without_transaction", "local_ids", "_validators")

    def __init__(self, version: OcppVersion, schemas: SchemaRegistry, *, relaying: bool, strict: bool,
                 max_queued: int, replay_actions: frozenset[str], meter_values_without_transaction: str,
                 local_ids: tuple[int, int] | None = None, max_retired: int = 10_000) -> None:
        self.version = version
        self.schemas = schemas
        self._validators = schemas.charger_calls(version)  # action -> request validator, as they are used
        self.relaying = relaying
        self.strict = relaying and strict
        self.upstream = UpstreamState.CONNECTING if relaying else UpstreamState.STANDALONE
        self.backlog = False  # the outbox (or a boot to replay) is not empty
        self.tx = TxIdMap(max_retired)
        self.local_ids = local_ids  # [offline].transaction_id_min/max: the 1.6 ids the gateway issues
        self.to_charger = CallQueue(max_queued=max_queued, paused=True)
        self.to_upstream = CallQueue(max_queued=max_queued, paused=True)
        self.replay_actions = replay_actions
        self.meter_values_without_transaction = meter_values_without_transaction

    @property
    def online(self) -> bool:
        return self.upstream is UpstreamState.ONLINE

    def kind(self, frame: Call) -> Kind:
        return T.classify(self.version, frame.action, frame.payload, replay_actions=self.replay_actions,
                          meter_values_without_transaction=self.meter_values_without_transaction)

    def check_call(self, frame: Call) -> tuple[ErrorCode, str] | None:
        """Why a charger CALL is refused (error code, description), or None when it may go on."""
        action = frame.action
        check = self._validators.get(action)  # an action the charger may send, with a schema: known, allowed
        if check is not None:
            try:
                check(frame.payload)
            except Invalid as exc:
                found = violation(exc)
                return found.code, found.description
            return None
        schemas = self.schemas
        version = self.version
        if version.is_2x and action.endswith(SIGNED):
            # J201 §7 signed message: the payload is a JWS for the CSMS, relayed untouched (not validated)
            base = action[: -len(SIGNED)]
            if not schemas.knows(version, base):
                return ErrorCode.NOT_IMPLEMENTED, f"action {action!r} is not known in {version.value}"
            if not schemas.charger_may_send(version, base):
                return ErrorCode.NOT_SUPPORTED, f"{base} is not sent by a charging station"
            if self.upstream is not UpstreamState.ONLINE and self.upstream is not UpstreamState.CONNECTING:
                return ErrorCode.INTERNAL_ERROR, "signed messages are relayed only while the CSMS is connected"
            return None
        if not schemas.knows(version, action):
            return ErrorCode.NOT_IMPLEMENTED, f"action {action!r} is not known in {version.value}"
        if not schemas.charger_may_send(version, action):
            return ErrorCode.NOT_SUPPORTED, f"{action} is not sent by a charging station"
        if schemas.charger_call_validator(version, action) is not None:  # kept for the next CALL of this action
            return self.check_call(frame)
        return None

    def charger_call(self, frame: Call) -> ChargerCallEffect:
        """Where a charger CALL goes (see the module doc)."""
        problem = self.check_call(frame)
        if problem is not None:
            return Refuse(*problem)
        if frame.send:
            return PassOn()
        if not self.relaying:
            return AnswerLocally(Kind.LIVE)
        if self.local_ids is not None and self.version is V16 and frame.action in T.CHARGER_TX_ACTIONS:
            reason = self.unknown_local_id(frame.action, frame.payload)
            if reason is not None:
                return SetAside(reason)
        upstream, backlog = self.upstream, self.backlog
        # classified only when it matters (a backlog, or the gateway answering): not on the live path
        kind = self.kind(frame) if backlog or upstream is not UpstreamState.ONLINE else Kind.LIVE
        connecting = upstream is UpstreamState.CONNECTING and not backlog
        # connecting: the link is being set up: wait for it (on failure the gateway answers, see
        # `unanswered`); a 1.6 local id is mapped as on a link that is up (invariant 4)
        if connecting or upstream is UpstreamState.ONLINE and not (backlog and kind is not Kind.LIVE):
            text = frame.raw
            if self.version is V16:
                tx = self.tx
                if tx.local_to_csms:
                    ids = tx.lookup(frame.action, frame.payload)
                    if ids is not None:
                        if ids[1] == UNSTARTED:  # its start never reached the CSMS: keep it in order behind it
                            return AnswerLocally(self.kind(frame))
                        text = F.call(frame.message_id, frame.action, tx.for_csms(frame.action, frame.payload, ids[1]))
                    tx.note_stop(frame.action, frame.payload)
            return Forward(text)
        if self.strict:
            return ToCharger(F.call_error(self.version, frame.message_id, ErrorCode.INTERNAL_ERROR,
                                          "CSMS unreachable"))
        return AnswerLocally(kind)

    def unknown_local_id(self, action: str, payload: dict[str, Any]) -> str | None:
        """Why a 1.6 charger message must not go to the CSMS: it names a transaction id from the
        gateway's own range that the gateway has no mapping for (never issued, or forgotten after
        [offline].id_map_grace). None: it may go."""
        if self.local_ids is None:
            return None
        tid = T.charger_tx_id(action, payload)
        low, high = self.local_ids
        if tid is None or not low <= tid <= high or tid in self.tx:
            return None
        return (f"no CSMS transaction id known for local id {tid} (not issued by this gateway, or its "
                f"mapping expired after [offline].id_map_grace); not sent with the gateway's id")

    def stored(self, frame: Call) -> None:
        """A charger CALL was committed to the outbox."""
        if self.version is V16:
            self.tx.note_stop(frame.action, frame.payload)

    def csms_call(self, frame: Call) -> str:
        """The text of a CSMS CALL as it goes to the charger (a 1.6 CSMS id mapped to the local one)."""
        if self.version is V16:
            payload = self.tx.for_charger(frame.action, frame.payload)
            if payload is not None:
                # the charger knows this transaction by the id the gateway gave it
                return F.call(frame.message_id, frame.action, payload)
        return frame.raw

    def unanswered(self, call: PendingCall, code: ErrorCode, description: str, *, timed_out: bool = False,
                   busy: bool = False, uncertain: bool = False) -> UnansweredEffect:
        """A call that will get no answer from its peer: what its originator is told."""
        origin = call.origin
        if origin is Origin.CHARGER:
            if self.relaying and not self.strict and isinstance(call.source, Call) and not busy \
                    and not call.action.endswith(SIGNED):  # only the CSMS can answer a signed message
                # buffer mode: the gateway answers instead of the CSMS (and stores what must reach it)
                return AnswerLocally(self.kind(call.source), uncertain=uncertain or timed_out)
            return ToCharger(F.call_error(self.version, call.message_id, code, description))
        if origin is Origin.CSMS:
            return ToCsms(F.call_error(self.version, call.message_id, code, description))
        if isinstance(origin, Origin):
            return None
        return FailCaller("timeout" if timed_out else "busy" if busy else "closed")

    def lesson(self, call: PendingCall) -> Lesson | None:
        """What the CSMS's CALLRESULT to a relayed charger CALL teaches (None: nothing). A 1.6 stop
        of a transaction that started offline unmaps its local id here."""
        action = call.action
        if action in ("Authorize", "StartTransaction", "TransactionEvent"):
            return LEARN_AUTHORIZATION if isinstance(call.request, dict) else None
        if action == "BootNotification":
            return BOOT_ANSWERED
        if self.version is V16 and action == "StopTransaction" and isinstance(call.request, dict):
            tid = call.request.get("transactionId")
            if isinstance(tid, int) and tid in self.tx:
                # the CSMS acknowledged the stop of a transaction that started offline: the mapping
                # is kept (retired) for late MeterValues and retried stops
                self.tx.retire(tid)
                return Lesson(forget_tx=tid)
        return None

    def expire(self, now: float) -> Expired:
        """A timer tick: the calls past their deadline in both directions, and the next to send."""
        charger_expired, charger_next = self.to_charger.expire(now)
        upstream_expired, upstream_next = self.to_upstream.expire(now)
        return Expired(charger_expired, charger_next, upstream_expired, upstream_next)

    def next_deadline(self) -> float | None:
        """When the timer must look again (None: nothing waits)."""
        deadlines = [d for d in (self.to_charger.next_deadline(), self.to_upstream.next_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    # -- replay -----------------------------------------------------------------------------------

    def plain(self, action: str, attempts: int) -> bool:
        """A stored row sent as stored, whose answer teaches nothing (its acknowledgement is its
        seq alone): the replay may chain it."""
        if attempts:
            return False
        if self.version is V16:
            return action != "StartTransaction" and not (action in T.CHARGER_TX_ACTIONS and self.tx.local_to_csms)
        return action != "TransactionEvent"

    def replay_text(self, action: str, text: str) -> tuple[str, int | None] | str:
        """A stored payload as it is replayed to the CSMS, and the local 1.6 transaction id it names
        (mapped to the CSMS's); a text saying why, when it must be set aside instead (its
        transaction's start was never accepted by the CSMS, or it names a local id with no mapping)."""
        if self.version is V16:
            if action in T.CHARGER_TX_ACTIONS and (self.tx.local_to_csms or self.local_ids is not None):
                payload = orjson.loads(text)
                ids = self.tx.lookup(action, payload)
                if ids is not None:
                    if ids[1] == UNSTARTED:
                        return "its StartTransaction was not accepted by the CSMS"
                    return orjson.dumps(self.tx.for_csms(action, payload, ids[1])).decode(), ids[0]
                reason = self.unknown_local_id(action, payload)
                if reason is not None:
                    return reason
            return text, None
        if action == "TransactionEvent":
            return orjson.dumps(T.mark_offline(orjson.loads(text))).decode(), None
        return text, None
