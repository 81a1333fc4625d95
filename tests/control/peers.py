"""Chargers for the local-control tests, built on the `ocpp` package: they accept (or, with
`refuse_profiles`, reject) charging profiles and record every command they get, in order."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ocpp import v16, v201, v21
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from websockets.asyncio.client import ClientConnection, connect

STEP = 10.0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


class _Recording:
    commands: list[tuple[str, dict[str, Any]]]
    refuse_profiles: bool | str  # True: answer Rejected; "error": a NotSupported CALLERROR

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.commands if a == action]

    def limits(self) -> list[tuple[str, int, float]]:
        """(purpose, evse, limit) of every SetChargingProfile received, in order."""
        out = []
        for p in self.of("SetChargingProfile"):
            prof = p.get("cs_charging_profiles") or p.get("charging_profile")
            sched = prof["charging_schedule"]
            sched = sched[0] if isinstance(sched, list) else sched
            out.append((prof["charging_profile_purpose"], p.get("connector_id", p.get("evse_id")),
                        float(sched["charging_schedule_period"][0]["limit"])))
        return out

    def last_limit(self) -> float | None:
        lim = self.limits()
        return lim[-1][2] if lim else None


class Charger16(_Recording, v16.ChargePoint):
    slow_once = 0.0  # s the first SetChargingProfile waits before it is answered

    @on("SetChargingProfile")
    async def on_set_profile(self, **kw: Any) -> Any:
        self.commands.append(("SetChargingProfile", kw))
        if self.slow_once:
            delay, self.slow_once = self.slow_once, 0.0
            await asyncio.sleep(delay)
        return v16.call_result.SetChargingProfile(status="Rejected" if self.refuse_profiles else "Accepted")

    @on("ClearChargingProfile")
    async def on_clear_profile(self, **kw: Any) -> Any:
        self.commands.append(("ClearChargingProfile", kw))
        return v16.call_result.ClearChargingProfile(status="Accepted")

    @on("ChangeAvailability")
    async def on_availability(self, **kw: Any) -> Any:
        self.commands.append(("ChangeAvailability", kw))
        return v16.call_result.ChangeAvailability(status="Scheduled" if self.running else "Accepted")

    @on("RemoteStopTransaction")
    async def on_remote_stop(self, **kw: Any) -> Any:
        self.commands.append(("RemoteStopTransaction", kw))
        return v16.call_result.RemoteStopTransaction(status="Accepted")

    @on("Reset")
    async def on_reset(self, **kw: Any) -> Any:
        self.commands.append(("Reset", kw))
        return v16.call_result.Reset(status="Accepted")

    @on("UnlockConnector")
    async def on_unlock(self, **kw: Any) -> Any:
        self.commands.append(("UnlockConnector", kw))
        return v16.call_result.UnlockConnector(status="Unlocked")

    running = False

    async def boot(self) -> None:
        await self.call(v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="M16"))

    async def start_tx(self, connector: int, tag: str = "TAG1") -> int:
        res = await self.call(v16.call.StartTransaction(connector_id=connector, id_tag=tag, meter_start=0,
                                                        timestamp=now()))
        self.running = True
        return int(res.transaction_id)

    async def stop_tx(self, tx: int) -> None:
        await self.call(v16.call.StopTransaction(meter_stop=1000, timestamp=now(), transaction_id=tx, reason="Local"))
        self.running = False

    async def temperature(self, celsius: float, connector: int = 0) -> None:
        await self.call(v16.call.MeterValues(connector_id=connector, meter_value=[{
            "timestamp": now(), "sampledValue": [{"value": f"{celsius:.1f}", "measurand": "Temperature",
                                                  "unit": "Celsius", "location": "Body"}]}]))


    async def environment(self, readings: list[dict[str, Any]]) -> None:
        """The built-in vendor decoder's DataTransfer (gateway.environment / Environment)."""
        import json

        await self.call(v16.call.DataTransfer(vendor_id="gateway.environment", message_id="Environment",
                                              data=json.dumps({"timestamp": now(), "readings": readings})))


class Charger201(_Recording, v201.ChargePoint):
    @on("SetChargingProfile")
    async def on_set_profile(self, **kw: Any) -> Any:
        self.commands.append(("SetChargingProfile", kw))
        if self.refuse_profiles == "error":
            raise NotSupportedError(description="no smart charging here")
        return v201.call_result.SetChargingProfile(status="Rejected" if self.refuse_profiles else "Accepted")

    @on("ClearChargingProfile")
    async def on_clear_profile(self, **kw: Any) -> Any:
        self.commands.append(("ClearChargingProfile", kw))
        return v201.call_result.ClearChargingProfile(status="Accepted")

    @on("ChangeAvailability")
    async def on_availability(self, **kw: Any) -> Any:
        self.commands.append(("ChangeAvailability", kw))
        return v201.call_result.ChangeAvailability(status="Accepted")

    @on("RequestStopTransaction")
    async def on_request_stop(self, **kw: Any) -> Any:
        self.commands.append(("RequestStopTransaction", kw))
        return v201.call_result.RequestStopTransaction(status="Accepted")

    @on("Reset")
    async def on_reset(self, **kw: Any) -> Any:
        self.commands.append(("Reset", kw))
        return self._call_result.Reset(status="Accepted")

    @on("UnlockConnector")
    async def on_unlock(self, **kw: Any) -> Any:
        self.commands.append(("UnlockConnector", kw))
        return self._call_result.UnlockConnector(status="Unlocked")

    seq = 0

    async def boot(self) -> None:
        await self.call(v201.call.BootNotification(reason="PowerUp",
                                                   charging_station={"model": "M201", "vendor_name": "ACME"}))

    async def _tx_event(self, event: str, tx: str, evse: int, trigger: str) -> None:
        self.seq += 1
        await self.call(v201.call.TransactionEvent(
            event_type=event, timestamp=now(), trigger_reason=trigger, seq_no=self.seq,
            transaction_info={"transaction_id": tx, **({"stopped_reason": "Local"} if event == "Ended" else {})},
            evse={"id": evse, "connector_id": 1}))

    async def start_tx(self, evse: int, tx: str) -> str:
        await self._tx_event("Started", tx, evse, "CablePluggedIn")
        return tx

    async def stop_tx(self, tx: str, evse: int) -> None:
        await self._tx_event("Ended", tx, evse, "EVDeparted")

    async def temperature(self, celsius: float) -> None:
        self.seq += 1
        await self.call(v201.call.NotifyEvent(generated_at=now(), seq_no=self.seq, event_data=[{
            "event_id": self.seq, "timestamp": now(), "trigger": "Periodic", "actual_value": f"{celsius:.1f}",
            "event_notification_type": "PreconfiguredMonitor",
            "component": {"name": "TemperatureSensor"}, "variable": {"name": "Temperature"}}]))


class Charger21(Charger201):
    """The same station speaking OCPP 2.1 (schemas and routing of ocpp.v21; the payloads used here
    are the same in both versions)."""

    _call = v21.call
    _call_result = v21.call_result
    _ocpp_version = "2.1"


class Connected:
    """`async with Connected(url, "ocpp1.6", "CP1") as cp:` a charger running its read loop."""

    def __init__(self, url: str, subprotocol: str, charger_id: str, *, refuse_profiles: bool | str = False) -> None:
        self.url, self.subprotocol, self.charger_id = url, subprotocol, charger_id
        self.refuse = refuse_profiles
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        self.ws = await asyncio.wait_for(connect(self.url, subprotocols=[self.subprotocol]), STEP)  # type: ignore[list-item]
        cls = {"ocpp1.6": Charger16, "ocpp2.0.1": Charger201, "ocpp2.1": Charger21}[self.subprotocol]
        cp = cls(self.charger_id, self.ws, response_timeout=STEP)
        cp.commands = []
        cp.refuse_profiles = self.refuse
        self.task = asyncio.create_task(cp.start())
        await asyncio.wait_for(cp.boot(), STEP)
        return cp

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None and self.task is not None
        await self.ws.close()
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
