"""Operator calls (gateway/operator.py) without sockets: the checks in their order, the allow-list
of a channel, the call's failures, and Pause/Resume. A fake session stands for the charger (it
records the calls); the schemas are the real ones. REST and MQTT each translate these errors; their
end-to-end tests are tests/api/test_api.py and tests/telemetry/test_e2e.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.control.engine import ControlError
from gateway.errors import Busy, CallFailed, CallTimeout, NotConnected
from gateway.operator import EVERY_ACTION, Operator, OperatorError, parse_payload
from gateway.protocol.frames import OcppVersion
from gateway.protocol.schemas import SchemaRegistry

SCHEMAS = SchemaRegistry([OcppVersion.V16, OcppVersion.V201])


class FakeSession:
    def __init__(self, version: OcppVersion = OcppVersion.V16, connected: bool = True,
                 fail: Exception | None = None) -> None:
        self.version = version
        self._connected = connected
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any], float | None]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    async def call_charger(self, action: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.calls.append((action, payload, timeout))
        if self.fail is not None:
            raise self.fail
        return {"status": "Accepted"}


class FakeControl:
    def __init__(self, refuse: ControlError | None = None) -> None:
        self.done: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse = refuse

    async def pause(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._do("pause", cid, body)

    async def resume(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._do("resume", cid, body)

    def _do(self, verb: str, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.done.append((verb, cid, body))
        return {"charger_id": cid, "state": "paused" if verb == "pause" else "released"}


async def kind_of(call: Any) -> str:
    with pytest.raises(OperatorError) as info:
        await call
    return info.value.kind


async def test_a_call_passes_every_check_and_reaches_the_charger() -> None:
    cp = FakeSession()
    op = Operator({"CP": cp}, SCHEMAS)
    assert await op.call("CP", "Reset", {"type": "Soft"}, timeout=3.0) == {"status": "Accepted"}
    assert cp.calls == [("Reset", {"type": "Soft"}, 3.0)]


async def test_checks_come_in_their_documented_order_and_nothing_is_sent_when_one_fails() -> None:
    cp = FakeSession()
    op = Operator({"CP": cp, "GONE": FakeSession(connected=False)}, SCHEMAS)
    assert await kind_of(op.call("NOBODY", "Reset", {"type": "Soft"})) == "not_connected"
    assert await kind_of(op.call("GONE", "Reset", {"type": "Soft"})) == "not_connected"
    assert await kind_of(op.call("CP", "NoSuchAction", {})) == "unknown_action"
    assert await kind_of(op.call("CP", "BootNotification", {})) == "action_not_allowed"  # charger-to-CSMS
    # the allow-list is checked before the payload: a refused action says so whatever it carries
    assert await kind_of(op.call("CP", "ChangeConfiguration", {"bad": 1}, allowed=["Reset"])) == "not_permitted"
    with pytest.raises(OperatorError) as info:
        await op.call("CP", "Reset", {"type": "Sideways"})
    assert info.value.kind == "invalid_payload" and info.value.violation is not None
    assert info.value.violation.code.value == "PropertyConstraintViolation"
    assert cp.calls == []


async def test_the_allow_list_of_a_channel() -> None:
    cp = FakeSession(OcppVersion.V201)
    op = Operator({"CP": cp}, SCHEMAS)
    reset = {"type": "Immediate"}
    assert await op.call("CP", "Reset", reset, allowed=["Reset"]) == {"status": "Accepted"}
    assert await op.call("CP", "Reset", reset, allowed=["*"]) == {"status": "Accepted"}
    assert await op.call("CP", "Reset", reset, allowed=EVERY_ACTION) == {"status": "Accepted"}
    assert await kind_of(op.call("CP", "Reset", reset, allowed=[])) == "not_permitted"
    assert len(cp.calls) == 3


@pytest.mark.parametrize(("failure", "kind"), [
    (NotConnected("gone"), "not_connected"), (Busy("queue full"), "busy"), (CallTimeout("10 s"), "timeout"),
    (CallFailed("NotSupported", "no", {"x": 1}), "call_error"),
])
async def test_the_calls_failures(failure: Exception, kind: str) -> None:
    op = Operator({"CP": FakeSession(fail=failure)}, SCHEMAS)
    with pytest.raises(OperatorError) as info:
        await op.call("CP", "Reset", {"type": "Hard"})
    assert info.value.kind == kind and info.value.__cause__ is failure
    if kind == "call_error":
        assert info.value.call is failure


async def test_pause_and_resume_go_to_local_control_and_keep_its_codes() -> None:
    control = FakeControl()
    op = Operator({}, SCHEMAS, control)
    assert (await op.local("CP", "Pause", {}))["state"] == "paused"
    assert (await op.local("CP", "Resume", {"evse": 1}))["state"] == "released"
    assert control.done == [("pause", "CP", {}), ("resume", "CP", {"evse": 1})]
    assert await kind_of(op.local("CP", "Pause", {}, allowed=["Reset"])) == "not_permitted"
    assert await kind_of(op.local("CP", "Reset", {})) == "unknown_action"
    assert await kind_of(Operator({}, SCHEMAS).local("CP", "Pause", {})) == "disabled"
    refusing = Operator({}, SCHEMAS, FakeControl(ControlError("unknown_transaction", "no such")))
    assert await kind_of(refusing.local("CP", "Pause", {"transaction_id": "x"})) == "unknown_transaction"
    assert len(control.done) == 2


def test_payloads() -> None:
    assert parse_payload(b"") == {} and parse_payload(b"  \n") == {}
    assert parse_payload(b'{"evse": 1}') == {"evse": 1}
    for raw, kind in ((b"{nope", "bad_json"), (b"[1]", "bad_payload"), (b'"x"', "bad_payload")):
        with pytest.raises(OperatorError) as info:
            parse_payload(raw)
        assert info.value.kind == kind
