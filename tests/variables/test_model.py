"""The pure part of the variables mirror (gateway/variables): names, reading 1.6 and 2.x messages,
secrets, report assembly (parts out of order, cut short, memory bound), what local control and
`[environment].ensure` read from it. No sockets, no event loop."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.variables import meaning as M
from gateway.variables.model import (
    SetPolicy, Variable, address_of, from_change_configuration, from_get_configuration, from_monitoring_report,
    from_notify_event, from_report_data, from_set_variables, name_2x, parse_name_2x, set_variables_request,
    set_variables_statuses,
)
from gateway.variables.report import ReportAssembly

ROOT = Path(__file__).resolve().parents[2]


def test_the_pure_package_does_no_io() -> None:
    from tests.protocol.test_purity import IO_MODULES

    for path in sorted((ROOT / "gateway" / "variables").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & (IO_MODULES | {"adapters", "logging", "datetime"}), (path, names & IO_MODULES)


def test_names_round_trip() -> None:
    name = name_2x("EVSE", "Power", evse=1, attribute="MaxSet")
    assert name == "EVSE@1/Power#MaxSet"
    assert name_2x("Connector", "ConnectorType", evse=1, connector=2) == "Connector@1.2/ConnectorType"
    assert name_2x("TemperatureSensor", "Temperature", component_instance="Body", attribute="Actual") == \
        "TemperatureSensor[Body]/Temperature"
    a = parse_name_2x("Connector[x]@1.2/ConnectorType[y]#Target")
    assert a is not None
    assert a.component == {"name": "Connector", "instance": "x", "evse": {"id": 1, "connectorId": 2}}
    assert a.variable == {"name": "ConnectorType", "instance": "y"} and a.attribute == "Target"
    assert parse_name_2x("HeartbeatInterval") is None  # a 1.6 key is not a device-model name


def test_get_configuration_with_unknown_keys_and_secrets() -> None:
    got = from_get_configuration({
        "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                             {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
                             {"key": "AuthorizationKey", "readonly": False, "value": "00112233445566778899"},
                             {"key": "VendorWifiPassword", "readonly": False, "value": "hunter2hunter2"}],
        "unknownKey": ["NoSuchKey"]})
    by = {v.name: v for v in got}
    assert by["HeartbeatInterval"].value == "300" and by["HeartbeatInterval"].mutability == "ReadWrite"
    assert by["NumberOfConnectors"].mutability == "ReadOnly" and not by["NumberOfConnectors"].writable
    assert by["AuthorizationKey"].secret and by["AuthorizationKey"].value is None
    assert by["VendorWifiPassword"].secret and by["VendorWifiPassword"].value is None
    assert by["NoSuchKey"].known is False
    assert from_get_configuration({"configurationKey": [{"key": "X", "value": "v"}]}, extra_secrets=("x",))[0].secret


REPORT = [
    {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"},
     "variableAttribute": [{"type": "Actual", "value": "W", "mutability": "ReadOnly"}],
     "variableCharacteristics": {"dataType": "MemberList", "valuesList": "W", "supportsMonitoring": False}},
    {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"},
     "variableAttribute": [{"type": "Actual", "value": "0"}, {"type": "MaxSet", "value": "22000"}],
     "variableCharacteristics": {"unit": "W", "dataType": "decimal", "maxLimit": 22000, "supportsMonitoring": True}},
    {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"},
     "variableAttribute": [{"value": "a-password-of-20chars", "mutability": "WriteOnly"}],
     "variableCharacteristics": {"dataType": "string", "supportsMonitoring": False}},
    {"component": {"name": "TemperatureSensor", "instance": "Body"}, "variable": {"name": "Temperature"},
     "variableAttribute": [{"value": "31.5", "mutability": "ReadOnly"}],
     "variableCharacteristics": {"unit": "Celsius", "dataType": "decimal", "supportsMonitoring": True}},
]


def test_report_data_one_variable_per_attribute() -> None:
    got = {v.name: v for v in from_report_data(REPORT)}
    assert set(got) == {"SmartChargingCtrlr/RateUnit", "EVSE@1/Power", "EVSE@1/Power#MaxSet",
                        "SecurityCtrlr/BasicAuthPassword", "TemperatureSensor[Body]/Temperature"}
    assert got["EVSE@1/Power#MaxSet"].value == "22000" and got["EVSE@1/Power#MaxSet"].characteristics == {
        "unit": "W", "data_type": "decimal", "max_limit": 22000, "supports_monitoring": True}
    assert got["EVSE@1/Power"].mutability == "ReadWrite"  # the default
    assert got["SecurityCtrlr/BasicAuthPassword"].secret and got["SecurityCtrlr/BasicAuthPassword"].value is None
    assert address_of(got["EVSE@1/Power#MaxSet"]).component == {"name": "EVSE", "evse": {"id": 1}}


def test_traffic_updates() -> None:
    ev = from_notify_event({"eventData": [{"eventId": 1, "timestamp": "t", "trigger": "Periodic", "actualValue": "40.1",
                                           "component": {"name": "TemperatureSensor", "instance": "Body"},
                                           "variable": {"name": "Temperature"}, "eventNotificationType": "CustomMonitor"}]})
    assert [(v.name, v.value) for v in ev] == [("TemperatureSensor[Body]/Temperature", "40.1")]
    mon = from_monitoring_report({"monitor": [{"component": {"name": "TemperatureSensor"}, "variable": {"name": "Temperature"},
                                               "variableMonitoring": [{"id": 7, "transaction": False, "value": 60,
                                                                       "type": "Periodic", "severity": 8}]}]})
    assert mon[0].monitors == [{"id": 7, "type": "Periodic", "value": 60, "severity": 8, "transaction": False}]
    assert from_change_configuration({"key": "HeartbeatInterval", "value": "60"}, {"status": "Rejected"}) == []
    unknown = from_change_configuration({"key": "NoSuchKey", "value": "1"}, {"status": "NotSupported"})
    assert [(v.name, v.known, v.value) for v in unknown] == [("NoSuchKey", False, None)]
    cc = from_change_configuration({"key": "HeartbeatInterval", "value": "60"}, {"status": "RebootRequired"})
    assert [(v.name, v.value) for v in cc] == [("HeartbeatInterval", "60")]
    secret = from_change_configuration({"key": "AuthorizationKey", "value": "0011"}, {"status": "Accepted"})
    assert secret[0].secret and secret[0].value is None
    req = {"setVariableData": [
        {"attributeValue": "30", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"attributeValue": "x", "component": {"name": "Foo"}, "variable": {"name": "Bar"}}]}
    resp = {"setVariableResult": [
        {"attributeStatus": "Accepted", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"attributeStatus": "UnknownComponent", "component": {"name": "Foo"}, "variable": {"name": "Bar"}}]}
    assert [(v.name, v.value) for v in from_set_variables(req, resp)] == [("OCPPCommCtrlr/HeartbeatInterval", "30")]


def test_get_variables_answers() -> None:
    from gateway.variables.model import from_get_variables

    got = from_get_variables({"getVariableResult": [
        {"attributeStatus": "Accepted", "attributeValue": "60", "component": {"name": "OCPPCommCtrlr"},
         "variable": {"name": "HeartbeatInterval"}},
        {"attributeStatus": "UnknownVariable", "component": {"name": "X"}, "variable": {"name": "Y"}},
        {"attributeStatus": "Accepted", "attributeValue": "pw-in-clear-1234", "component": {"name": "SecurityCtrlr"},
         "variable": {"name": "BasicAuthPassword"}}]})
    assert [(v.name, v.value, v.secret) for v in got] == [("OCPPCommCtrlr/HeartbeatInterval", "60", False),
                                                          ("SecurityCtrlr/BasicAuthPassword", None, True)]


def test_set_request_and_statuses() -> None:
    a = parse_name_2x("EVSE@1/Power#MaxSet")
    b = parse_name_2x("OCPPCommCtrlr/HeartbeatInterval")
    assert a is not None and b is not None
    req = set_variables_request([(a, "11000"), (b, "60")])
    assert req["setVariableData"][0] == {"attributeType": "MaxSet", "attributeValue": "11000",
                                         "component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"}}
    statuses = set_variables_statuses([("EVSE@1/Power#MaxSet", a), ("OCPPCommCtrlr/HeartbeatInterval", b)], {
        "setVariableResult": [
            {"attributeType": "MaxSet", "attributeStatus": "Rejected", "component": {"name": "EVSE", "evse": {"id": 1}},
             "variable": {"name": "Power"}, "attributeStatusInfo": {"reasonCode": "OutOfRange"}},
            {"attributeStatus": "RebootRequired", "component": {"name": "OCPPCommCtrlr"},
             "variable": {"name": "HeartbeatInterval"}}]})
    assert statuses == {"EVSE@1/Power#MaxSet": ("Rejected", "OutOfRange"),
                        "OCPPCommCtrlr/HeartbeatInterval": ("RebootRequired", None)}


def test_set_policy() -> None:
    policy = SetPolicy(("Heartbeat*", "OCPPCommCtrlr/*"))
    ro = Variable(name="HeartbeatInterval", variable="HeartbeatInterval", mutability="ReadOnly")
    assert policy.refusal("HeartbeatInterval", None) is None
    assert "read-only" in (policy.refusal("HeartbeatInterval", ro) or "")
    assert "set_allowed" in (policy.refusal("MeterValueSampleInterval", None) or "")
    assert "allow_credentials" in (policy.refusal("AuthorizationKey", None) or "")
    assert "allow_credentials" in (policy.refusal("SecurityCtrlr/BasicAuthPassword", None) or "")
    assert SetPolicy(("*",), allow_credentials=True).refusal("AuthorizationKey", None) is None


def test_report_parts_out_of_order_duplicates_and_completion() -> None:
    r = ReportAssembly(request_id=1, started=0.0, idle=10.0, max_variables=1000)
    assert r.part(2, False, 10, 1.0) == 10  # the last part first
    assert not r.complete and r.missing() == [0, 1]
    assert r.part(0, True, 10, 2.0) == 10
    assert r.part(0, True, 10, 2.5) == 0 and r.duplicates == 1  # sent twice: taken once
    assert r.part(1, True, 10, 3.0) == 10
    assert r.complete and r.status() == {"state": "complete", "parts": 3, "variables": 30, "duplicate_parts": 1}


def test_report_cut_short_and_memory_bound() -> None:
    r = ReportAssembly(request_id=1, started=0.0, idle=5.0, max_variables=25)
    r.part(0, True, 10, 1.0)
    r.part(1, True, 10, 2.0)
    assert r.part(3, True, 10, 3.0) == 5  # only 5 fit below the bound
    assert not r.cut_short(7.9) and r.cut_short(8.0) and r.deadline() == 8.0
    status = r.status()
    assert status["state"] == "partial" and status["missing_parts"] == [2] and status["last_part_seen"] is False
    assert status["dropped"] == 5 and status["variables"] == 25
    # a charger sending endless empty parts: what is tracked stays bounded
    tiny = ReportAssembly(request_id=2, started=0.0, idle=5.0, max_variables=10)
    for seq in range(10_000):
        tiny.part(seq, True, 0, 1.0)
    assert len(tiny.seen) == 10 + 50 and tiny.missing() == []


def _by_name(vs: list[Variable]) -> dict[str, Variable]:
    return {v.name: v for v in vs}


def test_capabilities_and_choices() -> None:
    caps = M.capabilities("ocpp2.0.1", _by_name(from_report_data(REPORT + [
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "ProfileStackLevel"},
         "variableAttribute": [{"value": "3", "mutability": "ReadOnly"}]},
        {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "SupplyPhases"},
         "variableAttribute": [{"value": "1", "mutability": "ReadOnly"}]},
        {"component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}}, "variable": {"name": "ConnectorType"},
         "variableAttribute": [{"value": "cType2", "mutability": "ReadOnly"}]}])))
    assert caps.rate_units == ("W",) and caps.max_stack_level == 3 and caps.phases == 1
    assert caps.connector_types == {"1.1": "cType2"}
    caps16 = M.capabilities("ocpp1.6", _by_name(from_get_configuration({"configurationKey": [
        {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current,Power"},
        {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "10"}]})))
    assert caps16.rate_units == ("A", "W") and caps16.max_stack_level == 10
    assert M.choose_rate_unit(("W",), None) == ("W", None)
    assert M.choose_rate_unit(("A", "W"), None) == ("A", None)
    assert M.choose_rate_unit((), None) == ("A", None)
    unit, problem = M.choose_rate_unit(("W",), "A")
    assert unit == "A" and problem is not None and "W only" in problem
    assert M.choose_stack_level(8, 3)[0] == 3 and M.choose_stack_level(8, 10) == (8, None)


def test_environment_plans() -> None:
    v16 = _by_name(from_get_configuration({"configurationKey": [
        {"key": "MeterValuesSampledData", "readonly": False, "value": "Energy.Active.Import.Register"},
        {"key": "MeterValuesAlignedData", "readonly": False, "value": "Energy.Active.Import.Register,Temperature"},
        {"key": "VendorHumidityReporting", "readonly": False, "value": "false"}]}))
    assert M.environment_changes_16(v16) == [
        M.ConfigChange("MeterValuesSampledData", "Energy.Active.Import.Register,Temperature", "temperature"),
        M.ConfigChange("VendorHumidityReporting", "true", "humidity")]
    full = _by_name(from_get_configuration({"configurationKey": [
        {"key": "MeterValuesSampledData", "readonly": False, "value": "A,B"},
        {"key": "MeterValuesSampledDataMaxLength", "readonly": True, "value": "2"}]}))
    assert M.environment_changes_16(full) == []  # no room for one more measurand
    v2 = _by_name(from_report_data(REPORT))
    wanted = M.environment_monitors_2x(v2, periodic=60, delta_temperature=1.0, delta_humidity=5.0)
    assert [(m.name, m.type, m.value) for m in wanted] == [("TemperatureSensor[Body]/Temperature", "Periodic", 60),
                                                           ("TemperatureSensor[Body]/Temperature", "Delta", 1.0)]
    v2["TemperatureSensor[Body]/Temperature"].monitors = [{"type": "Periodic"}]
    assert [m.type for m in M.environment_monitors_2x(v2, periodic=60, delta_temperature=1.0, delta_humidity=5.0)] == ["Delta"]
    assert M.monitoring_request(wanted[:1]) == {"setMonitoringData": [{
        "value": 60, "type": "Periodic", "severity": 8,
        "component": {"name": "TemperatureSensor", "instance": "Body"}, "variable": {"name": "Temperature"}}]}


def test_home_assistant_entities_follow_mutability_and_type() -> None:
    from gateway.variables.model import ha_entity

    def var(value: str | None, mutability: str = "ReadWrite", **chars: object) -> Variable:
        return Variable(name="C/V", variable="V", component="C", value=value, mutability=mutability,
                        characteristics=dict(chars) or None)

    assert ha_entity(var("300", data_type="integer", min_limit=1, max_limit=3600, unit="s"), shown=True,
                     settable=True) == {"kind": "number", "step": 1, "min": 1, "max": 3600, "unit": "s"}
    assert ha_entity(var("true", data_type="boolean"), shown=True, settable=True) == {
        "kind": "select", "options": ["true", "false"]}
    assert ha_entity(var("Fast", data_type="OptionList", values_list="Slow,Fast"), shown=True, settable=True) == {
        "kind": "select", "options": ["Slow", "Fast"]}
    assert ha_entity(var("hello", data_type="string"), shown=True, settable=True) == {"kind": "text"}
    assert ha_entity(var("24.5", "ReadOnly", unit="Celsius"), shown=True, settable=True) == {
        "kind": "sensor", "unit": "Celsius"}
    assert ha_entity(var("300", data_type="integer"), shown=True, settable=False) == {"kind": "sensor"}
    assert ha_entity(var("300"), shown=False, settable=True) is None
    secret = Variable(name="SecurityCtrlr/BasicAuthPassword", variable="BasicAuthPassword", secret=True)
    assert ha_entity(secret, shown=True, settable=True) is None
