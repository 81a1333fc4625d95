"""gateway.status.StatusBook, fed exchanges directly (pure: no sockets, no event loop): what the API
and the page show for 1.6 and 2.x chargers."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from gateway.ports import Exchange
from gateway.protocol.frames import OcppVersion
from gateway.status import StatusBook, read_samples

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def ex(version: OcppVersion, action: str, request: dict[str, Any], response: dict[str, Any] | None = None,
       origin: str = "charger") -> Exchange:
    return Exchange(charger_id="C", version=version, origin=origin, action=action, message_id="1", request=request,
                    response=response if response is not None else {}, answered_by="gateway", received_at=NOW)


def session(version: OcppVersion = OcppVersion.V201) -> Any:
    return SimpleNamespace(charger_id="C", version=version)


def test_samples_of_both_versions_in_w_and_wh() -> None:
    # 1.6: strings, `unit`, Energy.Active.Import.Register by default
    assert read_samples([{"timestamp": "t", "sampledValue": [{"value": "12.5", "unit": "kWh"},
                                                            {"value": "7.2", "measurand": "Power.Active.Import",
                                                             "unit": "kW"}]}]) == {
        "Energy.Active.Import.Register": 12500.0, "Power.Active.Import": 7200.0}
    # 2.x: numbers, unitOfMeasure with a power-of-ten multiplier
    assert read_samples([{"timestamp": "t", "sampledValue": [
        {"value": 11, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}},
        {"value": 4.2, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh"}}]}]) == {
        "Power.Active.Import": 11000.0, "Energy.Active.Import.Register": 4200.0}
    # phases only: power summed; an unphased value wins over the phases
    phased = [{"value": "2300", "measurand": "Power.Active.Import", "phase": p} for p in ("L1", "L2", "L3")]
    assert read_samples([{"timestamp": "t", "sampledValue": phased}]) == {"Power.Active.Import": 6900.0}
    assert read_samples([{"timestamp": "t", "sampledValue": phased + [
        {"value": "7000", "measurand": "Power.Active.Import"}]}]) == {"Power.Active.Import": 7000.0}
    # other measurands, units it cannot convert, garbage: ignored
    assert read_samples([{"timestamp": "t", "sampledValue": [
        {"value": "230", "measurand": "Voltage", "unit": "V"}, {"value": "1", "unit": "varh"},
        {"value": "NaN"}, {"value": "x"}, "junk"]}, None, {"sampledValue": "no"}]) == {}
    assert read_samples("not a list") == {}


def test_a_201_transaction_from_start_to_end() -> None:
    book = StatusBook()
    v = OcppVersion.V201
    book.session_event(session(v), "connected")
    book.exchange(session(v), ex(v, "BootNotification", {"reason": "PowerUp", "chargingStation": {
        "model": "M", "vendorName": "V", "serialNumber": "S1", "firmwareVersion": "1.2"}}))
    book.exchange(session(v), ex(v, "StatusNotification", {"timestamp": "2030-01-01T11:00:00Z",
                                                            "connectorStatus": "Occupied", "evseId": 1,
                                                            "connectorId": 1}))

    def energy(wh: float, w: float) -> list[dict[str, Any]]:
        return [{"timestamp": "t", "sampledValue": [
            {"value": wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
            {"value": w, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}]

    tx = {"transactionId": "TX-9"}
    book.exchange(session(v), ex(v, "TransactionEvent", {
        "eventType": "Started", "timestamp": "2030-01-01T11:01:00Z", "triggerReason": "CablePluggedIn", "seqNo": 0,
        "transactionInfo": tx, "evse": {"id": 1, "connectorId": 1}, "meterValue": energy(5000, 0)}))
    book.exchange(session(v), ex(v, "TransactionEvent", {
        "eventType": "Updated", "timestamp": "2030-01-01T11:30:00Z", "triggerReason": "MeterValuePeriodic",
        "seqNo": 1, "transactionInfo": tx, "meterValue": energy(8500, 7000)}))  # no evse: taken from the start
    view = book.get("C").view()  # type: ignore[union-attr]
    assert view["boot"] == {"vendor": "V", "model": "M", "serial_number": "S1", "firmware_version": "1.2"}
    [conn] = view["connectors"]
    assert conn["status"] == "Occupied" and conn["since"] == "2030-01-01T11:00:00Z"
    assert conn["transaction_id"] == "TX-9" and conn["power_w"] == 7000 and conn["energy_wh"] == 8500
    [open_tx] = view["open_transactions"]
    assert open_tx["energy_wh"] == 3500 and open_tx["started_at"] == "2030-01-01T11:01:00Z"
    book.exchange(session(v), ex(v, "MeterValues", {"evseId": 1, "meterValue": energy(9000, 6000)}))
    assert book.get("C").view()["open_transactions"][0]["energy_wh"] == 4000  # type: ignore[union-attr]
    book.exchange(session(v), ex(v, "TransactionEvent", {
        "eventType": "Ended", "timestamp": "2030-01-01T12:00:00Z", "triggerReason": "EVDeparted", "seqNo": 2,
        "transactionInfo": tx, "meterValue": energy(9100, 0)}))
    view = book.get("C").view()  # type: ignore[union-attr]
    assert view["open_transactions"] == []
    assert view["connectors"][0]["transaction_id"] is None and view["connectors"][0]["power_w"] is None
    assert view["connectors"][0]["energy_wh"] == 9100


def test_16_stop_closes_the_transaction_and_csms_calls_are_not_read_as_the_chargers() -> None:
    book = StatusBook()
    v = OcppVersion.V16
    book.exchange(session(v), ex(v, "StatusNotification", {"connectorId": 2, "errorCode": "GroundFailure",
                                                           "status": "Faulted"}))
    book.exchange(session(v), ex(v, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 100,
                                                         "timestamp": "2030-01-01T10:00:00Z"},
                                 {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}))
    # a CSMS-originated call with a charger-looking payload changes nothing
    book.exchange(session(v), ex(v, "StopTransaction", {"transactionId": 7, "meterStop": 1, "timestamp": "t"},
                                 origin="csms"))
    view = book.get("C").view()  # type: ignore[union-attr]
    assert [t["transaction_id"] for t in view["open_transactions"]] == ["7"]
    faulted = next(c for c in view["connectors"] if c["evse"] == 2)
    assert faulted["status"] == "Faulted" and faulted["error_code"] == "GroundFailure"
    assert faulted["since"] == "2030-01-01T12:00:00Z"  # no charger timestamp: the receipt time
    book.exchange(session(v), ex(v, "StopTransaction", {"transactionId": 7, "meterStop": 900, "timestamp": "t"}))
    assert book.get("C").view()["open_transactions"] == []  # type: ignore[union-attr]


def test_the_book_is_bounded_and_forgets_disconnected_chargers_first() -> None:
    book = StatusBook(max_chargers=3)
    for cid in ("A", "B", "C"):
        book.session_event(SimpleNamespace(charger_id=cid, version=OcppVersion.V16), "connected")
    book.session_event(SimpleNamespace(charger_id="B", version=OcppVersion.V16), "disconnected")
    book.session_event(SimpleNamespace(charger_id="D", version=OcppVersion.V16), "connected")
    assert set(book.chargers) == {"A", "C", "D"}


def test_power_energy_and_readings_follow_the_telemetry_unit_rules() -> None:
    """No unit is the measurand's own (W, Wh, A, V; never Wh for a current), the 2.x multiplier
    applies, a Wh value is not taken as power; readings keep EVSE + measurand + phase + location apart."""
    assert read_samples([{"timestamp": "t", "sampledValue": [
        {"value": 7.4, "measurand": "Power.Active.Import", "unitOfMeasure": {"multiplier": 3}},
        {"value": 12, "unitOfMeasure": {"unit": "kWh", "multiplier": -1}}]}]) == {
        "Power.Active.Import": 7400.0, "Energy.Active.Import.Register": 1200.0}
    assert read_samples([{"timestamp": "t", "sampledValue": [
        {"value": "5", "measurand": "Power.Active.Import", "unit": "Wh"},
        {"value": 1, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 400}}]}]) == {}
    book = StatusBook()
    v = OcppVersion.V16
    book.session_event(session(v), "connected")
    book.exchange(session(v), ex(v, "MeterValues", {"connectorId": 1, "meterValue": [{
        "timestamp": "2030-01-01T11:00:00Z", "sampledValue": [
            {"value": "16.0", "measurand": "Current.Import", "phase": "L1"},
            {"value": "230.0", "measurand": "Voltage"},
            {"value": "3680", "measurand": "Power.Active.Import"},
            {"value": "40", "measurand": "Temperature", "location": "Body"},
            {"value": "25", "measurand": "Temperature"}]}]}))
    book.exchange(session(v), ex(v, "MeterValues", {"connectorId": 1, "meterValue": [{
        "timestamp": "2030-01-01T11:01:00Z", "sampledValue": [{"value": "41", "measurand": "Temperature",
                                                               "location": "Body"}]}]}))
    entry = book.get("C")
    assert entry is not None
    view = entry.view()
    assert [(r["measurand"], r["phase"], r["location"], r["value"], r["unit"], r["ts"]) for r in view["readings"]] == [
        ("Current.Import", "L1", "Outlet", 16.0, "A", "2030-01-01T11:00:00.000Z"),
        ("Power.Active.Import", None, "Outlet", 3680.0, "W", "2030-01-01T11:00:00.000Z"),
        ("Temperature", None, "Body", 41.0, "Celsius", "2030-01-01T11:01:00.000Z"),  # the latest of its identity
        ("Temperature", None, "Outlet", 25.0, "Celsius", "2030-01-01T11:00:00.000Z"),
        ("Voltage", None, "Outlet", 230.0, "V", "2030-01-01T11:00:00.000Z")]
    assert {(e["name"], e["value"]) for e in view["environment"]} == {("temperature_evse1", 41.0),
                                                                      ("temperature_outlet_evse1", 25.0)}
    assert view["connectors"][0]["power_w"] == 3680.0
    book.session_event(session(v), "disconnected")  # gone: no power, no current
    view = entry.view()
    assert view["connectors"][0]["power_w"] is None
    assert [r["measurand"] for r in view["readings"]] == ["Temperature", "Temperature", "Voltage"]
