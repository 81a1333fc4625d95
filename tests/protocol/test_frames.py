"""Frames in, frames and errors out: framing and the error codes each version spells."""

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from gateway.protocol import frames as F
from gateway.protocol.frames import Call, CallError, CallResult, ErrorCode, FrameError, OcppVersion

V16, V201, V21 = OcppVersion.V16, OcppVersion.V201, OcppVersion.V21


def reply_of(exc: FrameError) -> list:
    assert exc.reply is not None
    return orjson.loads(exc.reply)


def test_call_keeps_raw_text_and_payload() -> None:
    text = '[2, "id-1", "DataTransfer", {"vendorId": "ACME", "data": "x", "zz": 1.50}]'
    frame = F.parse(text, V16)
    assert isinstance(frame, Call)
    assert frame.raw == text  # relayed byte for byte
    assert (frame.message_id, frame.action, frame.payload["vendorId"]) == ("id-1", "DataTransfer", "ACME")


def test_result_and_error_frames() -> None:
    r = F.parse('[3,"a",{"status":"Accepted"}]', V201)
    assert isinstance(r, CallResult) and r.payload == {"status": "Accepted"}
    e = F.parse('[4,"a","NotImplemented","no",{}]', V201)
    assert isinstance(e, CallError) and e.code == "NotImplemented" and not e.result_error


@pytest.mark.parametrize(
    "version, code", [(V16, "FormationViolation"), (V201, "RpcFrameworkError"), (V21, "RpcFrameworkError")]
)
def test_not_json_gets_unreadable_id(version: OcppVersion, code: str) -> None:
    with pytest.raises(FrameError) as info:
        F.parse("{not json", version)
    assert reply_of(info.value) == [4, "-1", code, "frame is not valid JSON", {}]


def test_unknown_message_type_per_version() -> None:
    # 2.0.1 Part 4 §4.4: MessageTypeNotSupported; 1.6 §4.1.3 and 2.1 §4.4: ignore
    with pytest.raises(FrameError) as info:
        F.parse('[7,"m1",{}]', V201)
    assert reply_of(info.value)[:3] == [4, "m1", "MessageTypeNotSupported"]
    for version in (V16, V21):
        with pytest.raises(FrameError) as info:
            F.parse('[7,"m1",{}]', version)
        assert info.value.reply is None


def test_send_and_callresulterror_only_in_21() -> None:
    send = F.parse('[6,"s1","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"2026-01-01T00:00:00Z","data":[]}]', V21)
    assert isinstance(send, Call) and send.send
    cre = F.parse('[5,"r1","FormatViolation","bad result",{}]', V21)
    assert isinstance(cre, CallError) and cre.result_error
    with pytest.raises(FrameError) as info:
        F.parse('[6,"s1","X",{}]', V201)
    assert reply_of(info.value)[2] == "MessageTypeNotSupported"


def test_message_id_rules() -> None:
    long_id = "x" * 37
    with pytest.raises(FrameError) as info:
        F.parse(f'[2,"{long_id}","Heartbeat",{{}}]', V201)
    assert reply_of(info.value)[:3] == [4, "-1", "RpcFrameworkError"]  # too long to echo
    with pytest.raises(FrameError) as info:
        F.parse('[2,17,"Heartbeat",{}]', V16)
    assert reply_of(info.value)[:3] == [4, "-1", "FormationViolation"]
    ok = F.parse(f'[2,"{"y" * 36}","Heartbeat",{{}}]', V201)
    assert isinstance(ok, Call)


def test_malformed_call_shape() -> None:
    with pytest.raises(FrameError) as info:
        F.parse('[2,"c1","Heartbeat"]', V16)
    assert reply_of(info.value)[:3] == [4, "c1", "FormationViolation"]
    with pytest.raises(FrameError) as info:
        F.parse('[2,"c1","Heartbeat",[]]', V201)
    assert reply_of(info.value)[:3] == [4, "c1", "RpcFrameworkError"]


def test_malformed_reply_is_not_answered() -> None:
    with pytest.raises(FrameError) as info:
        F.parse('[3,"c1","x"]', V201)
    assert info.value.reply is None


@pytest.mark.parametrize(
    "code, v16, v2",
    [
        (ErrorCode.FORMAT_VIOLATION, "FormationViolation", "FormatViolation"),
        (ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION, "OccurenceConstraintViolation", "OccurrenceConstraintViolation"),
        (ErrorCode.NOT_IMPLEMENTED, "NotImplemented", "NotImplemented"),
        (ErrorCode.TYPE_CONSTRAINT_VIOLATION, "TypeConstraintViolation", "TypeConstraintViolation"),
    ],
)
def test_error_code_spelling(code: ErrorCode, v16: str, v2: str) -> None:
    assert code.spell(V16) == v16
    assert code.spell(V201) == v2 == code.spell(V21)
    assert F.parse_error_code(v16) is code and F.parse_error_code(v2) is code


def test_translate_error_between_versions() -> None:
    e = F.parse('[4,"a","OccurrenceConstraintViolation","d",{"k":1}]', V201)
    assert isinstance(e, CallError)
    assert orjson.loads(F.translate_error(e, V16)) == [4, "a", "OccurenceConstraintViolation", "d", {"k": 1}]
    assert F.translate_error(e, V201) == e.raw


def test_error_description_is_bounded() -> None:
    text = F.call_error(V201, "a", ErrorCode.GENERIC_ERROR, "d" * 1000)
    assert len(orjson.loads(text)[3]) == 255


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=5),
                              max_leaves=20).map(lambda v: orjson.dumps(v).decode())),
       st.sampled_from(list(OcppVersion)))
def test_parser_never_raises_anything_else(text: str, version: OcppVersion) -> None:
    try:
        frame = F.parse(text, version)
    except FrameError as exc:
        if exc.reply is not None:
            reply = orjson.loads(exc.reply)
            assert reply[0] == 4 and isinstance(reply[1], str) and len(reply[1]) <= 36
            assert reply[2] in {c.spell(version) for c in ErrorCode}
        return
    assert isinstance(frame, (Call, CallResult, CallError))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=36).filter(lambda s: s.strip() != ""), st.sampled_from(["A", "B\\\"x", "Da{ta]"]),
       st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-9, 9), st.text(max_size=5)), max_size=4),
       st.sampled_from(["", " ", "\n  "]))
def test_payload_text_is_the_payload_as_written(mid: str, action: str, payload: dict, ws: str) -> None:
    body = orjson.dumps(payload, option=orjson.OPT_INDENT_2 if ws else 0).decode()
    raw = f"[{ws}2{ws},{ws}{orjson.dumps(mid).decode()}{ws},{ws}{orjson.dumps(action).decode()}{ws},{ws}{body}{ws}]{ws}"
    frame = F.parse(raw, V16)
    assert isinstance(frame, Call)
    text = F.payload_text(raw)
    assert text == body
    rebuilt = F.call_with_payload_text("new-id", frame.action, text)
    again = F.parse(rebuilt, V16)
    assert isinstance(again, Call) and again.payload == payload and again.action == frame.action
