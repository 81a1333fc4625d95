"""OCPP 1.5 <-> 1.6 payload conversion (pure): every rule of the table in docs/chargers.md."""

from __future__ import annotations

from adapters.soap import convert

T = "2030-01-02T03:04:05Z"


def test_meter_values_15_become_meter_value_and_sampled_value() -> None:
    p15 = {"connectorId": 1, "transactionId": 5, "values": [{"timestamp": T, "value": [
        {"value": "12", "unit": "Amp", "measurand": "Current.Import", "context": "Sample.Periodic"},
        {"value": "230", "unit": "Volt", "location": "Outlet"}, {"value": "7", "format": "Raw"}]}]}
    assert convert.up("MeterValues", p15, False) == {"connectorId": 1, "transactionId": 5, "meterValue": [
        {"timestamp": T, "sampledValue": [
            {"value": "12", "unit": "A", "measurand": "Current.Import", "context": "Sample.Periodic"},
            {"value": "230", "unit": "V", "location": "Outlet"}, {"value": "7", "format": "Raw"}]}]}
    assert convert.up("MeterValues", {"connectorId": 1}, False) == {"connectorId": 1, "meterValue": []}


def test_stop_transaction_data_is_flattened_and_there_is_no_reason() -> None:
    p15 = {"transactionId": 5, "timestamp": T, "meterStop": 9, "transactionData": [
        {"values": [{"timestamp": T, "value": [{"value": "1"}]}]},
        {"values": [{"timestamp": T, "value": [{"value": "2"}]}]}]}
    p16 = convert.up("StopTransaction", p15, False)
    assert [mv["sampledValue"][0]["value"] for mv in p16["transactionData"]] == ["1", "2"]
    assert "reason" not in p16
    assert "transactionData" not in convert.up("StopTransaction", {"transactionId": 5, "transactionData": []}, False)


def test_status_notification_values_renamed_in_16() -> None:
    p = convert.up("StatusNotification", {"connectorId": 1, "status": "Occupied", "errorCode": "Mode3Error"}, False)
    assert p == {"connectorId": 1, "status": "Charging", "errorCode": "EVCommunicationError"}
    same = {"connectorId": 1, "status": "Faulted", "errorCode": "GroundFailure"}
    assert convert.up("StatusNotification", same, False) == same


def test_boot_answer_for_a_15_charger() -> None:
    p = convert.down("BootNotification", {"status": "Accepted", "currentTime": T, "interval": 60}, True)
    assert p == {"status": "Accepted", "currentTime": T, "heartbeatInterval": 60}
    assert convert.down("BootNotification", {"status": "Pending", "currentTime": T, "interval": 60}, True)[
        "status"] == "Rejected"


def test_commands_to_a_15_charger_and_its_answers() -> None:
    rs = convert.down("RemoteStartTransaction", {"idTag": "A", "connectorId": 1, "chargingProfile": {"x": 1}}, False)
    assert rs == {"idTag": "A", "connectorId": 1}
    sll = convert.down("SendLocalList", {"listVersion": 2, "updateType": "Full",
                                         "localAuthorizationList": [{"idTag": "A"}]}, False)
    assert sll == {"listVersion": 2, "updateType": "Full", "localAuthorisationList": [{"idTag": "A"}]}
    assert convert.up("UnlockConnector", {"status": "Accepted"}, True) == {"status": "Unlocked"}
    assert convert.up("UnlockConnector", {"status": "Rejected"}, True) == {"status": "UnlockFailed"}
    assert convert.up("SendLocalList", {"status": "HashError", "hash": "ab"}, True) == {"status": "Failed"}
    assert convert.NOT_IN_15 == {"ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile",
                                 "TriggerMessage"}


def test_conversion_does_not_touch_its_input() -> None:
    p15 = {"connectorId": 1, "values": [{"timestamp": T, "value": [{"value": "1", "unit": "Amp"}]}]}
    before = repr(p15)
    convert.up("MeterValues", p15, False)
    assert repr(p15) == before


def test_soap_and_http_paths_are_validated() -> None:
    import pytest
    from pydantic import ValidationError

    from gateway.config import Settings

    assert Settings(soap={"path": "/legacy/ocpp-s"}).soap.path == "/legacy/ocpp-s"
    for bad in ("ocpp-s", "/ocpp-s/", "/a b", "", "/{x}"):
        with pytest.raises(ValidationError):
            Settings(soap={"path": bad})
        with pytest.raises(ValidationError):
            Settings(http={"path": bad})
