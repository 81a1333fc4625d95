"""Chargers for the variables-mirror tests, built on the `ocpp` package.

- `Charger16`: a configuration of 50+ keys (GetConfiguration, ChangeConfiguration that really
  changes it, NotSupported for unknown keys, Rejected for a measurand it cannot sample), and
  careless about secrets: it reports its AuthorizationKey and a vendor Wi-Fi password in clear.
  Once `MeterValuesSampledData` lists Temperature it sends MeterValues with a temperature.
- `Charger201`: a device model of several hundred variables, sent as NotifyReport parts of
  `per_part` items, in a shuffled order (the tbc=false part before some others), optionally cut
  short (`stop_after` parts); SetVariables and SetVariableMonitoring that really change it; once a
  monitor is set on its temperature it reports it (NotifyEvent).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from ocpp import v16, v201
from ocpp.routing import on
from websockets.asyncio.client import connect

AUTH_KEY = "5ec7e7a11f00d5ec7e7a11f00d"  # the 1.6 charger's AuthorizationKey (hex), reported in clear
WIFI_PASSWORD = "wifi-Secret-Passw0rd-77"
BASIC_PASSWORD = "BasicAuth-Secret-Passw0rd-99"  # the 2.x charger's BasicAuthPassword, reported in clear
SECRETS = (AUTH_KEY, WIFI_PASSWORD, BASIC_PASSWORD)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_16(rate_unit: str = "Power") -> dict[str, tuple[str, bool]]:
    """key -> (value, readonly): 55 keys."""
    cfg: dict[str, tuple[str, bool]] = {
        "HeartbeatInterval": ("300", False),
        "MeterValueSampleInterval": ("60", False),
        "MeterValuesSampledData": ("Energy.Active.Import.Register", False),
        "MeterValuesSampledDataMaxLength": ("5", True),
        "MeterValuesAlignedData": ("Energy.Active.Import.Register", False),
        "ClockAlignedDataInterval": ("900", False),
        "ChargingScheduleAllowedChargingRateUnit": (rate_unit, True),
        "ChargeProfileMaxStackLevel": ("10", True),
        "NumberOfConnectors": ("2", True),
        "AuthorizationKey": (AUTH_KEY, False),
        "VendorWifiPassword": (WIFI_PASSWORD, False),
    }
    for i in range(55 - len(cfg)):
        cfg[f"VendorParam{i:02d}"] = (str(i), i % 3 == 0)
    return cfg


class Charger16(v16.ChargePoint):
    config: dict[str, tuple[str, bool]]
    commands: list[tuple[str, dict[str, Any]]]
    temperature = 27.5

    @on("GetConfiguration")
    async def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        self.commands.append(("GetConfiguration", {"key": key}))
        keys = key if key else list(self.config)
        known = [{"key": k, "readonly": self.config[k][1], "value": self.config[k][0]} for k in keys if k in self.config]
        unknown = [k for k in keys if k not in self.config]
        return v16.call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    async def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        self.commands.append(("ChangeConfiguration", {"key": key, "value": value}))
        if key not in self.config:
            return v16.call_result.ChangeConfiguration(status="NotSupported")
        if self.config[key][1]:
            return v16.call_result.ChangeConfiguration(status="Rejected")
        if key.startswith("MeterValues") and "SoundLevel" in value:
            return v16.call_result.ChangeConfiguration(status="Rejected")  # not a measurand it has
        self.config[key] = (value, False)
        if key == "MeterValuesSampledData" and "Temperature" in value:
            asyncio.get_running_loop().create_task(self.report_temperature())
        return v16.call_result.ChangeConfiguration(status="RebootRequired" if key == "VendorParam01" else "Accepted")

    @on("SetChargingProfile")
    async def on_set_profile(self, **kw: Any) -> Any:
        self.commands.append(("SetChargingProfile", kw))
        return v16.call_result.SetChargingProfile(status="Accepted")

    async def report_temperature(self) -> None:
        await self.call(v16.call.MeterValues(connector_id=0, meter_value=[{
            "timestamp": now(), "sampledValue": [{"value": f"{self.temperature:.1f}", "measurand": "Temperature",
                                                  "unit": "Celsius", "location": "Body"}]}]))

    async def boot(self) -> None:
        await self.call(v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="Mirror16"))


def device_model(filler: int = 400, rate_unit: str = "W") -> list[dict[str, Any]]:
    """reportData items: the ones that mean something, then `filler` vendor variables."""
    def item(component: dict[str, Any], variable: str, value: str | None, mutability: str = "ReadWrite",
             chars: dict[str, Any] | None = None, attr_type: str = "Actual") -> dict[str, Any]:
        attr: dict[str, Any] = {"type": attr_type, "mutability": mutability}
        if value is not None:
            attr["value"] = value
        return {"component": component, "variable": {"name": variable}, "variableAttribute": [attr],
                "variableCharacteristics": {"dataType": "string", "supportsMonitoring": False, **(chars or {})}}

    items = [
        item({"name": "OCPPCommCtrlr"}, "HeartbeatInterval", "300", chars={"dataType": "integer", "unit": "s"}),
        item({"name": "SampledDataCtrlr"}, "TxUpdatedInterval", "60", chars={"dataType": "integer"}),
        item({"name": "SmartChargingCtrlr"}, "RateUnit", rate_unit, "ReadOnly",
             {"dataType": "MemberList", "valuesList": rate_unit}),
        item({"name": "SmartChargingCtrlr"}, "ProfileStackLevel", "8", "ReadOnly", {"dataType": "integer"}),
        item({"name": "SecurityCtrlr"}, "BasicAuthPassword", BASIC_PASSWORD, "WriteOnly"),
        item({"name": "SecurityCtrlr"}, "SecurityProfile", "1", "ReadOnly"),
        item({"name": "TemperatureSensor", "instance": "Body"}, "Temperature", "24.5", "ReadOnly",
             {"dataType": "decimal", "unit": "Celsius", "supportsMonitoring": True}),
        item({"name": "HumiditySensor"}, "Humidity", "40", "ReadOnly",
             {"dataType": "decimal", "unit": "RH", "supportsMonitoring": True}),
        item({"name": "Connector", "evse": {"id": 1, "connectorId": 1}}, "ConnectorType", "cType2", "ReadOnly"),
        item({"name": "EVSE", "evse": {"id": 1}}, "SupplyPhases", "3", "ReadOnly", {"dataType": "integer"}),
        item({"name": "EVSE", "evse": {"id": 1}}, "Power", "22000", "ReadWrite",
             {"dataType": "decimal", "unit": "W", "maxLimit": 22000}, attr_type="MaxSet"),
    ]
    for i in range(filler):
        items.append(item({"name": "VendorCtrlr", "instance": f"block{i // 50}"}, f"Param{i:03d}", str(i),
                          "ReadOnly" if i % 4 == 0 else "ReadWrite"))
    return items


class Charger201(v201.ChargePoint):
    model: list[dict[str, Any]]
    commands: list[tuple[str, dict[str, Any]]]
    per_part = 40
    stop_after: int | None = None  # parts sent before the report is cut short
    late = 0.0  # with stop_after: the rest is sent this many seconds later (0: never)
    late_sent = 0  # late parts answered
    reports: list[int]  # the requestIds asked for

    def _find(self, component: dict[str, Any], variable: dict[str, Any], attr_type: str) -> dict[str, Any] | None:
        for it in self.model:
            c = it["component"]
            if c["name"] == component.get("name") and c.get("instance") == component.get("instance") \
                    and (c.get("evse") or {}).get("id") == (component.get("evse") or {}).get("id") \
                    and it["variable"]["name"] == variable.get("name"):
                for a in it["variableAttribute"]:
                    if a.get("type", "Actual") == attr_type:
                        return a
        return None

    @on("GetBaseReport")
    async def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        self.commands.append(("GetBaseReport", {"request_id": request_id, "report_base": report_base}))
        self.reports.append(request_id)
        asyncio.get_running_loop().create_task(self._send_report(request_id))
        return v201.call_result.GetBaseReport(status="Accepted")

    async def _send_report(self, request_id: int) -> None:
        await asyncio.sleep(0.05)  # after the CALLRESULT
        parts = [self.model[i:i + self.per_part] for i in range(0, len(self.model), self.per_part)]
        order = list(range(len(parts)))
        if len(order) >= 4:  # out of order: the last part (tbc = false) before the second and third
            order = [0, len(order) - 1, 2, 1, *order[3:-1]]
        rest: list[int] = []
        if self.stop_after is not None:
            order, rest = order[: self.stop_after], order[self.stop_after:]
        for seq in order:
            await self.call(v201.call.NotifyReport(request_id=request_id, generated_at=now(), seq_no=seq,
                                                   report_data=parts[seq], tbc=seq != len(parts) - 1))
        if rest and self.late:
            await asyncio.sleep(self.late)
            for seq in rest:
                await self.call(v201.call.NotifyReport(request_id=request_id, generated_at=now(), seq_no=seq,
                                                       report_data=parts[seq], tbc=seq != len(parts) - 1))
                self.late_sent += 1

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self.commands.append(("SetVariables", {"set_variable_data": set_variable_data}))
        results = []
        for d in set_variable_data:
            comp = {"name": d["component"]["name"], **({"instance": d["component"]["instance"]}
                                                        if d["component"].get("instance") else {})}
            if d["component"].get("evse"):
                comp["evse"] = {"id": d["component"]["evse"]["id"]}
            attr_type = d.get("attribute_type", "Actual")
            attr = self._find(comp, d["variable"], attr_type)
            status = "UnknownVariable" if attr is None else (
                "Rejected" if attr.get("mutability") == "ReadOnly" else "Accepted")
            if status == "Accepted" and attr is not None:
                attr["value"] = d["attribute_value"]
            results.append({"attributeType": attr_type, "attributeStatus": status, "component": comp,
                            "variable": {"name": d["variable"]["name"]}})
        return v201.call_result.SetVariables(set_variable_result=results)

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in get_variable_data:
            attr = self._find(d["component"], d["variable"], d.get("attribute_type", "Actual"))
            results.append({"attributeStatus": "Accepted" if attr else "UnknownVariable",
                            **({"attributeValue": attr.get("value", "")} if attr else {}),
                            "component": d["component"], "variable": d["variable"]})
        return v201.call_result.GetVariables(get_variable_result=results)

    @on("SetVariableMonitoring")
    async def on_set_monitoring(self, set_monitoring_data: list[dict[str, Any]], **_: Any) -> Any:
        self.commands.append(("SetVariableMonitoring", {"set_monitoring_data": set_monitoring_data}))
        results = []
        for n, d in enumerate(set_monitoring_data):
            ok = d["variable"]["name"] == "Temperature"  # its humidity sensor takes no monitors
            results.append({"id": 100 + n, "status": "Accepted" if ok else "Rejected", "type": d["type"],
                            "severity": d["severity"], "component": d["component"], "variable": d["variable"]})
        if any(r["status"] == "Accepted" for r in results):
            asyncio.get_running_loop().create_task(self.report_temperature(41.5))
        return v201.call_result.SetVariableMonitoring(set_monitoring_result=results)

    async def report_temperature(self, celsius: float) -> None:
        await asyncio.sleep(0.05)
        await self.call(v201.call.NotifyEvent(generated_at=now(), seq_no=0, event_data=[{
            "eventId": 1, "timestamp": now(), "trigger": "Periodic", "actualValue": f"{celsius:.1f}",
            "eventNotificationType": "CustomMonitor", "component": {"name": "TemperatureSensor", "instance": "Body"},
            "variable": {"name": "Temperature"}}]))

    @on("SetChargingProfile")
    async def on_set_profile(self, **kw: Any) -> Any:
        self.commands.append(("SetChargingProfile", kw))
        return v201.call_result.SetChargingProfile(status="Accepted")

    async def boot(self) -> None:
        await self.call(v201.call.BootNotification(reason="PowerUp",
                                                   charging_station={"model": "Mirror201", "vendor_name": "ACME"}))


@contextlib.asynccontextmanager
async def connected(url: str, version: str, charger_id: str, **attrs: Any) -> AsyncIterator[Any]:
    ws = await asyncio.wait_for(connect(url, subprotocols=[version]), 10)  # type: ignore[list-item]
    cls = Charger16 if version == "ocpp1.6" else Charger201
    cp = cls(charger_id, ws, response_timeout=10)
    cp.commands = []
    if version == "ocpp1.6":
        cp.config = config_16()
    else:
        cp.model = device_model()
        cp.reports = []
    for k, v in attrs.items():
        setattr(cp, k, v)
    task = asyncio.create_task(cp.start())
    try:
        await asyncio.wait_for(cp.boot(), 10)
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(BaseException):
            await ws.close()
