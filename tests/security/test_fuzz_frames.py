"""Property-based fuzzing of the OCPP-J frame parser (bounded: CI stays fast).

Whatever text arrives, `parse` returns a frame or raises FrameError whose reply (if any) is a valid
CALLERROR; it never raises anything else, never echoes an unreadable id, and never crashes the
process on deep nesting (orjson has no depth limit of its own).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.protocol import frames as F
from gateway.protocol.frames import FrameError, OcppVersion

VERSIONS = st.sampled_from(list(OcppVersion))
FUZZ = settings(max_examples=100, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def _check(text: str | bytes, version: OcppVersion) -> None:
    try:
        frame = F.parse(text, version)
    except FrameError as exc:
        if exc.reply is not None:
            reply = orjson.loads(exc.reply)
            assert reply[0] == 4 and isinstance(reply[1], str) and len(reply[1]) <= F.MAX_MESSAGE_ID_LENGTH
            assert isinstance(reply[2], str) and isinstance(reply[3], str) and reply[4] == {}
        return
    assert frame.raw == (text if isinstance(text, str) else text.decode())


@FUZZ
@given(st.text(max_size=200), VERSIONS)
def test_any_text(text: str, version: OcppVersion) -> None:
    _check(text, version)


@FUZZ
@given(st.binary(max_size=200), VERSIONS)
def test_any_bytes(data: bytes, version: OcppVersion) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return  # malformed UTF-8 never reaches the parser: websockets closes the connection with 1007
    _check(data, version)


@FUZZ
@given(st.lists(json_values, max_size=6), VERSIONS)
def test_any_json_array(items: list, version: OcppVersion) -> None:
    _check(orjson.dumps(items).decode(), version)


@FUZZ
@given(st.sampled_from([2, 3, 4, 5, 6, 7, -1, 2.0, "2", None]), st.one_of(st.text(max_size=50), st.integers(-(2**63), 2**63)),
       st.text(max_size=30), json_values, VERSIONS)
def test_frame_shaped_json(type_id: object, message_id: object, action: str, payload: object,
                           version: OcppVersion) -> None:
    for frame in ([type_id, message_id, action, payload], [type_id, message_id, payload],
                  [type_id, message_id, action, "desc", payload]):
        _check(orjson.dumps(frame).decode(), version)


@pytest.mark.parametrize("depth", [65, 1_000, 150_000, 500_000])
def test_deep_nesting_is_refused_before_parsing(depth: int) -> None:
    # 150 000 levels (300 kB) crash orjson's parser with a stack overflow: never let it see them
    for text in ("[" * depth + "]" * depth, '[2,"m","DataTransfer",{"data":' + '{"a":' * depth + "1" + "}" * depth + "}]"):
        with pytest.raises(FrameError) as info:
            F.parse(text, OcppVersion.V201)
        assert "deeper" in info.value.description
        assert F.peek_reply_id(text) is None


def test_brackets_inside_strings_do_not_count() -> None:
    text = '[2,"m","DataTransfer",{"vendorId":"x","data":"' + "[{" * 5000 + '\\"' + "]}" * 10 + '"}]'
    frame = F.parse(text, OcppVersion.V16)
    assert frame.raw == text
    assert not F.too_deep('[[[[' + '"\\\\"' + ']]]]')  # an escaped backslash ends the string


def test_numbers_beyond_64_bits() -> None:
    for version in OcppVersion:
        _check('[2,"m","DataTransfer",{"vendorId":"x","data":' + "9" * 400 + "}]", version)
        _check('[2,"m","DataTransfer",{"vendorId":"x","data":1e999}]', version)


def test_huge_flat_array_is_parsed_not_refused() -> None:
    # wide is fine (bounded by max_frame_size); only depth is limited
    text = '[2,"m","DataTransfer",{"vendorId":"x","data":' + orjson.dumps([[i] for i in range(50_000)]).decode() + "}]"
    assert F.parse(text, OcppVersion.V16).payload["data"][-1] == [49_999]
