"""The pure part: OCPP payloads of each version in (fixtures, schema-valid), normalised records out;
unit rules; the vendor DataTransfer decoder; the observer's hand-off; topic-safe ids; line protocol."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.influx import encode as influx_lines, line
from adapters.mqtt import topic_level
from gateway.ports import Exchange
from gateway.protocol.frames import OcppVersion
from gateway.protocol.schemas import SchemaRegistry
from gateway.telemetry import units
from gateway.telemetry.normalise import Normaliser
from gateway.telemetry.observer import TelemetryObserver
from gateway.telemetry.records import (
    ChargerInfo, ChargerState, ConnectorStatus, EnvironmentReading, MeterReading, MeterSample, TransactionEvent,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
SCHEMAS = SchemaRegistry([OcppVersion.V16, OcppVersion.V201, OcppVersion.V21])


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run(fixture: str, version: OcppVersion) -> list[Any]:
    exchanges = json.loads((FIXTURES / fixture).read_text())
    norm = Normaliser()
    out: list[Any] = []
    for ex in exchanges:
        problem = SCHEMAS.validate(version, ex["action"], ex["request"])
        assert problem is None, f"fixture {ex['action']} is not schema-valid: {problem}"
        out += norm.records("CP1", version.value, ex["action"], ex["request"], ex["response"], NOW)
    return out


def of(records: list[Any], kind: type) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


def test_ocpp16_session() -> None:
    records = run("ocpp16_session.json", OcppVersion.V16)
    assert of(records, ChargerInfo) == [ChargerInfo(charger_id="CP1", vendor="ACME", model="Wall-1",
                                                    firmware="1.2.3", serial="SN-1", ts=NOW)]
    assert of(records, ConnectorStatus) == [ConnectorStatus(
        charger_id="CP1", evse=2, connector=2, status="Faulted", error_code="HighTemperature",
        ts=t("2025-03-01T10:00:00Z"), info="too hot")]
    meters = of(records, MeterReading)
    first = meters[0]
    assert (first.evse, first.connector, first.transaction_id, first.ts) == (2, 2, "42", t("2025-03-01T10:01:00Z"))
    assert first.samples == (
        MeterSample("Energy.Active.Import.Register", 12500.0, "Wh", None, "Outlet", "Sample.Periodic"),
        MeterSample("Energy.Active.Import.Register", 11000.0, "Wh", None, "Outlet", "Sample.Periodic"),  # bare value
        MeterSample("Power.Active.Import", 3600.0, "W", None, "Outlet", "Sample.Periodic"),
        MeterSample("Voltage", 230.1, "V", "L1-N", "Outlet", "Sample.Periodic"),
        MeterSample("Frequency", 50.0, "Hz", None, "Outlet", "Sample.Periodic"),  # 1.6 has no Hz unit
        MeterSample("Temperature", 40.0, "Celsius", None, "Body", "Sample.Periodic"),  # 104 °F
        MeterSample("Temperature", 21.5, "Celsius", None, "Cable", "Sample.Periodic"),  # the 'Celcius' typo
    )  # SignedData and a non-number are left out
    assert meters[1].evse == 0 and meters[1].samples[0].value == 27.0  # 300.15 K
    end = meters[2]
    assert end.source == "StopTransaction" and end.evse == 2 and end.samples[0].context == "Transaction.End"
    env = {(e.name, e.value, e.unit, e.source, e.ts) for e in of(records, EnvironmentReading)}
    assert env == {
        ("temperature_evse2", 40.0, "Celsius", "MeterValues", t("2025-03-01T10:01:00Z")),
        ("temperature_cable_evse2", 21.5, "Celsius", "MeterValues", t("2025-03-01T10:01:00Z")),
        ("temperature_outlet", 27.0, "Celsius", "MeterValues", t("2025-03-01T10:01:00Z")),  # no location: Outlet
        ("temperature", 20.0, "Celsius", "DataTransfer/gateway.environment", t("2025-03-01T10:30:00Z")),
        ("humidity", 41.5, "RH", "DataTransfer/gateway.environment", t("2025-03-01T10:30:00Z")),
    }
    started, ended = of(records, TransactionEvent)
    assert started == TransactionEvent(charger_id="CP1", event="started", transaction_id="42", evse=2, connector=2,
                                       ts=t("2025-03-01T10:00:05Z"), meter_start=12000.0)
    assert ended == TransactionEvent(charger_id="CP1", event="ended", transaction_id="42", evse=2, connector=2,
                                     ts=t("2025-03-01T11:00:00Z"), meter_start=12000.0, meter_stop=15500.0,
                                     energy_wh=3500.0, reason="Local")


def test_ocpp201_session() -> None:
    records = run("ocpp201_session.json", OcppVersion.V201)
    assert of(records, ChargerInfo)[0].vendor == "Volt"
    assert of(records, ConnectorStatus) == [ConnectorStatus(charger_id="CP1", evse=1, connector=1, status="Occupied",
                                                            error_code=None, ts=t("2025-03-01T10:00:00Z"))]
    env = [(e.name, e.value, e.unit, e.source, e.ts) for e in of(records, EnvironmentReading)]
    assert env == [
        ("temperature", 25.0, "Celsius", "NotifyReport", t("2025-03-01T10:00:10Z")),  # 77 °F, unit from the report
        ("humidity", 40.5, "RH", "NotifyReport", t("2025-03-01T10:00:10Z")),
        ("temperature", 30.0, "Celsius", "NotifyEvent", t("2025-03-01T10:04:59Z")),  # 86 °F: unit learned above
        ("ambient_temperature", 12.5, "Celsius", "NotifyEvent", t("2025-03-01T10:04:59Z")),  # Celsius by default
        ("ac_dc_converter_temperature_heatsink_evse1", 61.0, "Celsius", "NotifyEvent", t("2025-03-01T10:04:59Z")),
        ("temperature_upper_threshold", 60.0, "Celsius", "NotifyMonitoringReport", t("2025-03-01T10:40:00Z")),
    ]
    started, updated, ended = of(records, TransactionEvent)
    assert (started.event, started.transaction_id, started.evse, started.connector, started.meter_start) == (
        "started", "TX-9", 1, 1, 5000.0)
    assert (updated.event, updated.evse, updated.seq_no, updated.reason) == ("updated", 1, 1, "MeterValuePeriodic")
    assert ended == TransactionEvent(charger_id="CP1", event="ended", transaction_id="TX-9", evse=1, connector=1,
                                     ts=t("2025-03-01T10:30:00Z"), meter_start=5000.0, meter_stop=25000.0,
                                     energy_wh=20000.0, reason="EVDisconnected", offline=True, seq_no=2)
    meters = of(records, MeterReading)
    power = meters[1].samples
    assert power[0] == MeterSample("Power.Active.Import", 50000.0, "W", None, "Outlet", "Sample.Periodic")  # multiplier 3
    assert power[1] == MeterSample("SoC", 80.0, "Percent", None, "EV", "Sample.Periodic")
    assert meters[1].transaction_id == "TX-9" and meters[1].evse == 1
    main = meters[-1]
    assert (main.evse, main.source, main.samples[0].phase) == (0, "MeterValues", "L1-L2")


def test_ocpp21_periodic_event_stream_and_vendor_data() -> None:
    records = run("ocpp21_stream.json", OcppVersion.V21)
    env = [(e.name, e.value, e.unit, e.source, e.ts) for e in of(records, EnvironmentReading)]
    assert env == [
        ("humidity", 44.0, "RH", "NotifyPeriodicEventStream", t("2025-03-01T10:50:00Z")),
        ("humidity", 44.5, "RH", "NotifyPeriodicEventStream", t("2025-03-01T10:50:10Z")),
        ("humidity", 45.0, "RH", "NotifyPeriodicEventStream", t("2025-03-01T10:50:20.5Z")),
        ("temperature", 20.0, "Celsius", "DataTransfer/gateway.environment", NOW),  # 293.15 K, receipt time
    ]  # stream 99 was never opened: ignored


def test_get_variables_answer_is_environment_data() -> None:
    norm = Normaliser()
    response = {"getVariableResult": [
        {"attributeStatus": "Accepted", "component": {"name": "HumiditySensor"}, "variable": {"name": "Humidity"},
         "attributeValue": "55"},
        {"attributeStatus": "UnknownComponent", "component": {"name": "TemperatureSensor"},
         "variable": {"name": "Temperature"}}]}
    records = norm.records("CP1", "ocpp2.0.1", "GetVariables", {}, response, NOW, origin="gateway")
    assert [(r.name, r.value, r.unit) for r in records] == [("humidity", 55.0, "RH")]


@pytest.mark.parametrize("value,unit,expected", [
    (25.0, "Celsius", 25.0), (25.0, "Celcius", 25.0), (77.0, "Fahrenheit", 25.0), (-40.0, "Fahrenheit", -40.0),
    (298.15, "K", 25.0), (0.0, "K", -273.15), (21.0, None, 21.0),
])
def test_temperatures_to_celsius(value: float, unit: str | None, expected: float) -> None:
    assert units.to_celsius(value, unit) == expected


def test_canonical_units() -> None:
    assert units.canonical(1.5, "kWh") == (1500.0, "Wh")
    assert units.canonical(2.0, "kW") == (2000.0, "W")
    assert units.canonical(7.0, "kvarh") == (7000.0, "varh")
    assert units.canonical(3.0, "W", multiplier=3) == (3000.0, "W")
    assert units.canonical(50.0, None, measurand="Frequency") == (50.0, "Hz")
    assert units.canonical(50.0, "Hertz", measurand="Frequency") == (50.0, "Hz")
    assert units.canonical(10.0, None) == (10.0, "Wh")
    assert units.canonical(40.0, "Percent", measurand="Humidity") == (40.0, "RH")
    with pytest.raises(ValueError):
        units.canonical(float("nan"), "W")


def test_unknown_vendor_and_bad_vendor_data_give_nothing() -> None:
    norm = Normaliser()
    bad = {"vendorId": "gateway.environment", "messageId": "Environment", "data": "{not json"}
    assert norm.records("CP1", "ocpp1.6", "DataTransfer", bad, {}, NOW) == []
    assert norm.records("CP1", "ocpp1.6", "DataTransfer", {"vendorId": "x"}, {}, NOW) == []


class _Sink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def offer(self, record: Any) -> None:
        self.records.append(record)


class _Broken:
    def offer(self, record: Any) -> None:
        raise RuntimeError("boom")


def test_observer_hands_records_to_every_sink_and_never_raises() -> None:
    good = _Sink()
    obs = TelemetryObserver([_Broken(), good])
    session = SimpleNamespace(charger_id="CP1", connected=True, version=OcppVersion.V16,
                              upstream_state=SimpleNamespace(value="standalone"))
    ex = Exchange(charger_id="CP1", version=OcppVersion.V16, origin="charger", action="StatusNotification",
                  message_id="1", request={"connectorId": 1, "status": "Available", "errorCode": "NoError"},
                  response={}, received_at=NOW)
    obs.exchange(session, ex)
    obs.session_event(session, "connected")
    # an errored exchange (the charger will retry) and a payload the normaliser chokes on: no records, no raise
    obs.exchange(session, Exchange(charger_id="CP1", version=OcppVersion.V16, origin="charger", action="MeterValues",
                                   message_id="2", request={}, response=None, error="InternalError", received_at=NOW))
    obs.exchange(session, Exchange(charger_id="CP1", version=OcppVersion.V16, origin="charger", action="MeterValues",
                                   message_id="3", request={"meterValue": "garbage"}, response={}, received_at=NOW))
    assert [type(r) for r in good.records] == [ConnectorStatus, ChargerState]
    assert good.records[0].ts == NOW  # no timestamp from the charger: receipt time
    assert obs.failures >= 2


class _BatchSink(_Sink):
    def __init__(self) -> None:
        super().__init__()
        self.handoffs: list[int] = []

    def offer_all(self, records: Any) -> None:
        self.handoffs.append(len(records))
        self.records += records


def _status(n: int, status: str = "Available") -> Exchange:
    return Exchange(charger_id="CP1", version=OcppVersion.V16, origin="charger", action="StatusNotification",
                    message_id=str(n), request={"connectorId": n, "status": status, "errorCode": "NoError"},
                    response={}, received_at=NOW)


async def test_gathering_observer_hands_off_once_per_interval_in_arrival_order() -> None:
    """With `gather`, exchanges are only kept on the relay's path; after the interval they are
    normalised and handed to each sink in one go, session events in their place among them, and a
    forgotten charger's normaliser state is dropped at its place in the order (not before)."""
    import asyncio

    sink, plain = _BatchSink(), _Sink()
    obs = TelemetryObserver([sink, plain], gather=0.05)
    session = SimpleNamespace(charger_id="CP1", connected=True, version=OcppVersion.V16,
                              upstream_state=SimpleNamespace(value="online"))
    obs.exchange(session, _status(1))
    obs.session_event(session, "connected")
    obs.exchange(session, _status(2, "Charging"))
    obs.session_event(session, "forgotten")
    assert sink.records == [] and plain.records == []  # nothing on the relay's path yet
    await asyncio.sleep(0.2)
    assert sink.handoffs == [4]  # one hand-off for the interval
    kinds = [type(r).__name__ for r in sink.records]
    assert kinds == ["ConnectorStatus", "ChargerState", "ConnectorStatus", "ChargerForgotten"]
    assert [r.connector for r in sink.records if isinstance(r, ConnectorStatus)] == [1, 2]
    assert [type(r) for r in plain.records] == [type(r) for r in sink.records]  # a sink without offer_all too
    # past GATHER_MAX kept exchanges it hands off at once, without waiting for the timer
    from gateway.telemetry import observer as observer_module

    for n in range(observer_module.GATHER_MAX):
        obs.exchange(session, _status(n % 9 + 1))
    assert sink.handoffs == [4, observer_module.GATHER_MAX]
    obs.exchange(session, _status(1))
    obs.flush()  # the gateway's way down: what is kept goes now
    assert sink.handoffs[-1] == 1 and obs._timer is None


@pytest.mark.parametrize("charger_id,level", [
    ("CP001", "CP001"), ("a/b", "a%2Fb"), ("a+b", "a%2Bb"), ("#", "%23"), ("x/+/#", "x%2F%2B%2F%23"),
    ("$SYS", "%24SYS"), ("sp ace~", "sp%20ace%7E"), ("ü", "%C3%BC"), ("a.b_c-d", "a.b_c-d"),
])
def test_charger_ids_cannot_leave_their_topic_level(charger_id: str, level: str) -> None:
    encoded = topic_level(charger_id)
    assert encoded == level
    assert not set(encoded) & {"/", "+", "#", "$"}


def test_line_protocol_escapes_and_types() -> None:
    text = line("meter_value", {"charger": "a b,c=d", "empty": "", "none": None}, {"value": 1.0}, NOW)
    assert text == "meter_value,charger=a\\ b\\,c\\=d value=1.0 1740830400000000000"
    reading = MeterReading(charger_id="CP1", evse=1, connector=1, ts=NOW, transaction_id=None, source="MeterValues",
                           samples=(MeterSample("Energy.Active.Import.Register", 100.0, "Wh"),))
    assert influx_lines(reading, "s") == [
        "meter_value,charger=CP1,connector=1,evse=1,measurand=Energy.Active.Import.Register,site=s,unit=Wh "
        "value=100.0 1740830400000000000"]
    tx = TransactionEvent(charger_id="CP1", event="ended", transaction_id="7", evse=1, connector=1, ts=NOW,
                          meter_start=0.0, meter_stop=10.0, energy_wh=10.0)
    assert influx_lines(tx, "s") == [
        'transaction,charger=CP1,event=ended,evse=1,site=s transaction_id="7",energy_wh=10.0,meter_start=0.0,'
        'meter_stop=10.0,offline=false 1740830400000000000']


def test_16_meter_values_build_the_same_records_as_their_keywords_say() -> None:
    """The 1.6 hot path builds its named tuples positionally (tuple.__new__) and plans each sample
    shape once (a short key for value/measurand/unit samples): the records must be what keyword
    construction gives, field by field, for every kind of shape and every temperature unit."""
    n = Normaliser()
    samples = [
        {"value": "1.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},  # short shape
        {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},  # long shape
        {"value": "2", "unit": "kW", "measurand": "Power.Active.Import", "context": "Sample.Clock"},
        {"value": "104", "measurand": "Temperature", "unit": "Fahrenheit"},
        {"value": "300.15", "measurand": "Temperature", "unit": "K", "location": "Outlet"},
        {"value": "21.1234567", "measurand": "Temperature", "unit": "Celcius", "location": "Body"},
        {"value": "30", "measurand": "Temperature"},  # no unit: Celsius
        {"value": "12", "measurand": "Temperature", "unit": "Wh"},  # not a temperature unit: left out
        {"value": "abc", "measurand": "Voltage", "unit": "V"},  # not a number: left out
        {"measurand": "Voltage", "unit": "V"},  # no value: left out
        {"value": "7", "measurand": "Voltage", "unit": "V", "format": "SignedData"},  # signed: left out
    ]
    for _ in range(2):  # the second time through, every shape comes from the plans
        got = n.records("CP1", "ocpp1.6", "MeterValues",
                        {"connectorId": 2, "transactionId": 5,
                         "meterValue": [{"timestamp": "2025-03-01T10:00:00Z", "sampledValue": samples}]},
                        {}, NOW)
        ts = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
        env = [EnvironmentReading(charger_id="CP1", name=name, value=value, unit="Celsius", ts=ts,
                                  source="MeterValues", evse=2)
               for name, value in (("temperature_outlet_evse2", 40.0), ("temperature_outlet_evse2", 27.0),
                                   ("temperature_evse2", 21.123457), ("temperature_outlet_evse2", 30.0))]
        meter = MeterReading(charger_id="CP1", evse=2, connector=2, ts=ts, transaction_id="5", source="MeterValues",
                             samples=(MeterSample("Energy.Active.Import.Register", 1500.0, "Wh", None, "Outlet",
                                                  "Sample.Periodic"),
                                      MeterSample("Voltage", 230.1, "V", "L1-N", "Outlet", "Sample.Periodic"),
                                      MeterSample("Power.Active.Import", 2000.0, "W", None, "Outlet", "Sample.Clock"),
                                      MeterSample("Temperature", 40.0, "Celsius", None, "Outlet", "Sample.Periodic"),
                                      MeterSample("Temperature", 27.0, "Celsius", None, "Outlet", "Sample.Periodic"),
                                      MeterSample("Temperature", 21.123457, "Celsius", None, "Body", "Sample.Periodic"),
                                      MeterSample("Temperature", 30.0, "Celsius", None, "Outlet", "Sample.Periodic")))
        assert [r._asdict() for r in got] == [r._asdict() for r in (*env, meter)]
        assert [type(r) for r in got] == [EnvironmentReading] * 4 + [MeterReading]


@pytest.mark.parametrize("text, expected", [
    ("2025-03-01T10:00:00Z", datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)),
    ("2025-03-01T10:00:00.123z", datetime(2025, 3, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)),
    ("2025-03-01T11:00:00+01:00", datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)),
    ("2025-03-01T10:00:00.123456789Z", datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2025-03-01T10:00:00", datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)),  # no zone: UTC
    ("yesterday", NOW), ("", NOW), (None, NOW), (17, NOW), ("2025-13-01T10:00:00Z", NOW),
    # schema-valid, but before year 1 or after 9999 in UTC: clamped to the bounds, never an exception
    ("0001-01-01T00:30:00+01:00", datetime.min.replace(tzinfo=timezone.utc)),
    ("9999-12-31T23:30:00-01:00", datetime.max.replace(tzinfo=timezone.utc)),
])
def test_charger_timestamps_are_read_as_utc_or_fall_back_to_receipt(text: Any, expected: datetime) -> None:
    from gateway.telemetry.vendors import parse_time

    got = parse_time(text, NOW)
    assert got == expected and got.tzinfo is timezone.utc


@pytest.mark.parametrize("stamp,year", [("0001-01-01T00:30:00+01:00", 1), ("9999-12-31T23:30:00-01:00", 9999)])
def test_a_stop_at_an_unrepresentable_time_is_recorded_clamped_and_flagged(stamp: str, year: int) -> None:
    n = Normaliser()
    request = {"transactionId": 7, "meterStop": 1500, "timestamp": stamp, "reason": "Local",
               "transactionData": [{"timestamp": stamp, "sampledValue": [{"value": "1500"}]}]}
    assert SCHEMAS.validate(OcppVersion.V16, "StopTransaction", request) is None
    meter, ended = n.records("CP1", "ocpp1.6", "StopTransaction", request, {}, NOW)
    assert isinstance(ended, TransactionEvent) and isinstance(meter, MeterReading)
    assert ended.event == "ended" and ended.ts.year == year and ended.ts_clamped and meter.ts == ended.ts
    lines = influx_lines(ended, "s") + influx_lines(meter, "s")
    # InfluxDB's own range is narrower (1677-2262): the point goes at its bound instead of failing the batch
    assert "ts_clamped=true" in lines[0]
    assert {int(x.rsplit(" ", 1)[1]) for x in lines} == {-9_223_372_036_854_775_806 if year == 1
                                                         else 9_223_372_036_854_775_806}
    request2 = {"timestamp": stamp, "triggerReason": "EVDeparted", "seqNo": 3, "eventType": "Ended",
                "transactionInfo": {"transactionId": "T"}}
    (ev,) = n.records("CP1", "ocpp2.0.1", "TransactionEvent", request2, {}, NOW)
    assert isinstance(ev, TransactionEvent) and ev.ts.year == year and ev.ts_clamped
    (ok,) = n.records("CP1", "ocpp2.0.1", "TransactionEvent", {**request2, "timestamp": "2025-01-01T00:00:00Z"},
                      {}, NOW)
    assert isinstance(ok, TransactionEvent) and not ok.ts_clamped
