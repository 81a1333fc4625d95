"""OCPP-J framing: parse and serialise RPC frames, with the error codes each version spells.

Rule: this package is sans-I/O. No asyncio, no sockets, no clock reads; `tests/protocol/test_purity.py`
reads the imports and fails otherwise. Time comes in as arguments.

Frame shapes (OCPP-J 1.6 §4, 2.0.1 Part 4 §4, 2.1 Part 4 §4):

    CALL             [2, "<id>", "<Action>", {payload}]
    CALLRESULT       [3, "<id>", {payload}]
    CALLERROR        [4, "<id>", "<errorCode>", "<errorDescription>", {errorDetails}]
    CALLRESULTERROR  [5, "<id>", "<errorCode>", "<errorDescription>", {errorDetails}]   (2.1 only)
    SEND             [6, "<id>", "<Action>", {payload}]                                (2.1 only)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import ProtocolError

MAX_MESSAGE_ID_LENGTH = 36  # "to allow for GUIDs" (J16 §4.1.4, J201 §4.1.4)
UNREADABLE_ID = "-1"  # J201 §4.2.3: the id to use when the MessageId could not be read
ERROR_DESCRIPTION_MAX = 255  # J201 Table 7: ErrorDescription is string[255]
# Deepest JSON nesting accepted. OCPP payloads nest about 8 levels; orjson itself has no depth limit
# and crashes the process (stack overflow) at ~150 000 levels, which fit in a 300 kB frame, and
# anything that walks a payload recursively would hit Python's recursion limit much earlier.
MAX_DEPTH = 64
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def too_deep(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit` (checked before parsing)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.count("[") + text.count("{") <= limit:  # nearly every frame: no scan needed
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


class OcppVersion(str, enum.Enum):
    """A WebSocket subprotocol name, which is also how the version is named in configuration."""

    V16 = "ocpp1.6"
    V201 = "ocpp2.0.1"
    V21 = "ocpp2.1"

    @property
    def is_2x(self) -> bool:
        return self is not OcppVersion.V16


class MessageType(enum.IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    CALLRESULTERROR = 5
    SEND = 6


_TYPES_21 = frozenset({2, 3, 4, 5, 6})
_TYPES = frozenset({2, 3, 4})


def message_types(version: OcppVersion) -> frozenset[int]:
    return _TYPES_21 if version is OcppVersion.V21 else _TYPES


class ErrorCode(str, enum.Enum):
    """Version-neutral names; `spell(version)` gives the text that goes on the wire."""

    NOT_IMPLEMENTED = "NotImplemented"  # action not known by the receiver
    NOT_SUPPORTED = "NotSupported"  # action recognised but not supported
    INTERNAL_ERROR = "InternalError"
    PROTOCOL_ERROR = "ProtocolError"
    SECURITY_ERROR = "SecurityError"
    FORMAT_VIOLATION = "FormatViolation"  # 1.6: FormationViolation
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURRENCE_CONSTRAINT_VIOLATION = "OccurrenceConstraintViolation"  # 1.6: OccurenceConstraintViolation
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    GENERIC_ERROR = "GenericError"
    MESSAGE_TYPE_NOT_SUPPORTED = "MessageTypeNotSupported"  # 2.x only
    RPC_FRAMEWORK_ERROR = "RpcFrameworkError"  # 2.x only

    def spell(self, version: OcppVersion) -> str:
        if version is OcppVersion.V16:
            # The 1.6 spellings are kept on purpose by the OCA (J16E §5.1/5.2).
            return _V16_SPELLING.get(self, self.value)
        return self.value


_V16_SPELLING = {
    ErrorCode.FORMAT_VIOLATION: "FormationViolation",
    ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION: "OccurenceConstraintViolation",
    # 1.6 has neither code; the nearest 1.6 meaning is a malformed frame.
    ErrorCode.RPC_FRAMEWORK_ERROR: "FormationViolation",
    ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED: "NotSupported",
}

_BY_WIRE = {code.value: code for code in ErrorCode} | {
    "FormationViolation": ErrorCode.FORMAT_VIOLATION,
    "OccurenceConstraintViolation": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
}


def parse_error_code(text: str) -> ErrorCode | None:
    """Map a wire error code of any version to the neutral name (None when unknown)."""
    return _BY_WIRE.get(text)


@dataclass(slots=True, kw_only=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]
    raw: str  # the frame exactly as received; relayed untouched
    send: bool = False  # True for a 2.1 SEND (type 6): never answered


@dataclass(slots=True, kw_only=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]
    raw: str


@dataclass(slots=True, kw_only=True)
class CallError:
    message_id: str
    code: str  # as received; see parse_error_code
    description: str
    details: dict[str, Any]
    raw: str
    result_error: bool = False  # True for a 2.1 CALLRESULTERROR (type 5)


Frame = Call | CallResult | CallError


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameError(ProtocolError):
    """A frame that cannot be accepted.

    `reply` is the CALLERROR text to send back, or None when the spec says to ignore the frame
    (1.6 and 2.1 with an unknown MessageTypeId, or a malformed reply that has nobody to answer).
    """

    code: ErrorCode
    description: str
    message_id: str = UNREADABLE_ID
    reply: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.description}"


def _error(version: OcppVersion, code: ErrorCode, description: str, message_id: str, *, answer: bool = True) -> FrameError:
    reply = call_error(version, message_id, code, description) if answer else None
    return FrameError(code=code, description=description, message_id=message_id, reply=reply)


def parse(text: str | bytes, version: OcppVersion) -> Frame:
    """Parse one frame. Raises FrameError with the spec's answer for that version."""
    # nesting deeper than MAX_DEPTH needs more than MAX_DEPTH characters: short frames skip the look
    if len(text) > MAX_DEPTH and too_deep(text):
        raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, f"frame nests deeper than {MAX_DEPTH} levels", UNREADABLE_ID)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # J201 §4.2.3: do not echo the invalid JSON; the id cannot be read -> "-1".
        raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, "frame is not valid JSON", UNREADABLE_ID) from exc
    if isinstance(text, bytes):
        text = text.decode()
    if type(data) is not list or len(data) < 3:
        raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, "frame is not an OCPP-J array", UNREADABLE_ID)
    type_id, message_id = data[0], data[1]
    if type(message_id) is not str:  # orjson gives exact types: no str subclass can come out of it
        raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, "MessageId is not a string", UNREADABLE_ID)
    if len(message_id) > MAX_MESSAGE_ID_LENGTH or not message_id:
        # An id we cannot accept is one we must not echo either: it could be 1 MB long.
        shown = message_id if 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH else UNREADABLE_ID
        raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, "MessageId must be 1 to 36 characters", shown)
    # the literals are MessageType's values (CALL 2, CALLRESULT 3, CALLERROR 4, CALLRESULTERROR 5, SEND 6):
    # compared as plain ints, the commonest first
    if type_id == 2 and type(type_id) is int:
        if len(data) != 4 or type(data[2]) is not str or type(data[3]) is not dict:
            raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR if version.is_2x else ErrorCode.FORMAT_VIOLATION,
                         "CALL must be [2, id, action, {payload}]", message_id)
        return Call(message_id=message_id, action=data[2], payload=data[3], raw=text)
    if type_id == 3 and type(type_id) is int:
        if len(data) != 3 or type(data[2]) is not dict:
            raise _error(version, ErrorCode.FORMAT_VIOLATION, "CALLRESULT must be [3, id, {payload}]", message_id, answer=False)
        return CallResult(message_id=message_id, payload=data[2], raw=text)
    if type(type_id) is not int or type_id not in message_types(version):
        if version is OcppVersion.V201:
            # 2.0.1 Part 4 §4.4: answer MessageTypeNotSupported.
            raise _error(version, ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED, f"MessageTypeId {type_id!r} is not supported", message_id)
        # 1.6 §4.1.3 and 2.1 §4.4: ignore the message.
        raise _error(version, ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED, f"MessageTypeId {type_id!r} ignored", message_id,
                     answer=False)
    if type_id == MessageType.SEND:
        if len(data) != 4 or type(data[2]) is not str or type(data[3]) is not dict:
            raise _error(version, ErrorCode.RPC_FRAMEWORK_ERROR, "CALL must be [2, id, action, {payload}]", message_id,
                         answer=False)
        return Call(message_id=message_id, action=data[2], payload=data[3], raw=text, send=True)
    # CALLERROR / CALLRESULTERROR
    if len(data) != 5 or type(data[2]) is not str or type(data[3]) is not str or type(data[4]) is not dict:
        raise _error(version, ErrorCode.FORMAT_VIOLATION, "CALLERROR must be [4, id, code, description, {details}]",
                     message_id, answer=False)
    return CallError(message_id=message_id, code=data[2], description=data[3], details=data[4], raw=text,
                     result_error=type_id == MessageType.CALLRESULTERROR)


def peek_reply_id(text: str) -> tuple[int, str] | None:
    """Cheap look at a frame's (type, id) without full validation, for the relay's reply path."""
    if too_deep(text):
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and len(data) >= 3 and type(data[0]) is int and isinstance(data[1], str):
        return data[0], data[1]
    return None


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return _dumps([MessageType.CALL, message_id, action, payload])


def call_result(message_id: str, payload: dict[str, Any]) -> str:
    return _dumps([MessageType.CALLRESULT, message_id, payload])


def call_error(version: OcppVersion, message_id: str, code: ErrorCode, description: str = "",
               details: dict[str, Any] | None = None) -> str:
    return _dumps([MessageType.CALLERROR, message_id, code.spell(version), description[:ERROR_DESCRIPTION_MAX],
                   details or {}])


def translate_error(frame: CallError, version: OcppVersion) -> str:
    """Re-spell a CALLERROR for a peer of another version (known codes only); the raw frame otherwise."""
    code = parse_error_code(frame.code)
    if code is None or code.spell(version) == frame.code:
        return frame.raw
    return _dumps([MessageType.CALLERROR, frame.message_id, code.spell(version), frame.description, frame.details])


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _skip_string(text: str, i: int) -> int:
    """`text[i]` is an opening quote; returns the index after the closing quote."""
    i += 1
    while True:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1


def payload_text(raw: str) -> str:
    """The payload of a CALL frame exactly as it was written (for storing and replaying it untouched).

    `raw` must be a frame that `parse()` accepted as a CALL: `[2, "<id>", "<Action>", {...}]`."""
    i = _skip_ws(raw, 0) + 1  # '['
    i = _skip_ws(raw, i)
    while raw[i] not in ",":  # the type id
        i += 1
    i = _skip_ws(raw, i + 1)
    i = _skip_ws(raw, _skip_string(raw, i))  # message id
    i = _skip_ws(raw, i + 1)  # ','
    i = _skip_ws(raw, _skip_string(raw, i))  # action
    i = _skip_ws(raw, i + 1)  # ','
    end = raw.rstrip().rstrip("]").rstrip()
    return end[i:]


def call_with_payload_text(message_id: str, action: str, payload: str) -> str:
    """A CALL frame around a payload that is already JSON text (kept byte for byte)."""
    return f"[2,{_dumps(message_id)},{_dumps(action)},{payload}]"
