"""The relay's decisions as data (gateway/protocol/relay.py): one event in, the effects out, no
loop, no clock, no socket."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocol import frames as F
from gateway.protocol.frames import Call, ErrorCode, OcppVersion
from gateway.protocol.relay import (AnswerLocally, FailCaller, Forward, Origin, PassOn, Refuse, Relay, SetAside,
                                    ToCharger, ToCsms, UpstreamState)
from gateway.protocol.rpc import PendingCall
from gateway.protocol.transactions import Kind
from tests.fakes import SCHEMAS

V16, V201 = OcppVersion.V16, OcppVersion.V201
HB = '[2,"m1","Heartbeat",{}]'


def relay(version: OcppVersion = V16, *, relaying: bool = True, strict: bool = False,
          upstream: UpstreamState = UpstreamState.ONLINE, backlog: bool = False) -> Relay:
    r = Relay(version, SCHEMAS, relaying=relaying, strict=strict, max_queued=3,
              replay_actions=frozenset({"SecurityEventNotification"}), meter_values_without_transaction="replay")
    if relaying:
        r.upstream = upstream
    r.backlog = backlog
    return r


def call(text: str, version: OcppVersion = V16) -> Call:
    frame = F.parse(text, version)
    assert isinstance(frame, Call)
    return frame


def frame(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([2, message_id, action, payload]).decode()


START = frame("s1", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                         "timestamp": "2026-01-01T00:00:00Z"})
METER = frame("mv1", "MeterValues", {"connectorId": 1, "transactionId": 2_000_000_000,
                                     "meterValue": [{"timestamp": "2026-01-01T00:01:00Z",
                                                     "sampledValue": [{"value": "1"}]}]})


def test_online_without_backlog_a_call_is_forwarded_as_it_came() -> None:
    effect = relay().charger_call(call(HB))

    assert effect == Forward(HB)


def test_while_dialling_a_call_waits_for_the_link() -> None:
    assert relay(upstream=UpstreamState.CONNECTING).charger_call(call(START)) == Forward(START)


@pytest.mark.parametrize(("text", "kind"), [(HB, Kind.LIVE), (START, Kind.START), (METER, Kind.TRANSACTION)])
def test_offline_in_buffer_mode_the_gateway_answers(text: str, kind: Kind) -> None:
    assert relay(upstream=UpstreamState.OFFLINE).charger_call(call(text)) == AnswerLocally(kind)


def test_online_with_a_backlog_stored_kinds_queue_behind_it_and_live_ones_pass() -> None:
    r = relay(backlog=True)

    assert r.charger_call(call(START)) == AnswerLocally(Kind.START)
    assert r.charger_call(call(HB)) == Forward(HB)


def test_strict_mode_refuses_what_cannot_reach_the_csms() -> None:
    effect = relay(strict=True, upstream=UpstreamState.OFFLINE).charger_call(call(HB))

    assert isinstance(effect, ToCharger)
    assert orjson.loads(effect.text) == [4, "m1", "InternalError", "CSMS unreachable", {}]


def test_standalone_the_gateway_answers_everything() -> None:
    r = relay(relaying=False)

    assert r.upstream is UpstreamState.STANDALONE
    assert r.charger_call(call(START)) == AnswerLocally(Kind.LIVE)


def test_unknown_and_invalid_calls_are_refused_with_the_versions_error_code() -> None:
    r = relay()

    assert r.charger_call(call('[2,"x","NoSuchAction",{}]')) == Refuse(
        ErrorCode.NOT_IMPLEMENTED, "action 'NoSuchAction' is not known in ocpp1.6")
    bad = r.charger_call(call('[2,"y","Heartbeat",{"extra":1}]'))
    assert isinstance(bad, Refuse) and bad.code is not ErrorCode.NOT_IMPLEMENTED
    assert isinstance(r.charger_call(call('[2,"z","RemoteStopTransaction",{"transactionId":1}]')), Refuse)


def test_a_signed_2x_message_is_relayed_only_with_a_link() -> None:
    text = '[2,"s","MeterValues-Signed",{"jws":"x"}]'

    assert relay(V201).charger_call(call(text, V201)) == Forward(text)
    offline = relay(V201, upstream=UpstreamState.OFFLINE).charger_call(call(text, V201))
    assert isinstance(offline, Refuse) and offline.code is ErrorCode.INTERNAL_ERROR


def test_a_21_send_passes_on() -> None:
    r = Relay(OcppVersion.V21, SCHEMAS, relaying=True, strict=False, max_queued=3, replay_actions=frozenset(),
              meter_values_without_transaction="replay")
    r.upstream = UpstreamState.ONLINE
    text = '[6,"n1","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"2026-01-01T00:00:00Z","data":[{"t":0,"v":"1"}]}]'

    assert r.charger_call(call(text, OcppVersion.V21)) == PassOn()


def test_a_mapped_1_6_id_goes_to_the_csms_as_its_id_and_waits_while_unstarted() -> None:
    r = relay()
    r.tx.bind(2_000_000_000, None)

    assert r.charger_call(call(METER)) == AnswerLocally(Kind.TRANSACTION)  # its start is still in the outbox

    r.tx.bind(2_000_000_000, 555)
    effect = r.charger_call(call(METER))

    assert isinstance(effect, Forward)
    assert orjson.loads(effect.text)[3]["transactionId"] == 555
    assert orjson.loads(effect.text)[:3] == [2, "mv1", "MeterValues"]


def test_a_csms_command_reaches_the_charger_with_the_local_id() -> None:
    r = relay()
    r.tx.bind(2_000_000_000, 555)

    text = r.csms_call(call('[2,"c1","RemoteStopTransaction",{"transactionId":555}]'))
    untouched = '[2,"c2","RemoteStopTransaction",{"transactionId":556}]'

    assert orjson.loads(text) == [2, "c1", "RemoteStopTransaction", {"transactionId": 2_000_000_000}]
    assert r.csms_call(call(untouched)) == untouched


def pending(origin: Any, text: str = START) -> PendingCall:
    c = call(text)
    return PendingCall(message_id=c.message_id, action=c.action, frame=text, origin=origin, request=c.payload,
                       source=c)


def test_a_charger_call_without_answer_is_answered_by_the_gateway_in_buffer_mode() -> None:
    r = relay()

    effect = r.unanswered(pending(Origin.CHARGER), ErrorCode.INTERNAL_ERROR, "CSMS did not answer", timed_out=True)

    assert effect == AnswerLocally(Kind.START, uncertain=True)
    busy = r.unanswered(pending(Origin.CHARGER), ErrorCode.GENERIC_ERROR, "full", busy=True)
    assert isinstance(busy, ToCharger) and orjson.loads(busy.text)[2] == "GenericError"


def test_without_answer_a_csms_call_gets_an_error_and_a_gateway_call_fails() -> None:
    r = relay()

    to_csms = r.unanswered(pending(Origin.CSMS), ErrorCode.GENERIC_ERROR, "charger did not answer in time")
    assert isinstance(to_csms, ToCsms) and orjson.loads(to_csms.text)[:3] == [4, "s1", "GenericError"]
    assert r.unanswered(pending(object()), ErrorCode.GENERIC_ERROR, "x", timed_out=True) == FailCaller("timeout")
    assert r.unanswered(pending(object()), ErrorCode.GENERIC_ERROR, "x", busy=True) == FailCaller("busy")
    assert r.unanswered(pending(object()), ErrorCode.GENERIC_ERROR, "x") == FailCaller("closed")


def test_the_timer_expires_both_directions_and_names_the_next_deadline() -> None:
    r = relay()
    r.to_charger.resume(0.0)
    r.to_upstream.resume(0.0)
    first = PendingCall(message_id="a", action="Reset", frame="", timeout=5.0)
    second = PendingCall(message_id="b", action="Reset", frame="", timeout=5.0)
    up = PendingCall(message_id="c", action="Heartbeat", frame="", timeout=2.0)
    assert r.to_charger.submit(first, 0.0) is first
    assert r.to_charger.submit(second, 1.0) is None  # one in flight: the second waits
    assert r.to_upstream.submit(up, 0.0) is up
    assert r.next_deadline() == 2.0

    expired = r.expire(2.5)

    assert expired.to_upstream == [up] and expired.upstream_next is None
    assert expired.to_charger == [] and expired.charger_next is None
    assert r.next_deadline() == 5.0
    expired = r.expire(5.0)
    assert expired.to_charger == [first] and expired.charger_next is second
    assert r.to_charger.in_flight is second


def test_answers_teach_the_gateway() -> None:
    r = relay()
    r.tx.bind(2_000_000_000, 555)

    stop = pending(Origin.CHARGER, frame("st", "StopTransaction", {"transactionId": 2_000_000_000, "meterStop": 5,
                                                                   "timestamp": "2026-01-01T00:02:00Z"}))
    lesson = r.lesson(stop)
    assert lesson is not None and lesson.forget_tx == 2_000_000_000
    assert 2_000_000_000 in r.tx.retired  # kept for [offline].id_map_grace: late messages get the CSMS's id
    auth = r.lesson(pending(Origin.CHARGER))
    assert auth is not None and auth.authorization
    boot = r.lesson(pending(Origin.CHARGER, frame("b", "BootNotification", {"chargePointVendor": "V",
                                                                             "chargePointModel": "M"})))
    assert boot is not None and boot.boot_answered
    assert r.lesson(pending(Origin.CHARGER, HB)) is None


def test_replayed_rows_are_rewritten_or_set_aside() -> None:
    r = relay()
    payload = '{"connectorId":1,"transactionId":2000000000,"meterValue":[]}'
    assert r.replay_text("MeterValues", payload) == (payload, None)  # no map: as stored

    r.tx.bind(2_000_000_000, None)
    assert r.replay_text("MeterValues", payload) == "its StartTransaction was not accepted by the CSMS"
    assert not r.plain("MeterValues", 0)  # a row that may need rewriting is not chained

    r.tx.bind(2_000_000_000, 9)
    replayed = r.replay_text("MeterValues", payload)
    assert isinstance(replayed, tuple)
    text, local = replayed
    assert orjson.loads(text)["transactionId"] == 9 and local == 2_000_000_000
    assert r.plain("StatusNotification", 0) and not r.plain("StatusNotification", 1)
    assert not r.plain("StartTransaction", 0)

    r2 = relay(V201)
    event = '{"eventType":"Updated","timestamp":"2026-01-01T00:00:00Z","triggerReason":"MeterValuePeriodic",' \
            '"seqNo":3,"transactionInfo":{"transactionId":"t"}}'
    replayed = r2.replay_text("TransactionEvent", event)
    assert isinstance(replayed, tuple)
    marked, _ = replayed
    assert orjson.loads(marked)["offline"] is True
    assert not r2.plain("TransactionEvent", 0)


def test_a_local_id_without_mapping_never_goes_upstream() -> None:
    """Invariant 4: the CSMS never sees a gateway-local id. A 1.6 message naming an id from the
    gateway's range that it has no mapping for is set aside, live and in the replay."""
    r = Relay(V16, SCHEMAS, relaying=True, strict=False, max_queued=3, replay_actions=frozenset(),
              meter_values_without_transaction="replay", local_ids=(2_000_000_000, 2_147_483_646))
    r.upstream = UpstreamState.ONLINE
    unknown = frame("mv", "MeterValues", {"connectorId": 1, "transactionId": 2_000_000_005, "meterValue": [
        {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]})
    effect = r.charger_call(call(unknown))
    assert isinstance(effect, SetAside) and "2000000005" in effect.reason
    assert isinstance(r.replay_text("MeterValues", '{"connectorId":1,"transactionId":2000000005,"meterValue":[]}'), str)
    csms_own = frame("mv2", "MeterValues", {"connectorId": 1, "transactionId": 1234, "meterValue": [
        {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]})
    assert isinstance(r.charger_call(call(csms_own)), Forward)  # the CSMS's own ids pass
    r.tx.bind(2_000_000_005, 77)
    r.tx.retire(2_000_000_005)  # finished, within the grace period: still rewritten
    effect = r.charger_call(call(unknown))
    assert isinstance(effect, Forward) and orjson.loads(effect.text)[3]["transactionId"] == 77
    r.upstream = UpstreamState.CONNECTING  # a charger back before its link: the same rewrite
    effect = r.charger_call(call(unknown))
    assert isinstance(effect, Forward) and orjson.loads(effect.text)[3]["transactionId"] == 77
