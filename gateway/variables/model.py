"""One charger variable and how it is named, read from OCPP messages, masked and set.

A variable is one value a charger reports about itself:
- OCPP 1.6: a configuration key (GetConfiguration: key, value, readonly; a requested key the
  charger does not know is kept as `known = False`);
- OCPP 2.x: one attribute of a device-model variable (NotifyReport: component with instance and
  EVSE/connector, variable with instance, attribute type, value, mutability, characteristics).

Its `name` is its identity in the API, the CLI and MQTT:
- 1.6: the key itself, e.g. `HeartbeatInterval`;
- 2.x: `Component[instance]@evse.connector/Variable[instance]#Attribute`, each optional part left
  out when absent and `#Actual` left out, e.g. `OCPPCommCtrlr/HeartbeatInterval`,
  `EVSE@1/Power#MaxSet`, `Connector@1.2/ConnectorType`, `TemperatureSensor[Body]/Temperature`.

Credential-bearing variables (their name contains password, authorizationkey, secret, privatekey,
passphrase, ...) are `secret`: their value is never kept, published, logged or returned.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

ACTUAL = "Actual"
SECRET_NAME_PARTS = ("password", "passwd", "passphrase", "authorizationkey", "secret", "privatekey", "apikey",
                     "token")
MASK = "********"
ACCEPTED_SET = frozenset({"Accepted", "RebootRequired"})  # a set that changed the value (now or after a reboot)
MAX_VALUE = 2500  # characters kept of a value (2.x valueString is at most 2500, 1.6 at most 500)


def is_secret(*names: str | None, extra: tuple[str, ...] = ()) -> bool:
    """A credential: one of `names` (key, component or variable name) contains a secret word, or
    matches one of the `extra` patterns ([variables].secret_names)."""
    for name in names:
        if not name:
            continue
        low = name.lower()
        if any(p in low for p in SECRET_NAME_PARTS):
            return True
        if any(fnmatch.fnmatchcase(low, p.lower()) for p in extra):
            return True
    return False


@dataclass(slots=True, kw_only=True)
class Variable:
    name: str
    variable: str  # 1.6: the key; 2.x: the variable's name
    component: str | None = None  # 2.x only
    component_instance: str | None = None
    evse: int | None = None
    connector: int | None = None
    variable_instance: str | None = None
    attribute: str | None = None  # 2.x attribute type (Actual, Target, MinSet, MaxSet); 1.6 None
    value: str | None = None  # None for a secret (never kept) or an attribute without a value
    secret: bool = False
    known: bool = True  # False: a 1.6 key the charger reported as unknown
    mutability: str | None = None  # ReadOnly, ReadWrite, WriteOnly (1.6 readonly -> ReadOnly / ReadWrite)
    characteristics: dict[str, Any] | None = None  # unit, data_type, min_limit, max_limit, values_list, ...
    monitors: list[dict[str, Any]] | None = None  # 2.x monitors (NotifyMonitoringReport, SetVariableMonitoring)

    @property
    def writable(self) -> bool:
        return self.known and self.mutability != "ReadOnly"


def name_2x(component: str, variable: str, *, component_instance: str | None = None, evse: int | None = None,
            connector: int | None = None, variable_instance: str | None = None, attribute: str | None = None) -> str:
    out = component
    if component_instance:
        out += f"[{component_instance}]"
    if evse is not None:
        out += f"@{evse}" + (f".{connector}" if connector is not None else "")
    out += f"/{variable}"
    if variable_instance:
        out += f"[{variable_instance}]"
    if attribute and attribute != ACTUAL:
        out += f"#{attribute}"
    return out


_NAME_2X = re.compile(r"^(?P<c>[^\[@/#]+)(?:\[(?P<ci>[^\]]*)\])?(?:@(?P<e>\d+)(?:\.(?P<k>\d+))?)?/"
                      r"(?P<v>[^\[#]+)(?:\[(?P<vi>[^\]]*)\])?(?:#(?P<a>\w+))?$")


@dataclass(frozen=True, slots=True)
class Address:
    """Where a 2.x set goes: component, variable and attribute as OCPP wants them."""

    component: dict[str, Any]
    variable: dict[str, Any]
    attribute: str


def parse_name_2x(name: str) -> Address | None:
    """The address in a 2.x name (None when `name` is not one)."""
    m = _NAME_2X.match(name)
    if m is None:
        return None
    comp: dict[str, Any] = {"name": m["c"]}
    if m["ci"]:
        comp["instance"] = m["ci"]
    if m["e"] is not None:
        comp["evse"] = {"id": int(m["e"])}
        if m["k"] is not None:
            comp["evse"]["connectorId"] = int(m["k"])
    var: dict[str, Any] = {"name": m["v"]}
    if m["vi"]:
        var["instance"] = m["vi"]
    return Address(comp, var, m["a"] or ACTUAL)


def address_of(v: Variable) -> Address:
    comp: dict[str, Any] = {"name": v.component or ""}
    if v.component_instance:
        comp["instance"] = v.component_instance
    if v.evse is not None:
        comp["evse"] = {"id": v.evse}
        if v.connector is not None:
            comp["evse"]["connectorId"] = v.connector
    var: dict[str, Any] = {"name": v.variable}
    if v.variable_instance:
        var["instance"] = v.variable_instance
    return Address(comp, var, v.attribute or ACTUAL)


def _ids(component: Any, variable: Any) -> tuple[str, str | None, int | None, int | None, str, str | None] | None:
    if not isinstance(component, dict) or not isinstance(variable, dict):
        return None
    cname, vname = component.get("name"), variable.get("name")
    if not isinstance(cname, str) or not isinstance(vname, str):
        return None
    evse = component.get("evse") if isinstance(component.get("evse"), dict) else None
    evse_id = evse.get("id") if evse and isinstance(evse.get("id"), int) else None
    conn = evse.get("connectorId") if evse and isinstance(evse.get("connectorId"), int) else None
    ci = component.get("instance") if isinstance(component.get("instance"), str) else None
    vi = variable.get("instance") if isinstance(variable.get("instance"), str) else None
    return cname, ci, evse_id, conn, vname, vi


def variable_2x(component: Any, variable: Any, attribute: str | None, value: Any, *,
                extra_secrets: tuple[str, ...] = (), mutability: str | None = None,
                characteristics: dict[str, Any] | None = None) -> Variable | None:
    ids = _ids(component, variable)
    if ids is None:
        return None
    cname, ci, evse, conn, vname, vi = ids
    attr = attribute or ACTUAL
    secret = is_secret(cname, vname, vi, extra=extra_secrets)
    text = None if secret or value is None else str(value)[:MAX_VALUE]
    return Variable(name=name_2x(cname, vname, component_instance=ci, evse=evse, connector=conn, variable_instance=vi,
                                 attribute=attr),
                    variable=vname, component=cname, component_instance=ci, evse=evse, connector=conn,
                    variable_instance=vi, attribute=attr, value=text, secret=secret, mutability=mutability,
                    characteristics=characteristics)


# -- reading ----------------------------------------------------------------------------------------


def from_get_configuration(response: dict[str, Any], *, extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """1.6 GetConfiguration.conf: every configuration key, and each unknown key as `known = False`."""
    out: list[Variable] = []
    for item in response.get("configurationKey") or []:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            continue
        key = item["key"]
        secret = is_secret(key, extra=extra_secrets)
        value = item.get("value")
        out.append(Variable(name=key, variable=key, value=None if secret or value is None else str(value)[:MAX_VALUE],
                            secret=secret, mutability="ReadOnly" if item.get("readonly") else "ReadWrite"))
    for key in response.get("unknownKey") or []:
        if isinstance(key, str):
            out.append(Variable(name=key, variable=key, known=False, secret=is_secret(key, extra=extra_secrets)))
    return out


_CHARACTERISTICS = (("unit", "unit"), ("dataType", "data_type"), ("minLimit", "min_limit"), ("maxLimit", "max_limit"),
                    ("valuesList", "values_list"), ("supportsMonitoring", "supports_monitoring"),
                    ("maxElements", "max_elements"))


def from_report_data(report_data: list[Any], *, extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """2.x NotifyReport.reportData: one Variable per attribute, with its characteristics."""
    out: list[Variable] = []
    for item in report_data:
        if not isinstance(item, dict):
            continue
        raw = item.get("variableCharacteristics")
        chars = {ours: raw[theirs] for theirs, ours in _CHARACTERISTICS if theirs in raw} \
            if isinstance(raw, dict) else None
        for attr in item.get("variableAttribute") or []:
            if not isinstance(attr, dict):
                continue
            extra = {k: attr[k] for k in ("persistent", "constant") if k in attr}
            v = variable_2x(item.get("component"), item.get("variable"), attr.get("type"), attr.get("value"),
                            extra_secrets=extra_secrets, mutability=attr.get("mutability") or "ReadWrite",
                            characteristics={**(chars or {}), **extra} or None)
            if v is not None:
                out.append(v)
    return out


def from_notify_event(payload: dict[str, Any], *, extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """2.x NotifyEvent: each event's actual value is the variable's Actual attribute now."""
    out: list[Variable] = []
    for ev in payload.get("eventData") or []:
        if isinstance(ev, dict) and "actualValue" in ev:
            v = variable_2x(ev.get("component"), ev.get("variable"), ACTUAL, ev.get("actualValue"),
                            extra_secrets=extra_secrets)
            if v is not None:
                out.append(v)
    return out


def from_monitoring_report(payload: dict[str, Any], *, extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """2.x NotifyMonitoringReport: the monitors set on each variable (kept on its Actual attribute)."""
    out: list[Variable] = []
    for item in payload.get("monitor") or []:
        if not isinstance(item, dict):
            continue
        v = variable_2x(item.get("component"), item.get("variable"), ACTUAL, None, extra_secrets=extra_secrets)
        if v is None:
            continue
        v.monitors = [{k: m.get(k) for k in ("id", "type", "value", "severity", "transaction")}
                      for m in item.get("variableMonitoring") or [] if isinstance(m, dict)]
        out.append(v)
    return out


def from_get_variables(response: dict[str, Any], *, extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """2.x GetVariables answers (whoever asked): each accepted attribute's value as it is now."""
    out: list[Variable] = []
    for res in response.get("getVariableResult") or []:
        if isinstance(res, dict) and res.get("attributeStatus") == "Accepted" and "attributeValue" in res:
            v = variable_2x(res.get("component"), res.get("variable"), res.get("attributeType"),
                            res.get("attributeValue"), extra_secrets=extra_secrets)
            if v is not None:
                out.append(v)
    return out


def from_change_configuration(request: dict[str, Any], response: dict[str, Any] | None, *,
                              extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """1.6 ChangeConfiguration the charger accepted (or will apply after a reboot); a key it
    answered NotSupported for is recorded as unknown."""
    if not response or not isinstance(request.get("key"), str):
        return []
    key = request["key"]
    secret = is_secret(key, extra=extra_secrets)
    if response.get("status") == "NotSupported":
        return [Variable(name=key, variable=key, known=False, secret=secret)]
    if response.get("status") not in ACCEPTED_SET:
        return []
    value = request.get("value")
    return [Variable(name=key, variable=key, value=None if secret or value is None else str(value)[:MAX_VALUE],
                     secret=secret)]


def from_set_variables(request: dict[str, Any], response: dict[str, Any] | None, *,
                       extra_secrets: tuple[str, ...] = ()) -> list[Variable]:
    """2.x SetVariables: the items the charger accepted (or will apply after a reboot)."""
    if not response:
        return []
    values: dict[str, Any] = {}
    for item in request.get("setVariableData") or []:
        if isinstance(item, dict):
            v = variable_2x(item.get("component"), item.get("variable"), item.get("attributeType"), None)
            if v is not None:
                values[v.name] = item.get("attributeValue")
    out: list[Variable] = []
    for res in response.get("setVariableResult") or []:
        if not isinstance(res, dict) or res.get("attributeStatus") not in ACCEPTED_SET:
            continue
        probe = variable_2x(res.get("component"), res.get("variable"), res.get("attributeType"), None)
        if probe is None or probe.name not in values:
            continue
        v = variable_2x(res.get("component"), res.get("variable"), res.get("attributeType"), values[probe.name],
                        extra_secrets=extra_secrets)
        if v is not None:
            out.append(v)
    return out


# -- setting ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class SetPolicy:
    """Which names may be set from outside: `allowed` patterns (fnmatch, `*` = all) and credentials
    only with `allow_credentials`."""

    allowed: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    extra_secrets: tuple[str, ...] = field(default_factory=tuple)

    def refusal(self, name: str, known: Variable | None) -> str | None:
        """Why a set of `name` is refused, or None."""
        parts = [name, known.variable if known else None, known.component if known else None]
        if (known is not None and known.secret) or is_secret(*parts, extra=self.extra_secrets):
            if not self.allow_credentials:
                return "credentials are set through the mirror only with [variables].allow_credentials = true"
        elif not any(fnmatch.fnmatchcase(name, p) for p in self.allowed):
            return f"{name} is not in [variables].set_allowed"
        if known is not None and known.mutability == "ReadOnly":
            return f"{name} is read-only on this charger"
        return None


def set_variables_request(items: list[tuple[Address, str]]) -> dict[str, Any]:
    return {"setVariableData": [
        {"attributeType": a.attribute, "attributeValue": value, "component": a.component, "variable": a.variable}
        for a, value in items]}


def set_variables_statuses(request_items: list[tuple[str, Address]], response: dict[str, Any]
                           ) -> dict[str, tuple[str, str | None]]:
    """name -> (attributeStatus, reasonCode or None) from a SetVariables answer."""
    by_addr = {_addr_key(a.component, a.variable, a.attribute): n for n, a in request_items}
    out: dict[str, tuple[str, str | None]] = {}
    for res in response.get("setVariableResult") or []:
        if not isinstance(res, dict):
            continue
        key = _addr_key(res.get("component") or {}, res.get("variable") or {}, res.get("attributeType") or ACTUAL)
        name = by_addr.get(key)
        if name is not None:
            info = res.get("attributeStatusInfo")
            out[name] = (str(res.get("attributeStatus")), info.get("reasonCode") if isinstance(info, dict) else None)
    return out


def _addr_key(component: dict[str, Any], variable: dict[str, Any], attribute: str) -> tuple[Any, ...]:
    evse = component.get("evse") or {}
    return (component.get("name"), component.get("instance"), evse.get("id"), evse.get("connectorId"),
            variable.get("name"), variable.get("instance"), attribute or ACTUAL)


# -- outside views ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariablesChanged:
    """A telemetry record: values of one charger's mirror that were read or changed (API-shaped
    dicts, secrets without value); `ha` gives, per name, the Home Assistant entity it is shown as."""

    charger_id: str
    values: tuple[dict[str, Any], ...]
    ha: dict[str, dict[str, Any]]


_NUMERIC = frozenset({"integer", "decimal"})


def ha_entity(v: Variable, *, shown: bool, settable: bool) -> dict[str, Any] | None:
    """How a variable is shown in Home Assistant, or None: a diagnostic sensor, or (settable and
    writable) a number, a select or a text entity in the config category."""
    if not shown or v.secret or not v.known:
        return None
    chars = v.characteristics or {}
    if not settable or v.mutability in ("ReadOnly", "WriteOnly"):
        out: dict[str, Any] = {"kind": "sensor"}
        if chars.get("unit"):
            out["unit"] = chars["unit"]
        return out
    data_type = chars.get("data_type")
    if data_type in _NUMERIC or (data_type is None and v.value is not None and v.value.strip().lstrip("-").isdigit()):
        number: dict[str, Any] = {"kind": "number", "step": 1 if data_type in (None, "integer") else 0.1}
        for ours, theirs in (("min", "min_limit"), ("max", "max_limit")):
            if isinstance(chars.get(theirs), (int, float)):
                number[ours] = chars[theirs]
        if chars.get("unit"):
            number["unit"] = chars["unit"]
        return number
    if data_type == "boolean" or (data_type is None and (v.value or "").lower() in ("true", "false")):
        return {"kind": "select", "options": ["true", "false"]}
    if data_type in ("OptionList", "MemberList", "SequenceList") and chars.get("values_list"):
        options = [o.strip() for o in str(chars["values_list"]).split(",") if o.strip()]
        if options and data_type == "OptionList":
            return {"kind": "select", "options": options}
    return {"kind": "text"}
