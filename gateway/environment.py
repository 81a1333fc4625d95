"""`[environment].ensure`: after each read of a charger's variables, make sure it reports its
environment (docs/variables.md "The environment, asked for"):

- 1.6: Temperature added to `MeterValuesSampledData` / `MeterValuesAlignedData` (ChangeConfiguration)
  where the charger has the key, may change it and has room; a vendor humidity switch turned on;
- 2.x: Periodic and Delta monitors (SetVariableMonitoring) on the Temperature / Humidity variables
  its device model lists, except a type already accepted.

What to ask is decided by gateway.variables.meaning (pure); this module makes the calls and keeps
what was asked and answered in the store, where the API shows it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from gateway.errors import Busy, CallFailed, CallTimeout, NotConnected
from gateway.variables import meaning as M
from gateway.variables.model import ACTUAL, Variable, from_change_configuration

if TYPE_CHECKING:
    from gateway.mirror import VariablesMirror

log = logging.getLogger("gateway.variables")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def ensure_environment(mirror: VariablesMirror, cid: str, session: Any) -> None:
    """After a read: ask the charger for what it does not report yet (see the module doc); each
    request and the charger's answer is kept (`variable_requests`, kind `environment`)."""
    ch = mirror.state_of(cid)
    done = {r["target"] for r in await mirror.store.variable_requests(cid, "environment")
            if r["status"] in ("Accepted", "RebootRequired")}
    try:
        if session.version.value == "ocpp1.6":
            for change in M.environment_changes_16(ch.small):
                request = {"key": change.key, "value": change.value}
                try:
                    response = await session.call_charger("ChangeConfiguration", request,
                                                          timeout=mirror.cfg.call_timeout)
                    status, info = str(response.get("status")), None
                except CallFailed as exc:
                    status, info = exc.code, exc.description
                await mirror.store.variable_request_put(cid, "environment", change.key, request, status,
                                                      info or change.why, _now())
                log.info("environment of %s: %s %s -> %s", cid, change.key, change.value, status,
                         extra={"charger_id": cid})
                if status in ("Accepted", "RebootRequired"):
                    await mirror.put(cid, from_change_configuration(request, response, extra_secrets=mirror.secrets),
                                    "ChangeConfiguration", None)
            return
        monitors = [m for m in M.environment_monitors_2x(
            ch.small, periodic=mirror.env.periodic, delta_temperature=mirror.env.delta_temperature,
            delta_humidity=mirror.env.delta_humidity) if f"{m.name}#{m.type}" not in done]
        if not monitors:
            return
        request = M.monitoring_request(monitors)
        try:
            response = await session.call_charger("SetVariableMonitoring", request, timeout=mirror.cfg.call_timeout)
            results = response.get("setMonitoringResult") or []
        except CallFailed as exc:
            results = [{"status": exc.code, "type": m.type, "component": m.component, "variable": m.variable,
                        "statusInfo": {"reasonCode": exc.description[:20]}} for m in monitors]
        for m in monitors:
            match = next((r for r in results if isinstance(r, dict) and r.get("type") == m.type
                          and (r.get("component") or {}).get("name") == m.component.get("name")
                          and (r.get("component") or {}).get("instance") == m.component.get("instance")
                          and (r.get("component") or {}).get("evse") == m.component.get("evse")
                          and (r.get("variable") or {}).get("name") == m.variable.get("name")
                          and (r.get("variable") or {}).get("instance") == m.variable.get("instance")), None)
            status = str(match.get("status")) if match else "NoAnswer"
            info = (match.get("statusInfo") or {}).get("reasonCode") if match else None
            await mirror.store.variable_request_put(
                cid, "environment", f"{m.name}#{m.type}",
                {"type": m.type, "value": m.value, "severity": m.severity, "component": m.component,
                 "variable": m.variable}, status, info, _now())
            if status == "Accepted":
                v = ch.small.get(m.name)
                monitors_now = list((v.monitors if v else None) or [])
                monitors_now.append({"id": match.get("id") if match else None, "type": m.type, "value": m.value,
                                     "severity": m.severity})
                probe = Variable(name=m.name, variable=m.variable["name"], component=m.component["name"],
                                 component_instance=m.component.get("instance"),
                                 evse=(m.component.get("evse") or {}).get("id"),
                                 connector=(m.component.get("evse") or {}).get("connectorId"),
                                 variable_instance=m.variable.get("instance"), attribute=ACTUAL,
                                 monitors=monitors_now)
                await mirror.put(cid, [probe], "SetVariableMonitoring", None, value_given=False)
        log.info("environment of %s: %d monitors asked, %d accepted", cid, len(monitors),
                 sum(1 for r in results if isinstance(r, dict) and r.get("status") == "Accepted"),
                 extra={"charger_id": cid})
    except (NotConnected, CallTimeout, Busy) as exc:
        log.warning("environment of %s not asked for: %s", cid, exc, extra={"charger_id": cid})
