"""Schema validation codes, the action catalogue, and the local CSMS's answers for every action."""

import asyncio
from typing import Any

import jsonschema
import pytest

from gateway.auth import LocalAuthorizer
from gateway.config import Settings
from gateway.local import LocalCsms
from gateway.protocol.frames import Call, ErrorCode, OcppVersion
from gateway.protocol.responses import minimal_instance
from gateway.protocol.schemas import SchemaRegistry

REG = SchemaRegistry()
V16, V201, V21 = OcppVersion.V16, OcppVersion.V201, OcppVersion.V21


@pytest.mark.parametrize(
    "version, payload, code",
    [
        (V16, {"connectorId": 1, "status": "Available"}, ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION),  # errorCode missing
        (V16, {"connectorId": "one", "errorCode": "NoError", "status": "Available"}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        (V16, {"connectorId": 1, "errorCode": "NoError", "status": "Dancing"}, ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        (V16, {"connectorId": 1, "errorCode": "NoError", "status": "Available", "extra": 1}, ErrorCode.FORMAT_VIOLATION),
    ],
)
def test_violation_codes(version: OcppVersion, payload: dict, code: ErrorCode) -> None:
    violation = REG.validate(version, "StatusNotification", payload)
    assert violation is not None and violation.code is code


def test_valid_payloads_pass_and_lengths_are_checked() -> None:
    assert REG.validate(V201, "Heartbeat", {}) is None
    assert REG.validate(V16, "Authorize", {"idTag": "A" * 20}) is None
    v = REG.validate(V16, "Authorize", {"idTag": "A" * 21})  # idTag is CiString20
    assert v is not None and v.code is ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
    assert v.code.spell(V16) == "PropertyConstraintViolation"


def test_catalogue_directions() -> None:
    assert REG.charger_may_send(V16, "StartTransaction") and not REG.charger_may_send(V16, "RemoteStartTransaction")
    assert REG.csms_may_send(V16, "RemoteStartTransaction") and REG.csms_may_send(V16, "DataTransfer")
    assert REG.charger_may_send(V21, "NotifyPeriodicEventStream")
    assert not REG.knows(V201, "StartTransaction") and REG.knows(V16, "StartTransaction")
    for version in OcppVersion:
        cat = REG.catalogue(version)
        assert cat.charger_actions, version
        assert cat.charger_actions <= cat.actions


def _response_schema(version: OcppVersion, action: str) -> dict[str, Any] | None:
    return REG.load(version, action, response=True)


@pytest.mark.parametrize("version", list(OcppVersion))
def test_minimal_answer_to_every_charger_action_is_schema_valid(version: OcppVersion) -> None:
    class _NoStore:
        async def next_transaction_id(self) -> int:
            return 7

    settings = Settings()
    local = LocalCsms(settings, _NoStore(), REG, LocalAuthorizer(settings, _NoStore()))  # type: ignore[arg-type]
    checked = 0
    for action in sorted(REG.catalogue(version).charger_actions):
        schema = _response_schema(version, action)
        if schema is None:  # a 2.1 SEND has no response
            assert action == "NotifyPeriodicEventStream"
            continue
        request_schema = REG.load(version, action, response=False)
        assert request_schema is not None
        request = minimal_instance(request_schema, request_schema, "2026-01-01T00:00:00Z")
        answer = asyncio.run(local.answer(version, Call(message_id="1", action=action, payload=request, raw="")))
        jsonschema.validators.validator_for(schema)(schema).validate(answer)  # an independent validator
        checked += 1
    assert checked >= 13


def test_meaningful_answers() -> None:
    class _Store:
        n = 0

        async def next_transaction_id(self) -> int:
            self.n += 1
            return self.n

    settings = Settings(auth={"local_list": ["GOOD"]}, local={"heartbeat_interval": 42})
    local = LocalCsms(settings, _Store(), REG, LocalAuthorizer(settings, _Store()))  # type: ignore[arg-type]

    def ask(version: OcppVersion, action: str, payload: dict) -> dict:
        return asyncio.run(local.answer(version, Call(message_id="1", action=action, payload=payload, raw="")))

    boot = ask(V16, "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})
    assert boot["status"] == "Accepted" and boot["interval"] == 42
    assert ask(V16, "Authorize", {"idTag": "GOOD"})["idTagInfo"]["status"] == "Accepted"
    assert ask(V16, "Authorize", {"idTag": "BAD"})["idTagInfo"]["status"] == "Invalid"
    assert ask(V201, "Authorize", {"idToken": {"idToken": "BAD", "type": "ISO14443"}})["idTokenInfo"]["status"] == "Unknown"
    start = {"connectorId": 1, "idTag": "GOOD", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"}
    assert ask(V16, "StartTransaction", start)["transactionId"] == 1
    assert ask(V16, "StartTransaction", start)["transactionId"] == 2
    assert ask(V16, "DataTransfer", {"vendorId": "x"}) == {"status": "UnknownVendorId"}
