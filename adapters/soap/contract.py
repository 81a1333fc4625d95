"""The project's own description of the OCPP-S contract, generated at run time.

The official OCPP-S WSDLs may not be shipped with the project (see docs/chargers.md, "SOAP chargers"). This
module derives an equivalent contract instead:

- the message structure (field names, required/optional, lists, nesting, enumerations, string
  lengths, integer/decimal/boolean/date-time types) comes from the OCPP 1.6 JSON schemas that the
  `ocpp` package ships, read when the contract is first needed;
- the facts where OCPP-S differs from those schemas are written below as small tables: the order of
  the elements inside a few XSD sequences (the JSON schemas list those properties in another order),
  and the OCPP 1.5 differences (renamed and missing fields, the 1.5 MeterValue shape, enumerations).

From that tree it writes a WSDL 1.1 document with an embedded XSD (document/literal, SOAP 1.2,
`wsaw:Action` on every operation, the `chargeBoxIdentity` header), which zeep loads from memory.
The same tree drives the conversion between zeep's objects and OCPP-J JSON payloads (`codec.py`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable
from xml.sax.saxutils import quoteattr

import ocpp

SCHEMA_DIR = Path(ocpp.__file__).resolve().parent / "v16" / "schemas"

CS, CP = "cs", "cp"
V15, V16 = "1.5", "1.6"

NAMESPACES = {
    (CS, V15): "urn://Ocpp/Cs/2012/06/",
    (CP, V15): "urn://Ocpp/Cp/2012/06/",
    (CS, V16): "urn://Ocpp/Cs/2015/10/",
    (CP, V16): "urn://Ocpp/Cp/2015/10/",
}

# Operations of each service (OCPP-S 1.6 §8; the 1.5 Charge Point service lacks the four smart
# charging / trigger operations that 1.6 introduced).
CS_OPERATIONS = (
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification", "StopTransaction",
)
CP_OPERATIONS_16 = (
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
    "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
    "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware",
)
ONLY_16 = frozenset({"ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile", "TriggerMessage"})
CP_OPERATIONS_15 = tuple(op for op in CP_OPERATIONS_16 if op not in ONLY_16)

# Element order inside XSD sequences where OCPP-S orders fields differently from the JSON schemas'
# property order. Keys: a message name (its top-level fields) or a field name (that complex type,
# wherever it appears).
SOAP_ORDER: dict[str, tuple[str, ...]] = {
    "StartTransaction": ("connectorId", "idTag", "timestamp", "meterStart", "reservationId"),
    "StartTransactionResponse": ("transactionId", "idTagInfo"),
    "StatusNotification": ("connectorId", "status", "errorCode", "info", "timestamp", "vendorId", "vendorErrorCode"),
    "StopTransaction": ("transactionId", "idTag", "timestamp", "meterStop", "reason", "transactionData"),
    "GetDiagnostics": ("location", "startTime", "stopTime", "retries", "retryInterval"),
    "UpdateFirmware": ("retrieveDate", "location", "retries", "retryInterval"),
    "idTagInfo": ("status", "expiryDate", "parentIdTag"),
}

# Lists that the JSON schemas require but OCPP-S declares with minOccurs="0".
OPTIONAL_LISTS = frozenset({"meterValue"})

# OCPP 1.5 enumerations that differ from 1.6. Each 1.6 enumeration is recognised by a value that
# only it has; the list is the 1.5 value set.
ENUMS_15: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("EVCommunicationError", ("ConnectorLockFailure", "HighTemperature", "Mode3Error", "NoError", "PowerMeterFailure",
                              "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "GroundFailure",
                              "OverCurrentFailure", "UnderVoltage", "WeakSignal", "OtherError")),
    ("SuspendedEVSE", ("Available", "Occupied", "Faulted", "Unavailable", "Reserved")),
    ("Uploading", ("Uploaded", "UploadFailed")),
    ("Installing", ("Downloaded", "DownloadFailed", "InstallationFailed", "Installed")),
    ("Cable", ("Inlet", "Outlet", "Body")),
    ("SoC", ("Energy.Active.Export.Register", "Energy.Active.Import.Register", "Energy.Reactive.Export.Register",
             "Energy.Reactive.Import.Register", "Energy.Active.Export.Interval", "Energy.Active.Import.Interval",
             "Energy.Reactive.Export.Interval", "Energy.Reactive.Import.Interval", "Power.Active.Export",
             "Power.Active.Import", "Power.Reactive.Export", "Power.Reactive.Import", "Current.Export",
             "Current.Import", "Voltage", "Temperature")),
    ("Sample.Clock", ("Interruption.Begin", "Interruption.End", "Sample.Clock", "Sample.Periodic",
                      "Transaction.Begin", "Transaction.End")),
    ("Pending", ("Accepted", "Rejected")),
    ("RebootRequired", ("Accepted", "Rejected", "NotSupported")),
    ("Unlocked", ("Accepted", "Rejected")),
    ("VersionMismatch", ("Accepted", "Failed", "HashError", "NotSupported", "VersionMismatch")),
    ("Percent", ("Wh", "kWh", "varh", "kvarh", "W", "kW", "var", "kvar", "Amp", "Volt", "Celsius")),
)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string | int | decimal | boolean | dateTime | anyURI | complex | text (text with attributes)
    required: bool = False
    repeated: bool = False
    enum: tuple[str, ...] = ()
    max_length: int | None = None
    children: tuple["Field", ...] = ()  # complex: child elements in order; text: the attributes

    def child(self, name: str) -> "Field | None":
        return next((c for c in self.children if c.name == name), None)


@dataclass(frozen=True)
class Operation:
    name: str
    request: Field  # kind "complex", named after the body element
    response: Field

    @property
    def action(self) -> str:
        return "/" + self.name


@dataclass
class Contract:
    role: str
    version: str
    operations: dict[str, Operation] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return NAMESPACES[(self.role, self.version)]

    @property
    def service(self) -> str:
        return "CentralSystemService" if self.role == CS else "ChargePointService"

    @property
    def binding(self) -> str:
        return "{%s}%sSoap" % (self.namespace, self.service)

    def by_element(self, local_name: str) -> tuple[Operation, bool] | None:
        """(operation, is_response) for a body element name such as `bootNotificationRequest`."""
        for op in self.operations.values():
            if op.request.name == local_name:
                return op, False
            if op.response.name == local_name:
                return op, True
        return None

    def wsdl(self) -> bytes:
        return _write_wsdl(self).encode("utf-8")


# -- from the JSON schemas ---------------------------------------------------------------------------


def _lower_first(name: str) -> str:
    return name[0].lower() + name[1:]


def _from_json(name: str, spec: dict[str, Any], required: bool, order_key: str | None = None) -> Field:
    kind = spec.get("type")
    if kind == "array":
        item = _from_json(name, spec["items"], required)
        return replace(item, repeated=True, required=required and name not in OPTIONAL_LISTS)
    if kind == "object":
        props = spec.get("properties", {})
        req = set(spec.get("required", ()))
        names = list(props)
        order = SOAP_ORDER.get(order_key or name)
        if order is not None:
            assert set(order) == set(names), (name, order, names)
            names = list(order)
        children = tuple(_from_json(n, props[n], n in req) for n in names)
        return Field(name, "complex", required, children=children)
    if kind == "integer":
        return Field(name, "int", required)
    if kind == "number":
        return Field(name, "decimal", required)
    if kind == "boolean":
        return Field(name, "boolean", required)
    if kind == "string":
        fmt = spec.get("format")
        if fmt == "date-time":
            return Field(name, "dateTime", required)
        if fmt == "uri":
            return Field(name, "anyURI", required)
        return Field(name, "string", required, enum=tuple(spec.get("enum", ())), max_length=spec.get("maxLength"))
    raise ValueError(f"unsupported JSON schema type {kind!r} for {name}")


def _message(op: str, response: bool) -> Field:
    schema_name = op + ("Response" if response else "")
    spec = json.loads((SCHEMA_DIR / f"{schema_name}.json").read_text(encoding="utf-8"))
    element = _lower_first(op) + ("Response" if response else "Request")
    return replace(_from_json(element, spec, True, order_key=schema_name), required=True)


# -- OCPP 1.5 -----------------------------------------------------------------------------------------


def _enums_15(f: Field) -> Field:
    enum = f.enum
    if enum:
        for marker, values in ENUMS_15:
            if marker in enum:
                enum = values
                break
    return replace(f, enum=enum, max_length=None, children=tuple(_enums_15(c) for c in f.children))


def _child(f: Field, name: str) -> Field:
    child = f.child(name)
    if child is None:
        raise LookupError(f"{f.name} has no element {name}")
    return child


def _meter_value_15(name: str, meter_value_16: Field) -> Field:
    """1.5 MeterValue: a timestamp and `value` elements whose text is the reading and whose
    attributes qualify it (1.6 turned the attributes into the elements of `sampledValue`, and
    added `phase`)."""
    sampled = meter_value_16.child("sampledValue")
    assert sampled is not None
    attrs = tuple(replace(_child(sampled, n), required=False) for n in ("context", "format", "measurand", "location", "unit"))
    value = Field("value", "text", True, True, children=attrs)
    return Field(name, "complex", False, True, children=(Field("timestamp", "dateTime", True), value))


def _only(f: Field, names: Iterable[str]) -> Field:
    by_name = {c.name: c for c in f.children}
    return replace(f, children=tuple(by_name[n] for n in names))


def _to_15(op: Operation) -> Operation:
    req, resp = _enums_15(op.request), _enums_15(op.response)
    name = op.name
    if name == "BootNotification":
        resp = replace(resp, children=tuple(replace(c, name="heartbeatInterval") if c.name == "interval" else c
                                            for c in resp.children))
    elif name == "MeterValues":
        req = replace(req, children=tuple(_meter_value_15("values", c) if c.name == "meterValue" else c
                                          for c in req.children))
    elif name == "StopTransaction":
        old = req.child("transactionData")
        assert old is not None
        data = Field("transactionData", "complex", False, True, children=(_meter_value_15("values", old),))
        req = replace(req, children=tuple(data if c.name == "transactionData" else c
                                          for c in req.children if c.name != "reason"))
    elif name == "RemoteStartTransaction":
        req = _only(req, ("idTag", "connectorId"))
    elif name == "SendLocalList":
        auth = req.child("localAuthorizationList")
        assert auth is not None
        req = replace(req, children=(req.child("updateType"), req.child("listVersion"),  # type: ignore[arg-type]
                                     replace(auth, name="localAuthorisationList"), Field("hash", "string")))
        resp = replace(resp, children=resp.children + (Field("hash", "string"),))
    return Operation(name, req, resp)


@functools.lru_cache(maxsize=None)
def contract(role: str, version: str) -> Contract:
    names = CS_OPERATIONS if role == CS else (CP_OPERATIONS_16 if version == V16 else CP_OPERATIONS_15)
    c = Contract(role, version)
    for name in names:
        op = Operation(name, _message(name, False), _message(name, True))
        c.operations[name] = _to_15(op) if version == V15 else op
    return c


# -- writing the WSDL ----------------------------------------------------------------------------------

_XS_TYPES = {"string": "s:string", "int": "s:int", "decimal": "s:decimal", "boolean": "s:boolean",
             "dateTime": "s:dateTime", "anyURI": "s:anyURI"}


def _xsd_element(f: Field, indent: str) -> list[str]:
    occurs = f' minOccurs="{1 if f.required else 0}"' + (' maxOccurs="unbounded"' if f.repeated else "")
    head = f"{indent}<s:element name={quoteattr(f.name)}{occurs}"
    if f.kind == "complex":
        lines = [head + ">", f"{indent}  <s:complexType>", f"{indent}    <s:sequence>"]
        for c in f.children:
            lines += _xsd_element(c, indent + "      ")
        return lines + [f"{indent}    </s:sequence>", f"{indent}  </s:complexType>", f"{indent}</s:element>"]
    if f.kind == "text":
        lines = [head + ">", f"{indent}  <s:complexType>", f"{indent}    <s:simpleContent>",
                 f'{indent}      <s:extension base="s:string">']
        for a in f.children:
            lines.append(f"{indent}        <s:attribute name={quoteattr(a.name)}>")
            lines.append(f'{indent}          <s:simpleType><s:restriction base="s:string">')
            lines += [f"{indent}            <s:enumeration value={quoteattr(v)}/>" for v in a.enum]
            lines.append(f"{indent}          </s:restriction></s:simpleType>")
            lines.append(f"{indent}        </s:attribute>")
        return lines + [f"{indent}      </s:extension>", f"{indent}    </s:simpleContent>",
                        f"{indent}  </s:complexType>", f"{indent}</s:element>"]
    if f.enum or f.max_length:
        lines = [head + ">", f"{indent}  <s:simpleType>", f'{indent}    <s:restriction base="{_XS_TYPES[f.kind]}">']
        lines += [f"{indent}      <s:enumeration value={quoteattr(v)}/>" for v in f.enum]
        if f.max_length:
            lines.append(f'{indent}      <s:maxLength value="{f.max_length}"/>')
        return lines + [f"{indent}    </s:restriction>", f"{indent}  </s:simpleType>", f"{indent}</s:element>"]
    return [f'{head} type="{_XS_TYPES[f.kind]}"/>']


def _write_wsdl(c: Contract) -> str:
    svc = c.service
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<!-- Generated by the OCPP site gateway from the OCPP 1.6 JSON schemas (adapters/soap/contract.py). -->",
        '<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"'
        ' xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/"'
        ' xmlns:wsaw="http://www.w3.org/2006/05/addressing/wsdl"'
        ' xmlns:s="http://www.w3.org/2001/XMLSchema"'
        f' xmlns:tns="{c.namespace}" targetNamespace="{c.namespace}">',
        "  <wsdl:types>",
        f'    <s:schema targetNamespace="{c.namespace}" elementFormDefault="qualified">',
        '      <s:element name="chargeBoxIdentity" type="s:string"/>',
    ]
    for op in c.operations.values():
        for msg in (op.request, op.response):
            out += _xsd_element(replace(msg, required=True, repeated=False), "      ")
    out += ["    </s:schema>", "  </wsdl:types>",
            '  <wsdl:message name="Header"><wsdl:part name="ChargeBoxIdentity" element="tns:chargeBoxIdentity"/>'
            "</wsdl:message>"]
    for op in c.operations.values():
        out.append(f'  <wsdl:message name="{op.name}Input"><wsdl:part name="parameters" element="tns:{op.request.name}"/>'
                   "</wsdl:message>")
        out.append(f'  <wsdl:message name="{op.name}Output"><wsdl:part name="parameters" '
                   f'element="tns:{op.response.name}"/></wsdl:message>')
    out.append(f'  <wsdl:portType name="{svc}">')
    for op in c.operations.values():
        out += [f'    <wsdl:operation name="{op.name}">',
                f'      <wsdl:input message="tns:{op.name}Input" wsaw:Action="/{op.name}"/>',
                f'      <wsdl:output message="tns:{op.name}Output" wsaw:Action="/{op.name}Response"/>',
                "    </wsdl:operation>"]
    out += ["  </wsdl:portType>",
            f'  <wsdl:binding name="{svc}Soap" type="tns:{svc}">',
            '    <soap12:binding transport="http://schemas.xmlsoap.org/soap/http" style="document"/>']
    for op in c.operations.values():
        out += [f'    <wsdl:operation name="{op.name}">',
                f'      <soap12:operation soapAction="/{op.name}" style="document"/>',
                '      <wsdl:input><soap12:header message="tns:Header" part="ChargeBoxIdentity" use="literal"/>'
                '<soap12:body use="literal"/></wsdl:input>',
                '      <wsdl:output><soap12:body use="literal"/></wsdl:output>',
                "    </wsdl:operation>"]
    out += ["  </wsdl:binding>",
            f'  <wsdl:service name="{svc}">',
            f'    <wsdl:port name="{svc}Soap12" binding="tns:{svc}Soap">'
            '<soap12:address location="http://localhost/ocpp-s"/></wsdl:port>',
            "  </wsdl:service>",
            "</wsdl:definitions>", ""]
    return "\n".join(out)
